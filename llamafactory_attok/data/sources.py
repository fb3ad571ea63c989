"""Classification sources: MedMNIST ``.npz``, an ImageFolder (``root/<class>/*``), or a CSV of paths and labels.

Each yields ``Item(split, label, image)`` where ``image`` is a PIL image or a path; the split is the source's own
(npz keys, ``root/<split>/<class>/``, a split column) or ``None`` for the builder's seeded stratified split.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import AttTokError

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
    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    layout = [(d.name, d) for d in split_dirs] if split_dirs else [(None, root)]
    for split, folder in layout:
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            for image in _images_in(class_dir):
                yield Item(split, class_dir.name, image, str(image))


def from_csv(path: Path, image_col: str, label_col: str, split_col: str | None) -> Iterator[Item]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        wanted = [c for c in (image_col, label_col, split_col) if c]
        missing = [c for c in wanted if c not in (reader.fieldnames or [])]
        if missing:
            raise AttTokError(f"{path}: column(s) {', '.join(missing)} not found; columns are {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            image = (path.parent / row[image_col]).resolve()
            if not image.is_file():
                raise AttTokError(f"{path}: line {line}: image {row[image_col]!r} does not exist")
            split = row[split_col].strip().lower() if split_col else None
            if split is not None and split not in SPLITS:
                raise AttTokError(f"{path}: line {line}: split {split!r} is not one of {', '.join(SPLITS)}")
            yield Item(split, row[label_col].strip(), image, f"{path}: line {line}")
