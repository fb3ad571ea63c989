"""What the VQA builders (VQA-RAD, SLAKE, PathVQA) share: a build is the sharegpt rows of each split, the images
they use and the questions skipped (with the reason); it is written only after every entry has been checked.

Ownership (:mod:`.build_manifest`): each build of a name N writes ``N_build.json`` before any other file, listing
every file (images included) and ``dataset_info.json`` entry it writes; their digests are added once written. A
later build of N replaces, with ``overwrite``, only what that manifest lists and nobody changed since; anything else
in the way (a file or entry of the user's, an image of theirs at the same path) is refused with or without
``overwrite``. An image already in the output with the same bytes is reused. ``--out`` may not be the release
folder or lie inside it, and no output may land inside it. No output may be a symbolic link.

Writing order: manifest, images, one JSON file per split, the ``dataset_info.json`` entries, the build report,
then the digests. Every file goes through :func:`~llamafactory_attok.state.atomic_write_bytes`.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import AttTokError
from ..safe_paths import dataset_name, refuse_protected_folders, refuse_same_as_input, refuse_symlink, within
from ..state import atomic_write_bytes
from .build_manifest import (
    OWN_FILES,
    check_owned,
    file_digest,
    manifest_name,
    outputs_there,
    read_manifest,
    record_hashes,
    refuse_edited,
    refuse_foreign,
    refuse_without_overwrite,
    write_manifest,
)
from .lf_format import dataset_entry, dataset_info_names, merge_dataset_info, write_json

VQA_SPLITS = ("train", "val", "test")
YES_NO = ("yes", "no")


@dataclass
class Skipped:
    """A question left out of the build, and why (reported by id, counted; never dropped silently)."""

    split: str
    qid: str
    reason: str
    kind: str = "image"  # "image": its image is missing (the download is incomplete); "answer": empty answer


@dataclass
class VqaBuild:
    """Rows per split, images (path relative to the output folder -> source file) and skipped questions."""

    name: str
    rows: dict[str, list[dict]] = field(default_factory=dict)
    images: dict[str, Path] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)

    def dataset(self, split: str) -> str:
        return f"{self.name}_{split}"

    def summary(self) -> dict:
        """Counts per split (all / closed / open) and every skipped question: what `*_build_report.json` holds."""
        splits = {split: {"questions": len(rows), "closed": sum(r["answer_type"] == "closed" for r in rows),
                          "open": sum(r["answer_type"] == "open" for r in rows)} for split, rows in self.rows.items()}
        return {"datasets": {self.dataset(s): f"{self.dataset(s)}.json" for s in self.rows}, "splits": splits,
                "images": len(self.images), "skipped": len(self.skipped),
                "skipped_questions": [s.__dict__ for s in self.skipped]}


def skip_empty_answer(build: VqaBuild, split: str, qid: str, answer: str) -> bool:
    """True, with the question listed as skipped, when ``answer`` has no letter or digit (empty, ``"?"``): with
    attribute tokens it would train as a bare token, and an empty reference would score an empty prediction right."""
    if any(ch.isalnum() for ch in answer):
        return False
    build.skipped.append(Skipped(split, qid, f"answer {answer!r} has no letter or digit", kind="answer"))
    return True


def answer_type_of(value: object, where: str) -> str:
    """``closed`` / ``open`` from a release's ``answer_type`` (any case, stray spaces as in VQA-RAD)."""
    kind = str(value).strip().lower()
    if kind not in ("closed", "open"):
        raise AttTokError(f"{where}: answer_type {value!r} is neither CLOSED nor OPEN")
    return kind


