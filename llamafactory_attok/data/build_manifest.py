"""What one dataset build wrote, so that a later ``--overwrite`` replaces exactly that and never a user's file.

Each build of a name writes ``<prefix>_build.json`` into the output folder *before* any of its other files: the
files and ``dataset_info.json`` entries it is about to write, and (classification) every image with its raw label,
split and source. A later build of the same name may replace only what that manifest lists (with ``--overwrite``);
a clash with anything else — a user's own ``mycxr_images/`` source folder, a dataset entry of their own, a build
made before manifests existed — is refused, with or without ``--overwrite``, and without suggesting it.

The builders that keep one: `attok data classify`, `attok data vqa-rad` / `slake` / `pathvqa`,
`attok data vqa-attributes` and `attok sample-data`. The digests of the files a build wrote and the
``dataset_info.json`` entries it merged are recorded once written, so that a file or entry edited since is never
replaced either. A symbolic link among the outputs is refused (:func:`~..safe_paths.refuse_symlink`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import AttTokError
from ..safe_paths import refuse_symlinks
from .lf_format import read_json, write_json

CLASSIFY_FOREIGN = ("source images among them — and are never replaced or deleted (move them away, or pass an edited "
                    "class map back with --class-map)")
OWN_FILES = "never replaced or deleted: move them away"  # what the builders other than classify advise
CLASSIFY_EDITED = "(an edited class map can be passed back with --class-map, or applied with --relabel)"

MANIFEST_VERSION = 1


def manifest_name(prefix: str) -> str:
    return f"{prefix}_build.json"


def read_manifest(out: Path, prefix: str, builder: str) -> dict | None:
    """The manifest of the earlier build of ``prefix`` in ``out`` (None: there is none)."""
    path = out / manifest_name(prefix)
    if not path.is_file():
        return None
    manifest = read_json(path)
    other = manifest.get("builder") if isinstance(manifest, dict) else None
    if isinstance(other, str) and other != builder:
        raise AttTokError(f"{path}: the manifest of an `{other}` build of {prefix!r}, not of `{builder}`; the two "
                          "builds would share files: choose another --name (or another --out)")
    if not (isinstance(manifest, dict) and other == builder
            and isinstance(manifest.get("files"), list) and isinstance(manifest.get("datasets"), list)):
        raise AttTokError(f"{path}: not a build manifest of `{builder}`; it is not this tool's file: move it away "
                          "or choose another --name")
    return manifest


def write_manifest(out: Path, prefix: str, manifest: dict) -> None:
    """The manifest, atomically; its ``images`` may be a :class:`~..json_stream.Lazy` list (written piece by piece)."""
    write_json(out / manifest_name(prefix), {"version": MANIFEST_VERSION, **manifest})


def file_digest(path: Path) -> str:
    """SHA-1 of the file, read in 1 MiB blocks (a dataset file of any size costs no more memory than that)."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _added_files(out: Path, manifest: dict) -> list[str]:
    """Files someone put into the build's images folder since (the manifest lists every image it wrote); a symbolic
    link in it is refused outright (the build replaces the folder, link included)."""
    folder = manifest.get("images_dir")
    if not folder or not (out / folder).is_dir() or (out / folder).is_symlink():
        return []
    written = {entry["path"] for entry in manifest.get("images", [])}
    there = list((out / folder).rglob("*"))
    refuse_symlinks([p for p in there if p.is_symlink()])
    added = sorted(str(p.relative_to(out)) for p in there if p.is_file() and str(p.relative_to(out)) not in written)
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


def _dataset_entries(out: Path) -> dict:
    path = out / "dataset_info.json"
    info = read_json(path) if path.is_file() else {}
    return info if isinstance(info, dict) else {}


def edited_entries(out: Path, manifest: dict, datasets: list[str]) -> list[str]:
    """Those of ``datasets`` whose ``dataset_info.json`` entry the earlier build merged and someone changed since."""
    recorded = manifest.get("entries", {})
    if not recorded:
        return []
    info = _dataset_entries(out)
    return [f"dataset_info.json entry {d} (edited since the build)" for d in datasets
            if d in recorded and d in info and info[d] != recorded[d]]


def record_hashes(out: Path, prefix: str, manifest: dict, files: list[str],
                  known: dict[str, str] | None = None) -> None:
    """Rewrite the manifest with the digests of the build's text ``files`` (written last, once they exist; ``known``:
    digests the build already has, e.g. of the images it copied) and its ``dataset_info.json`` entries."""
    hashes = {**(known or {}), **{name: file_digest(out / name) for name in files if (out / name).is_file()}}
    info = _dataset_entries(out)
    entries = {d: info[d] for d in manifest.get("datasets", []) if d in info}
    write_manifest(out, prefix, {**{k: v for k, v in manifest.items() if k != "version"}, "hashes": hashes,
                                 "entries": entries})


