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


def augmentation_plan(images_by_label: dict[str, list[Path]],
                      target: int | None) -> Iterator[tuple[str, int, int, Path]]:
    """``(label, j, class index, source path)`` of every new image, so that each class reaches ``target`` images
    (default: the largest class); the sources are the written originals, taken in turn."""
    goal = target if target is not None else max(len(v) for v in images_by_label.values())
    for class_index, (label, paths) in enumerate(sorted(images_by_label.items())):
        for j in range(max(0, goal - len(paths))):
            yield label, j, class_index, paths[j % len(paths)]


def augment_image(path: Path) -> Image.Image:
    """A new image from the written original ``path`` at that original's size (random state: the caller seeds
    torch), so augmented copies follow their class's size distribution: a model that sees a token count per image
    size cannot tell them from originals."""
    with Image.open(path) as source:
        original = source.convert("RGB")
    return crop_and_flip((original.height, original.width))(original)


def missing_count(images_by_label: dict[str, list[Path]], target: int | None) -> int:
    """How many images :func:`balance` will make (for a progress bar)."""
    goal = target if target is not None else max(len(v) for v in images_by_label.values())
    return sum(max(0, goal - len(v)) for v in images_by_label.values())


def augment_task(task: tuple) -> str:
    """One augmented image — a worker's task (:mod:`.parallel`), seeded by its class and number alone, so 1 or N
    workers write the same bytes: (label, j, class index, source, seed, staging root, path stem relative to it).
    Written in the original's format (no format leak either); returns the path relative to the staging root."""
    from ..state import atomic_write_bytes
    from .placement import encode

    _, j, class_index, source, seed, root, rel_stem = task
    torch.manual_seed(seed * 1_000_003 + class_index * 10_007 + j)
    image = augment_image(Path(source))
    suffix = ".jpg" if Path(source).suffix == ".jpg" else ".png"
    rel = rel_stem + suffix
    (Path(root) / rel).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(root) / rel, encode(image, suffix))
    return rel