def relative_member(name: object, where: str) -> PurePosixPath:
    """A path named inside a release file, refused when it is absolute or climbs out with ``..``."""
    if not isinstance(name, str) or not name.strip():
        raise AttTokError(f"{where}: image name {name!r} is not a non-empty string")
    path = PurePosixPath(name.strip().replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise AttTokError(f"{where}: image name {name!r} points outside the release folder")
    return path


@dataclass(frozen=True)
class VqaOutputs:
    """What one build of ``name`` by ``builder`` writes inside the output folder, besides the images."""

    builder: str
    name: str
    splits: tuple[str, ...]
    report: bool = True  # N_build_report.json (SLAKE, PathVQA)

    @property
    def datasets(self) -> list[str]:
        return [f"{self.name}_{split}" for split in self.splits]

    @property
    def images_dir(self) -> str:
        return f"{self.name}_images"

    @property
    def report_file(self) -> str | None:
        return f"{self.name}_build_report.json" if self.report else None

    def texts(self) -> list[str]:
        """The JSON files it writes (their digests are recorded once written)."""
        return [*(f"{d}.json" for d in self.datasets), *([self.report_file] if self.report_file else [])]

    def files(self) -> list[str]:
        return [self.images_dir, *self.texts(), manifest_name(self.name)]


def check_outputs(plan: VqaOutputs, source: Path, out: Path) -> None:
    """Before the output folder is locked (which creates it): a valid name, an ``out`` that is not the release
    folder ``source`` nor inside it, and no output inside it (e.g. a release kept as ``out/N_images``)."""
    dataset_name(plan.name)
    refuse_protected_folders([out], "--out", folders=True)
    if source.is_dir() and within(out, source):
        raise AttTokError(f"--out {out} is the release folder {source} or lies inside it: a build never writes into "
                          "the folder it reads; choose an --out outside it")
    refuse_same_as_input([out / f for f in [*plan.files(), "dataset_info.json"]], {"source": source})
    if source.is_dir() and within(source, out / plan.images_dir):
        raise AttTokError(f"{out / plan.images_dir}: the build writes its images there, and the release folder "
                          f"{source} lies inside it; move the release, or choose another --name or --out")


def check_owned_outputs(plan: VqaOutputs, out: Path, overwrite: bool) -> None:
    """Under the output folder's lock, before the release is read: what is in the way must be the earlier build's,
    unchanged (:func:`.build_manifest.check_owned`). Without ``overwrite`` the build is refused here, suggesting it,
    when nothing in the images folder could be the user's; else only once the images are known (:func:`commit`),
    so that the refusal never suggests ``--overwrite`` where it would not help."""
    check_owned(out, plan.name, plan.builder, plan.files(), plan.datasets, set(dataset_info_names(out)), True,
                foreign_advice=OWN_FILES, edited_advice="")
    if not overwrite and not _unknown_images(out, plan):
        refuse_without_overwrite(out, plan.name, _there(plan, out))


def _there(plan: VqaOutputs, out: Path) -> list[str]:
    return outputs_there(out, plan.files(), plan.datasets, set(dataset_info_names(out)))


def _unknown_images(out: Path, plan: VqaOutputs) -> bool:
    """Whether the images folder holds a file the earlier build's manifest does not list, one changed since, or a
    symbolic link (refused by :func:`commit` if the build would write there)."""
    folder = out / plan.images_dir
    if not folder.is_dir():
        return False
    manifest = read_manifest(out, plan.name, plan.builder) or {"files": [], "hashes": {}}
    owned, hashes = set(manifest["files"]), manifest.get("hashes", {})
    for path in folder.rglob("*"):
        rel = path.relative_to(out).as_posix()
        if path.is_symlink():
            return True
        if not path.is_dir() and (rel not in owned or (rel in hashes and file_digest(path) != hashes[rel])):
            return True
    return False


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _pending_images(build: VqaBuild, plan: VqaOutputs, out: Path, manifest: dict | None,
                    overwrite: bool) -> tuple[dict[str, Path], dict[str, str]]:
    """The images still to write (relative path -> source) and the digests of those already there with the same
    bytes (reused). An image in the way with other bytes is replaced only when the earlier build of the name wrote it,
    nobody changed it since, and ``overwrite``; else an error, before anything is written."""
    owned = set(manifest["files"]) if manifest else set()
    hashes = manifest.get("hashes", {}) if manifest else {}
    pending: dict[str, Path] = {}
    reused: dict[str, str] = {}
    foreign, edited, replaced = [], [], []
    for rel, source in build.images.items():
        target = out / rel
        refuse_symlink(target, "image")
        if not os.path.lexists(target):
            pending[rel] = source
            continue
        digest = file_digest(target) if target.is_file() else None
        if digest is not None and digest == file_digest(source):
            reused[rel] = digest
        elif digest is None or rel not in owned:
            foreign.append(rel)
        elif rel in hashes and hashes[rel] != digest:
            edited.append(f"{rel} (edited since the build)")
        else:
            replaced.append(rel)
            pending[rel] = source
    refuse_foreign(out, plan.name, plan.builder, foreign, OWN_FILES)
    refuse_edited(out, plan.name, edited, "")
    if not overwrite:
        refuse_without_overwrite(out, plan.name, [*_there(plan, out), *replaced])
    return pending, reused


_TOKEN_MARKUP = re.compile(r"<\|[^<>]*\|>")


def refuse_token_markup(build: VqaBuild) -> None:
    """A release answer or question holding ``<|…|>`` text would be read as a special or attribute token at training
    (and an answer starting with it passes for an attribute-token answer): refused before anything is written,
    naming the question."""
    for split, rows in build.rows.items():
        for row in rows:
            for turn in row["messages"]:
                found = _TOKEN_MARKUP.search(turn["content"])
                if found:
                    raise AttTokError(f"{build.name} {split} qid {row.get('qid')}: the {turn['role']} text holds "
                                      f"{found.group(0)!r}, which training would read as a token; the release must "
                                      "be plain text (edit that question, or drop it)")


_TEMP_SUFFIX = re.compile(r"^[a-z0-9_]{8}$")  # what tempfile.mkstemp adds to an atomic write's hidden name


def _remove_stale_temp_images(build: VqaBuild, out: Path) -> None:
    """The hidden temp file an atomic image write leaves when the build is killed (``.img.jpg.XXXXXXXX`` beside
    ``img.jpg``): removed, under the lock, but only for the images this build writes — nothing else is touched."""
    for rel in build.images:
        target = out / rel
        if not target.parent.is_dir():
            continue
        prefix = f".{target.name}."
        for path in target.parent.glob(f".{glob.escape(target.name)}.*"):
            if _TEMP_SUFFIX.match(path.name[len(prefix):]) and path.is_file() and not path.is_symlink():
                path.unlink()


def commit(build: VqaBuild, plan: VqaOutputs, out: Path, overwrite: bool,
           report: dict | None = None) -> dict[str, str]:
    """Write manifest, images, split files, ``dataset_info.json`` entries and (``plan.report``) the build report
    (``report`` and the build's summary); return dataset name -> file name. Call under the lock, after
    :func:`check_owned_outputs`."""
    refuse_token_markup(build)
    manifest = read_manifest(out, plan.name, plan.builder)
    _remove_stale_temp_images(build, out)
    pending, reused = _pending_images(build, plan, out, manifest, overwrite)
    rewritten = {*plan.files(), *pending}
    earlier = [f for f in (manifest or {}).get("files", []) if os.path.lexists(out / f)]  # still owned
    kept = {f: h for f, h in (manifest or {}).get("hashes", {}).items() if f in earlier and f not in rewritten}
    body = {"builder": plan.builder, "name": plan.name, "files": sorted({*plan.files(), *build.images, *earlier}),
            "datasets": plan.datasets}
    write_manifest(out, plan.name, {**body, "hashes": {**kept, **reused}})  # before any other file: it owns them
    copied = {}
    for rel, source in pending.items():
        data = source.read_bytes()
        atomic_write_bytes(out / rel, data)
        copied[rel] = _digest(data)
    written = {}
    for split, rows in build.rows.items():
        file_name = f"{build.dataset(split)}.json"
        write_json(out / file_name, rows)
        written[build.dataset(split)] = file_name
    merge_dataset_info(out, {d: dataset_entry(f) for d, f in written.items()}, overwrite=overwrite)
    if plan.report_file:
        write_json(out / plan.report_file, {**(report or {}), **build.summary()})
    record_hashes(out, plan.name, body, plan.texts(), known={**kept, **reused, **copied})
    return written
