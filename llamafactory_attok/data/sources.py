"""Classification sources: MedMNIST ``.npz``, an ImageFolder (``root/<class>/*``), or a CSV of paths and labels.

Each yields ``Item(split, label, image)`` where ``image`` is a PIL image or a path; the split is the source's own
(npz keys, ``root/<split>/<class>/``, a split column) or ``None`` for the builder's seeded stratified split.
A source without samples (e.g. a header-only CSV) is an error naming it.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import AttTokError
from ..vocab import read_text
from .images import array_to_image, array_values, disagreement_warnings, intensity_rule, is_dicom

if TYPE_CHECKING:
    from PIL import Image

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}  # what a CSV build reads too


class Item:
    """One labelled image of a source: its split (None: to be assigned), label, image — a PIL image or a path (str:
    as a build's manifest lists it, for --relabel) — and where it came from, for error messages.

    A file path is held as text and given back as a :class:`Path`, and labels are interned: a Path object costs
    about four times its text, and 8,000 of them were most of what a build held in memory (BENCHMARKS §9)."""

    __slots__ = ("split", "label", "_image", "_is_path", "source")

    def __init__(self, split: str | None, label: str, image: Image.Image | Path | str, source: str) -> None:
        self.split = split
        self.label = sys.intern(label)
        self.image = image
        self.source = source

    @property
    def image(self) -> Image.Image | Path | str:
        return Path(self._image) if self._is_path else self._image  # type: ignore[arg-type]  # text when a path

    @image.setter
    def image(self, value: Image.Image | Path | str) -> None:
        self._is_path = isinstance(value, Path)
        self._image = str(value) if self._is_path else value

    def __repr__(self) -> str:
        return f"Item({self.split!r}, {self.label!r}, {self.image!r}, {self.source!r})"


def warn(message: str) -> None:
    """A note on stderr about input the build changed or could not use fully (counts and names included)."""
    print(f"attok: warning: {message}", file=sys.stderr)


def load_npz(path: Path) -> dict:
    """The arrays of a ``.npz`` file; a missing file, a file that is not ``.npz`` or a damaged one is an error
    naming the path (numpy's own messages do not)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise AttTokError(f"{path}: file does not exist")
    try:
        data = np.load(path, allow_pickle=False)
        arrays = None
        if hasattr(data, "files"):  # an archive of named arrays, not a plain .npy array
            with data:
                arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        if not zipfile.is_zipfile(path):  # numpy's own message for a text file talks about allow_pickle
            head = path.read_bytes()[:40].decode("utf-8", "replace").splitlines()[0] if path.stat().st_size else ""
            kind = ("a CSV file? use --format csv" if "," in head else "not an archive")
            raise AttTokError(f"{path}: not a .npz archive (it starts with {head[:30]!r}: {kind}); --format npz "
                              "reads MedMNIST .npz files with train/val/test _images and _labels arrays") from err
        raise AttTokError(f"{path}: not a readable .npz archive ({type(err).__name__}: {err}); expected a MedMNIST "
                          "file with train/val/test _images and _labels arrays") from err
    if arrays is None:
        raise AttTokError(f"{path}: a single .npy array, not a .npz archive of named arrays")
    return arrays


def npz_split(path: Path, data: dict, split: str) -> tuple:
    """``(images, labels)`` of one MedMNIST split, labels as an (N, k) array; a missing key or a length mismatch
    is an error naming the file."""
    keys = (f"{split}_images", f"{split}_labels")
    missing = [key for key in keys if key not in data]
    if missing:
        raise AttTokError(f"{path}: no {' or '.join(repr(k) for k in missing)} array (MedMNIST keys: train/val/test "
                          f"_images/_labels; the file has {', '.join(sorted(data)) or 'none'})")
    images, labels = data[keys[0]], data[keys[1]]
    if images.ndim < 3 or labels.ndim < 1 or len(images) != len(labels):
        raise AttTokError(f"{path}: {keys[0]} has shape {images.shape} and {keys[1]} {labels.shape}; expected N "
                          "images (N×H×W or N×H×W×C) and N labels")
    return images, labels.reshape(len(labels), -1)


def _label_text(value, where: str = "") -> str:
    """An npz label as the class-map key: integral numbers as ``"3"`` (MedMNIST), anything else as its text; a
    missing label (NaN, ±inf) is an error naming ``where`` (it would become a class "nan")."""
    number = value.item() if hasattr(value, "item") else value
    if isinstance(number, float) and not math.isfinite(number):
        raise AttTokError(f"{where}: label {number} is not a class (a missing label?); remove the sample or give it "
                          "its class")
    return str(int(number)) if isinstance(number, float) and number.is_integer() else str(number)


def from_npz(path: Path) -> Iterator[Item]:
    """The images of every split; how their values become 8 bits is decided once over all splits (:mod:`.images`)."""
    data = load_npz(path)
    splits = {split: npz_split(path, data, split) for split in SPLITS}
    rule, disagree = intensity_rule(v for images, _ in splits.values() for v in array_values(images))
    for note in disagreement_warnings(str(path), rule, disagree):
        warn(note)
    for split, (images, labels) in splits.items():
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            where = f"{path}: {split} sample {index}"
            if label.shape[0] != 1:
                raise AttTokError(f"{where} has {label.shape[0]} labels; one expected")
            yield Item(split, _label_text(label[0], where), array_to_image(image, where, rule), where)


def _visible(entries: list[Path], hidden: list[Path]) -> list[Path]:
    """``entries`` without hidden ones (``.ipynb_checkpoints/``, macOS ``._x.png``), which go to ``hidden``."""
    hidden += [p for p in entries if p.name.startswith(".")]
    return [p for p in entries if not p.name.startswith(".")]


def _images_in(folder: Path, hidden: list[Path], skipped: list[Path]) -> list[Path]:
    """The images of a class folder; sub-folders and files of other kinds go to ``skipped`` (counted, never silent)."""
    entries = _visible(list(folder.iterdir()), hidden)
    skipped += [p for p in entries if p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES]
    return sorted(p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _skipped_note(root: Path, skipped: list[Path]) -> str:
    folders = [p for p in skipped if p.is_dir()]
    dicom = [p for p in skipped if p.is_file() and is_dicom(p)]
    shown = ", ".join(str(p.relative_to(root)) for p in skipped[:5]) + (" …" if len(skipped) > 5 else "")
    note = (f"{root}: skipped {len(skipped)} entr(ies) that are not images of a class folder it reads "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}): {shown}")
    if folders:
        note += f"; {len(folders)} are sub-folders (classes are the folders right under the root or the split)"
    beside = [p for p in skipped if p.parent == root]
    if beside:
        note += (f"; {len(beside)} lie beside the split / class folders (split folders are "
                 f"{', '.join('/'.join(names) for names in SPLIT_FOLDERS.values())}, any case)")
    if dicom:
        note += (f"; {len(dicom)} are DICOM files, which are not read: convert them to PNG first (pydicom + Pillow, "
                 "keeping 16-bit values)")
    return note


SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation", "dev"),
                 "test": ("test", "testing")}  # folder names of each split (any case), as public datasets spell them


def split_of_folder(name: str) -> str | None:
    return next((split for split, names in SPLIT_FOLDERS.items() if name.lower() in names), None)


def _layout(root: Path, hidden: list[Path], skipped: list[Path]) -> list[tuple[str | None, Path]]:
    """(split, folder of class folders): the split folders under ``root`` (``train``, ``valid``, ``Test``, …: see
    :data:`SPLIT_FOLDERS`), or ``root`` itself; what is beside the split folders, or a file directly under ``root``,
    belongs to no class and goes to ``skipped``."""
    entries = _visible(list(root.iterdir()), hidden)
    splits = [(split, p) for p in sorted(entries) if p.is_dir() and (split := split_of_folder(p.name))]
    named = [split for split, _ in splits]
    twice = sorted({s for s in named if named.count(s) > 1})
    if twice:
        folders = [p.name for split, p in splits if split in twice]
        raise AttTokError(f"{root}: folders {', '.join(folders)} all name the {twice[0]} split; keep one")
    if splits:
        skipped += [p for p in entries if (p.is_dir() and not split_of_folder(p.name)) or p.is_file()]
        return [(split, folder) for split, folder in splits]
    skipped += [p for p in entries if p.is_file()]
    return [(None, root)]


def from_image_folder(root: Path) -> Iterator[Item]:
    """Hidden folders and files (name starting with a dot) are skipped and counted in a warning, as is anything
    that belongs to no class (see :func:`_layout`, :func:`_images_in`)."""
    if not root.is_dir():
        raise AttTokError(f"{root}: not a folder (expected root/<class>/* or root/<split>/<class>/*)")
    found = 0
    hidden: list[Path] = []
    skipped: list[Path] = []
    for split, folder in _layout(root, hidden, skipped):
        entries = _visible(list(folder.iterdir()), hidden if split is not None else [])  # the root: counted once
        if split is not None:  # a file directly in a split folder belongs to no class (at the root: see _layout)
            skipped += [p for p in entries if p.is_file()]
        for class_dir in sorted(p for p in entries if p.is_dir()):
            for image in _images_in(class_dir, hidden, skipped):
                found += 1
                yield Item(split, class_dir.name, image, str(image))
    if hidden:
        shown = ", ".join(str(p.relative_to(root)) for p in hidden[:5]) + (" …" if len(hidden) > 5 else "")
        warn(f"{root}: skipped {len(hidden)} hidden folder(s)/file(s) (name starting with a dot): {shown}")
    if skipped:
        warn(_skipped_note(root, skipped))
    if not found:
        raise AttTokError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in root/<class>/ or "
                          "root/<split>/<class>/")


