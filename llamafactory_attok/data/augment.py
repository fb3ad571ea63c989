"""Offline class-balanced augmentation (paper A.2): random crop + horizontal flip at the original's own size, stored
as new image files.

Only the training split is augmented, each class up to ``target`` images; every new image is drawn from its
own seeded generator, so the same seed gives byte-identical files with 1 or N workers.

The transform is torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip`` (the same parameter sampling:
``v2.RandomResizedCrop.make_params``), done with Pillow on the decoded image: a build's workers then never import
torch, whose import costs each worker ≈ 5 s and ≈ 800 MB here (BENCHMARKS §9) — more than augmenting a few thousand
images. :func:`crop_box` is tested against torchvision's own sampling.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

SCALE = (0.8, 1.0)  # the crop's share of the original's area
RATIO_SPREAD = (0.9, 1.1)  # the crop's aspect ratio, relative to the original's


def crop_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """``(left, top, crop width, crop height)``: torchvision's ``RandomResizedCrop`` parameters for an 80–100 % area
    crop at the source's own aspect ratio ±10 % (10 tries, then the centre crop), drawn from ``rng``."""
    aspect = width / height
    ratio = (RATIO_SPREAD[0] * aspect, RATIO_SPREAD[1] * aspect)
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*SCALE)
        aspect_ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            return rng.randint(0, width - w), top, w, h
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def crop_and_flip(original: Image.Image, rng: random.Random) -> Image.Image:
    """A random crop (:func:`crop_box`) resized back to the original's own size (bilinear, antialiased as Pillow
    always is when it shrinks) and a horizontal flip with probability ½."""
    left, top, w, h = crop_box(original.width, original.height, rng)
    image = original.resize(original.size, Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def augmentation_plan(images_by_label: dict[str, list[str]],
                      target: int | None) -> Iterator[tuple[str, int, int, str]]:
    """``(label, j, class index, source path)`` of every new image, so that each class reaches ``target`` images
    (default: the largest class); the sources are the written originals, taken in turn."""
    goal = target if target is not None else max(len(v) for v in images_by_label.values())
    for class_index, (label, paths) in enumerate(sorted(images_by_label.items())):
        for j in range(max(0, goal - len(paths))):
            yield label, j, class_index, paths[j % len(paths)]


def augment_image(path: Path, rng: random.Random) -> Image.Image:
    """A new image from the written original ``path`` at that original's size, so augmented copies follow their
    class's size distribution: a model that sees a token count per image size cannot tell them from originals."""
    with Image.open(path) as source:
        original = source.convert("RGB")
    return crop_and_flip(original, rng)


def missing_count(images_by_label: dict[str, list[str]], target: int | None) -> int:
    """How many images :func:`augmentation_plan` will make (for a progress bar)."""
    goal = target if target is not None else max(len(v) for v in images_by_label.values())
    return sum(max(0, goal - len(v)) for v in images_by_label.values())


def augment_task(task: tuple) -> str:
    """One augmented image — a worker's task (:mod:`.parallel`), seeded by its class and number alone, so 1 or N
    workers write the same bytes: (label, j, class index, source, seed, staging root, path stem relative to it).
    Written in the original's format (no format leak either); returns the path relative to the staging root."""
    from ..state import atomic_write_bytes
    from .placement import encode

    _, j, class_index, source, seed, root, rel_stem = task
    rng = random.Random(seed * 1_000_003 + class_index * 10_007 + j)
    image = augment_image(Path(source), rng)
    suffix = ".jpg" if Path(source).suffix == ".jpg" else ".png"
    rel = rel_stem + suffix
    (Path(root) / rel).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(root) / rel, encode(image, suffix))
    return rel
