"""Offline class-balanced augmentation (paper A.2): random crop + horizontal flip, stored as new image files.

Only the training split is augmented, each class up to ``target`` images; every new image is drawn from its
own seeded generator, so the same seed gives byte-identical files.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from PIL import Image
from torchvision.transforms import v2


def crop_and_flip(size: int) -> v2.Compose:
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
                       v2.RandomHorizontalFlip(p=0.5)])


def balance(images_by_label: dict[str, list[Image.Image]], target: int | None, seed: int,
            size: int) -> dict[str, list[Image.Image]]:
    """New images per label so that every class reaches ``target`` (default: the largest class)."""
    goal = target if target is not None else max(len(v) for v in images_by_label.values())
    transform = crop_and_flip(size)
    extra: dict[str, list[Image.Image]] = defaultdict(list)
    for class_index, (label, images) in enumerate(sorted(images_by_label.items())):
        for j in range(max(0, goal - len(images))):
            torch.manual_seed(seed * 1_000_003 + class_index * 10_007 + j)
            extra[label].append(transform(images[j % len(images)]))
    return dict(extra)