def refuse_foreign(out: Path, prefix: str, builder: str, foreign: list[str], advice: str = CLASSIFY_FOREIGN) -> None:
    """Refuse, without suggesting ``--overwrite`` (it would not help), outputs that exist and that no earlier build
    of ``prefix`` by ``builder`` wrote."""
    if foreign:
        shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        raise AttTokError(
            f"{out}: {shown} already exist and no earlier `{builder}` build of {prefix!r} wrote them "
            f"(no {manifest_name(prefix)} lists them): they are not files this command wrote; they may be your own "
            f"files — {advice}. Choose another --name or another --out.")


def refuse_edited(out: Path, prefix: str, edited: list[str], advice: str = CLASSIFY_EDITED) -> None:
    """Refuse outputs that the earlier build of ``prefix`` wrote and someone changed since."""
    if edited:
        raise AttTokError(f"{out}: {', '.join(edited)}: the earlier build of {prefix!r} wrote it and it was "
                          "changed since; a rebuild would replace your edits. Move it away"
                          f"{' ' + advice if advice else ''}, then build again.")


def check_owned(out: Path, prefix: str, builder: str, files: list[str], datasets: list[str],
                existing_datasets: set[str], overwrite: bool, foreign_advice: str = CLASSIFY_FOREIGN,
                edited_advice: str = CLASSIFY_EDITED) -> None:
    """Refuse before writing: files or dataset entries of this build that already exist must all have been
    written by an earlier build of the same name (its manifest lists them) and be unchanged since, and then only
    with ``overwrite``; none of them (nor ``dataset_info.json``) may be a symbolic link."""
    refuse_symlinks([out / f for f in [*files, "dataset_info.json"]])
    manifest = read_manifest(out, prefix, builder)
    owned_files = set(manifest["files"]) if manifest else set()
    owned_datasets = set(manifest["datasets"]) if manifest else set()
    files_there = [f for f in files if os.path.lexists(out / f)]
    datasets_there = sorted(set(datasets) & existing_datasets)
    foreign = [f for f in files_there if f not in owned_files] + [
        f"dataset_info.json entry {d}" for d in datasets_there if d not in owned_datasets]
    if manifest:
        foreign += _added_files(out, manifest)
        refuse_edited(out, prefix, edited_files(out, manifest, files) + edited_entries(out, manifest, datasets),
                      edited_advice)
    refuse_foreign(out, prefix, builder, foreign, foreign_advice)
    if not overwrite:
        refuse_without_overwrite(out, prefix, [*files_there, *(f"dataset {d}" for d in datasets_there)])


def outputs_there(out: Path, files: list[str], datasets: list[str], existing_datasets: set[str]) -> list[str]:
    """Those of ``files`` and ``datasets`` that exist already (as :func:`refuse_without_overwrite` names them)."""
    return [*(f for f in files if os.path.lexists(out / f)),
            *(f"dataset {d}" for d in sorted(set(datasets) & existing_datasets))]


def refuse_without_overwrite(out: Path, prefix: str, there: list[str]) -> None:
    """Outputs that exist (``there``), all of them the earlier build's own: replaced only with ``--overwrite``."""
    if there:
        shown = ", ".join(there[:4]) + (f" and {len(there) - 4} more" if len(there) > 4 else "")
        raise AttTokError(f"{out}: {shown} already exist from an earlier build of {prefix!r}; pass --overwrite to "
                          "replace that build (only the files its manifest lists), or choose another --name.")


def refuse_other_builds_files(out: Path, files: list[str], own: str | None = None) -> None:
    """A build never writes over a file that the manifest of another build in ``out`` lists (e.g. vqa-attributes'
    ``--name a_open_train`` over the classification build's dataset), --overwrite or not; ``own``: the file name of
    this build's own manifest, which is skipped."""
    claimed = {}
    for path in Path(out).glob("*_build.json"):
        if path.name == own:
            continue
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for name in manifest.get("files", []) if isinstance(manifest, dict) else []:
            claimed[name] = path.name
    clashes = [f"{name} (listed by {claimed[name]})" for name in files if name in claimed]
    if clashes:
        raise AttTokError(f"{out}: {', '.join(clashes)} belong to another build; choose another --name.")
