"""Classification sources: MedMNIST ``.npz``, an ImageFolder (``root/<class>/*``), or a CSV of paths and labels.

Each yields ``Item(split, label, image)`` where ``image`` is a PIL image or a path; the split is the source's own
(npz keys, ``root/<split>/<class>/``, a split column) or ``None`` for the builder's seeded stratified split.
A source without samples (e.g. a header-only CSV) is an error naming it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import AttTokError
from ..vocab import read_text

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass
class Item:
    split: str | None
    label: str
    image: object  # PIL.Image.Image or Path
    source: str  # where it came from, for error messages


def from_npz(path: Path) -> Iterator[Item]:
    import numpy as np
    from PIL import Image

    if not path.is_file():
        raise AttTokError(f"{path}: file does not exist")
    data = np.load(path)
    for split in SPLITS:
        if f"{split}_images" not in data:
            raise AttTokError(f"{path}: no '{split}_images' array (MedMNIST keys: train/val/test _images/_labels)")
        images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(len(data[f"{split}_images"]), -1)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            if label.shape[0] != 1:
                raise AttTokError(f"{path}: {split} sample {index} has {label.shape[0]} labels; one expected")
            yield Item(split, str(int(label[0])), Image.fromarray(image), f"{path}: {split} sample {index}")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def from_image_folder(root: Path) -> Iterator[Item]:
    if not root.is_dir():
        raise AttTokError(f"{root}: not a folder (expected root/<class>/* or root/<split>/<class>/*)")
    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    layout = [(d.name, d) for d in split_dirs] if split_dirs else [(None, root)]
    found = 0
    for split, folder in layout:
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            for image in _images_in(class_dir):
                found += 1
                yield Item(split, class_dir.name, image, str(image))
    if not found:
        raise AttTokError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in root/<class>/ or "
                          "root/<split>/<class>/")


def from_csv(path: Path, image_col: str, label_col: str, split_col: str | None) -> Iterator[Item]:
    """Rows of a UTF-8 CSV with a header; errors name the CSV file and line."""
    if not path.is_file():
        raise AttTokError(f"{path}: file does not exist")
    handle = io.StringIO(read_text(path), newline="")
    reader = csv.DictReader(handle)
    try:
        fieldnames = reader.fieldnames or []
        wanted = [c for c in (image_col, label_col, split_col) if c]
        missing = [c for c in wanted if c not in fieldnames]
        if missing:
            raise AttTokError(f"{path}: column(s) {', '.join(missing)} not found; columns are {reader.fieldnames}")
        rows = 0
        for row in reader:
            line = reader.line_num  # the line the row ends on (quoted fields may span lines)
            rows += 1
            empty = [c for c in wanted if not (row.get(c) or "").strip()]
            if empty:
                raise AttTokError(f"{path}: line {line}: no value in column(s) {', '.join(empty)}")
            image = (path.parent / row[image_col].strip()).resolve()
            if not image.is_file():
                raise AttTokError(f"{path}: line {line}: image {row[image_col]!r} does not exist")
            split = row[split_col].strip().lower() if split_col else None
            if split is not None and split not in SPLITS:
                raise AttTokError(f"{path}: line {line}: split {split!r} is not one of {', '.join(SPLITS)}")
            yield Item(split, row[label_col].strip(), image, f"{path}: line {line}")
    except csv.Error as err:
        raise AttTokError(f"{path}: line {reader.line_num}: malformed CSV: {err}") from err
    if not rows:
        raise AttTokError(f"{path}: no data rows below the header; nothing to build")
