"""What one dataset build wrote, so that a later ``--overwrite`` replaces exactly that and never a user's file.

Each build of a name writes ``<prefix>_build.json`` into the output folder *before* any of its other files: the
files and ``dataset_info.json`` entries it is about to write, and (classification) every image with its raw label,
split and source. A later build of the same name may replace only what that manifest lists (with ``--overwrite``);
a clash with anything else — a user's own ``mycxr_images/`` source folder, a dataset entry of their own, a build
made before manifests existed — is refused, with or without ``--overwrite``, and without suggesting it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import AttTokError
from ..state import atomic_write_bytes
from .lf_format import read_json

MANIFEST_VERSION = 1


def manifest_name(prefix: str) -> str:
    return f"{prefix}_build.json"


def read_manifest(out: Path, prefix: str, builder: str) -> dict | None:
    """The manifest of the earlier build of ``prefix`` in ``out`` (None: there is none)."""
    path = out / manifest_name(prefix)
    if not path.is_file():
        return None
    manifest = read_json(path)
    if not (isinstance(manifest, dict) and manifest.get("builder") == builder
            and isinstance(manifest.get("files"), list) and isinstance(manifest.get("datasets"), list)):
        raise AttTokError(f"{path}: not a build manifest of `{builder}`; it is not this tool's file: move it away "
                          "or choose another --name")
    return manifest


def write_manifest(out: Path, prefix: str, manifest: dict) -> None:
    body = {"version": MANIFEST_VERSION, **manifest}
    atomic_write_bytes(out / manifest_name(prefix), (json.dumps(body, indent=1, ensure_ascii=False) + "\n").encode())


def file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _added_files(out: Path, manifest: dict) -> list[str]:
    """Files someone put into the build's images folder since (the manifest lists every image it wrote)."""
    folder = manifest.get("images_dir")
    if not folder or not (out / folder).is_dir():
        return []
    written = {entry["path"] for entry in manifest.get("images", [])}
    added = sorted(str(p.relative_to(out)) for p in (out / folder).rglob("*")
                   if (p.is_file() or p.is_symlink()) and str(p.relative_to(out)) not in written)
    if not added:
        return []
    return [f"{len(added)} file(s) in {folder}/ that the build did not write ({', '.join(added[:3])}"
            f"{' …' if len(added) > 3 else ''})"]


def edited_files(out: Path, manifest: dict, files: list[str]) -> list[str]:
    """Those of ``files`` (what this build writes) that the earlier build wrote and someone changed since (datasets,
    vocabulary, derived class map: their digests are in the manifest)."""
    hashes = manifest.get("hashes", {})
    return [f"{name} (edited since the build)" for name in files
            if name in hashes and (out / name).is_file() and file_digest(out / name) != hashes[name]]


def record_hashes(out: Path, prefix: str, manifest: dict, files: list[str]) -> None:
    """Rewrite the manifest with the digests of the build's text ``files`` (written last, once they exist)."""
    hashes = {name: file_digest(out / name) for name in files if (out / name).is_file()}
    write_manifest(out, prefix, {**{k: v for k, v in manifest.items() if k != "version"}, "hashes": hashes})


def check_owned(out: Path, prefix: str, builder: str, files: list[str], datasets: list[str],
                existing_datasets: set[str], overwrite: bool) -> None:
    """Refuse before writing: files or dataset entries of this build that already exist must all have been
    written by an earlier build of the same name (its manifest lists them), and then only with ``overwrite``."""
    manifest = read_manifest(out, prefix, builder)
    owned_files = set(manifest["files"]) if manifest else set()
    owned_datasets = set(manifest["datasets"]) if manifest else set()
    files_there = [f for f in files if os.path.lexists(out / f)]
    datasets_there = sorted(set(datasets) & existing_datasets)
    foreign = [f for f in files_there if f not in owned_files] + [
        f"dataset_info.json entry {d}" for d in datasets_there if d not in owned_datasets]
    if manifest:
        foreign += _added_files(out, manifest)
        edited = edited_files(out, manifest, files)
        if edited:
            raise AttTokError(f"{out}: {', '.join(edited)}: the earlier build of {prefix!r} wrote it and it was "
                              "changed since; a rebuild would replace your edits. Move it away (an edited class map "
                              "can be passed back with --class-map, or applied with --relabel), then build again.")
    if foreign:
        raise AttTokError(
            f"{out}: {', '.join(foreign)} already exist and no earlier `{builder}` build of {prefix!r} wrote them "
            f"(no {manifest_name(prefix)} lists them): they may be your own files — source images among them — "
            "and are never replaced or deleted (move them away, or pass an edited class map back with --class-map). "
            "Choose another --name or another --out.")
    if (files_there or datasets_there) and not overwrite:
        everything = [*files_there, *(f"dataset {d}" for d in datasets_there)]
        shown = ", ".join(everything[:4]) + (f" and {len(everything) - 4} more" if len(everything) > 4 else "")
        raise AttTokError(f"{out}: {shown} already exist from an earlier build of {prefix!r}; pass --overwrite to "
                          "replace that build (only the files its manifest lists), or choose another --name.")


def refuse_other_builds_files(out: Path, files: list[str]) -> None:
    """A builder without a manifest of its own (vqa-attributes) never writes over a file that a manifest of another
    build in ``out`` lists (e.g. ``--name a_open_train`` over the classification build's dataset), --overwrite or
    not."""
    claimed = {}
    for path in Path(out).glob("*_build.json"):
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for name in manifest.get("files", []) if isinstance(manifest, dict) else []:
            claimed[name] = path.name
    clashes = [f"{name} (listed by {claimed[name]})" for name in files if name in claimed]
    if clashes:
        raise AttTokError(f"{out}: {', '.join(clashes)} belong to another build; choose another --name.")