SPLIT_COLUMN_NAMES = ("split", "subset", "fold", "partition")


def from_csv(path: Path, image_col: str, label_col: str, split_col: str | None) -> Iterator[Item]:
    """Rows of a UTF-8 CSV with a header; errors name the CSV file and line."""
    if path.is_dir():
        raise AttTokError(f"{path}: a folder, not a CSV file; --format csv reads the CSV (a folder of class "
                          "sub-folders is --format folder)")
    if path.exists() and not path.is_file():
        raise AttTokError(f"{path}: not a regular file (a device or a pipe); give the CSV file itself")
    if not path.is_file():
        raise AttTokError(f"{path}: file does not exist")
    for option, column in (("--image-col", image_col), ("--label-col", label_col), ("--split-col", split_col)):
        if column is not None and not column.strip():
            raise AttTokError(f"{option} is empty: name a column of {path}'s header")
    text = read_text(path)
    handle = io.StringIO(text.removeprefix("\ufeff"), newline="")  # a BOM (Excel's UTF-8 CSV) is not a column name
    reader = csv.DictReader(handle)
    stripped: list[int] = []
    try:
        fieldnames = reader.fieldnames or []
        repeated = sorted({c for c in fieldnames if fieldnames.count(c) > 1})
        if repeated:
            raise AttTokError(f"{path}: line 1: column name(s) {', '.join(map(repr, repeated))} appear more than once "
                              "in the header; a CSV reader keeps only the last such column: rename them")
        wanted = [c for c in (image_col, label_col, split_col) if c]
        missing = [c for c in wanted if c not in fieldnames]
        if missing:
            raise AttTokError(f"{path}: column(s) {', '.join(missing)} not found; columns are {reader.fieldnames}")
        unused = [c for c in fieldnames if c and c.strip().lower() in SPLIT_COLUMN_NAMES and c not in wanted]
        if split_col is None and unused:
            warn(f"{path}: column {unused[0]!r} is not used (no --split-col): the images get a seeded stratified "
                 f"train/val/test split instead; pass --split-col {unused[0]} to keep the file's own split")
        rows = 0
        for row in reader:
            line = reader.line_num  # the line the row ends on (quoted fields may span lines)
            rows += 1
            empty = [c for c in wanted if not (row.get(c) or "").strip()]
            if empty:
                raise AttTokError(f"{path}: line {line}: no value in column(s) {', '.join(empty)}")
            image = (path.parent / row[image_col].strip()).resolve()
            if image.is_dir():
                raise AttTokError(f"{path}: line {line}: image {row[image_col]!r} is a folder, not an image file")
            if not image.is_file():
                raise AttTokError(f"{path}: line {line}: image {row[image_col]!r} does not exist")
            raw_label = row[label_col]
            if raw_label != raw_label.strip():
                stripped.append(line)
            split = row[split_col].strip().lower() if split_col else None
            if split is not None and split not in SPLITS:
                raise AttTokError(f"{path}: line {line}: split {split!r} is not one of {', '.join(SPLITS)}")
            yield Item(split, row[label_col].strip(), image, f"{path}: line {line}")
    except csv.Error as err:
        raise AttTokError(f"{path}: line {reader.line_num}: malformed CSV: {err}") from err
    if not rows:
        raise AttTokError(f"{path}: no data rows below the header; nothing to build")
    if stripped:
        lines = ", ".join(map(str, stripped[:5])) + (" …" if len(stripped) > 5 else "")
        warn(f"{path}: {len(stripped)} label(s) had spaces around them, removed (line(s) {lines}): labels are "
             "compared without them")


def drop_duplicates(items: list[Item]) -> list[Item]:
    """One image file listed twice (the same path, however spelled, or a link to it): rows with the same label and
    split are kept once, with a warning giving the count; under two labels or in two splits it is an error naming
    both rows — the image would be trained on and tested on (leakage) or taught two answers."""
    first: dict[tuple[int, int], Item] = {}
    kept, dropped = [], []
    for item in items:
        if not isinstance(item.image, Path):
            kept.append(item)
            continue
        stat = item.image.stat()
        seen = first.setdefault((stat.st_dev, stat.st_ino), item)
        if seen is item:
            kept.append(item)
        elif (seen.label, seen.split) == (item.label, item.split):
            dropped.append(item.source)
        else:
            raise AttTokError(f"{item.source}: image {item.image} (label {item.label!r}, split {item.split}) is "
                              f"already listed at {seen.source} (label {seen.label!r}, split {seen.split}); one image "
                              "may have one label and one split: remove one of the two rows")
    if dropped:
        shown = "; ".join(dropped[:5]) + (" …" if len(dropped) > 5 else "")
        warn(f"{len(dropped)} duplicate row(s) (an image listed again with the same label) kept once: {shown}")
    return kept
