"""Offline class-balanced augmentation (paper A.2): random crop + horizontal flip at the original's own size, stored
as new image files.

Only the training split is augmented, each class up to ``target`` images; every new image is drawn from its
own seeded generator, so the same seed gives byte-identical files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2


def crop_and_flip(size: tuple[int, int]) -> v2.Compose:
    """A random crop (80–100 % of the area, the source's own aspect ratio ±10 %) resized back to ``size`` (height,
    width) — the size of the original it comes from — and a horizontal flip."""
    height, width = size
    aspect = width / height
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9 * aspect, 1.1 * aspect),
                                            antialias=True),
                       v2.RandomHorizontalFlip(p=0.5)])


def balance(images_by_label: dict[str, list[Path]], target: int | None,
            seed: int) -> Iterator[tuple[str, int, Path, Image.Image]]:
    """``(label, j, source path, new image)`` so that every class reaches ``target`` images (default: the largest
    class). Each new image has the size of the written original it is made from, so augmented copies follow their
    class's size distribution (a model that sees a token count per image size cannot tell them from originals).

    Sources are image files, opened one at a time: a large training split is never held in memory.
    """
    goal = target if target is not None else max(len(v) for v in images_by_label.values())
    for class_index, (label, paths) in enumerate(sorted(images_by_label.items())):
        for j in range(max(0, goal - len(paths))):
            torch.manual_seed(seed * 1_000_003 + class_index * 10_007 + j)
            path = paths[j % len(paths)]
            with Image.open(path) as source:
                original = source.convert("RGB")
            yield label, j, path, crop_and_flip((original.height, original.width))(original)


def missing_count(images_by_label: dict[str, list[Path]], target: int | None) -> int:
    """How many images :func:`balance` will make (for a progress bar)."""
    goal = target if target is not None else max(len(v) for v in images_by_label.values())
    return sum(max(0, goal - len(v)) for v in images_by_label.values())
