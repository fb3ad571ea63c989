"""Offline class-balanced augmentation (paper A.2): random crop + horizontal flip, stored as new image files.

Only the training split is augmented, each class up to ``target`` images; every new image is drawn from its
own seeded generator, so the same seed gives byte-identical files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2


def crop_and_flip(size: int) -> v2.Compose:
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
                       v2.RandomHorizontalFlip(p=0.5)])


def balance(images_by_label: dict[str, list[Path]], target: int | None, seed: int,
            size: int) -> Iterator[tuple[str, int, Image.Image]]:
    """``(label, j, new image)`` so that every class reaches ``target`` images (default: the largest class).

    Sources are image files, opened one at a time: a large training split is never held in memory.
    """
    goal = target if target is not None else max(len(v) for v in images_by_label.values())
    transform = crop_and_flip(size)
    for class_index, (label, paths) in enumerate(sorted(images_by_label.items())):
        for j in range(max(0, goal - len(paths))):
            torch.manual_seed(seed * 1_000_003 + class_index * 10_007 + j)
            with Image.open(paths[j % len(paths)]) as source:
                yield label, j, transform(source.convert("RGB"))


def missing_count(images_by_label: dict[str, list[Path]], target: int | None) -> int:
    """How many images :func:`balance` will make (for a progress bar)."""
    goal = target if target is not None else max(len(v) for v in images_by_label.values())
    return sum(max(0, goal - len(v)) for v in images_by_label.values())
