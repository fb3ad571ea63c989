"""What the VQA builders (VQA-RAD, SLAKE, PathVQA) share: a build is the sharegpt rows of each split, the images
they use and the questions skipped (with the reason); it is written only after every entry has been checked.

Writing order: images (an image already in the output is reused when byte-identical, and refused when it differs
unless ``overwrite``, since other datasets may use it), then one JSON file per split, then the
``dataset_info.json`` entries. Every file goes through :func:`~llamafactory_attok.state.atomic_write_bytes`.
"""

from __future__ import annotations

import filecmp
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import AttTokError
from ..safe_paths import dataset_name
from ..state import atomic_write_bytes
from .lf_format import check_free_names, dataset_entry, merge_dataset_info, write_json

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


def check_outputs_free(out: Path, name: str, splits: tuple[str, ...], overwrite: bool,
                       extra_paths: tuple[str, ...] = ()) -> None:
    """A valid name; dataset names, their JSON files and ``extra_paths`` must be free (before any writing)."""
    dataset_name(name)
    datasets = [f"{name}_{split}" for split in splits]
    check_free_names(out, datasets, overwrite, paths=[*(f"{d}.json" for d in datasets), *extra_paths])


def _pending_images(build: VqaBuild, out: Path, overwrite: bool) -> dict[Path, Path]:
    """Target -> source of the images still to write; a different image already at a target is an error."""
    pending = {}
    for rel, source in build.images.items():
        target = out / rel
        if os.path.lexists(target):
            if target.is_file() and filecmp.cmp(target, source, shallow=False):
                continue
            if not overwrite:
                raise AttTokError(f"{target}: already exists with other content than {source}; pass --overwrite "
                                  "to replace it (datasets that use it would then show the new image)")
        pending[target] = source
    return pending


def commit(build: VqaBuild, out: Path, overwrite: bool) -> dict[str, str]:
    """Write images, split files and ``dataset_info.json`` entries; return dataset name -> file name."""
    for target, source in _pending_images(build, out, overwrite).items():
        atomic_write_bytes(target, source.read_bytes())
    written = {}
    for split, rows in build.rows.items():
        file_name = f"{build.dataset(split)}.json"
        write_json(out / file_name, rows)
        written[build.dataset(split)] = file_name
    merge_dataset_info(out, {d: dataset_entry(f) for d, f in written.items()}, overwrite=overwrite)
    return written
