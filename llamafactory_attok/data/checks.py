"""Checks of a classification source before anything is written: labels, single class, duplicate image content
(the same bytes under two labels, or in two splits: train/test leakage) and classes missing from a split.

The label rule, stated once: a label is its text without surrounding spaces (removed with a warning that counts
them); labels that differ only in case or inner spacing (``Normal`` / ``normal``, ``no  DR`` / ``no DR``) are refused,
since they name one class twice.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

from PIL import Image

from ..errors import AttTokError
from .sources import SPLITS, Item, warn

SHOWN = 3

ONE_IMAGE_CLASSES = 10  # from this many images up, a label per image is an id column, not classes


def check_labels(items: list[Item]) -> None:
    """Near-duplicate labels are refused; a source with one class is refused (nothing to tell apart)."""
    spellings: dict[str, Counter] = defaultdict(Counter)
    for item in items:
        spellings[" ".join(unicodedata.normalize("NFKC", item.label).split()).casefold()][item.label] += 1
    clashes = [counts for counts in spellings.values() if len(counts) > 1]
    if clashes:
        shown = "; ".join(" / ".join(f"{label!r} ({n} image(s))" for label, n in counts.items())
                          for counts in clashes[:SHOWN])
        raise AttTokError(f"labels that differ only in case or spacing name one class twice: {shown}. Labels are "
                          "compared as written (surrounding spaces removed): write each class one way in the source")
    labels = {item.label for item in items}
    if len(labels) == 1:
        raise AttTokError(f"the source has one class only ({next(iter(labels))!r}, {len(items)} image(s)); a "
                          "classification set needs at least two classes to tell apart")
    if len(labels) == len(items) >= ONE_IMAGE_CLASSES:
        shown = ", ".join(repr(label) for label in sorted(labels)[:3])
        raise AttTokError(f"every one of the {len(items)} images has a label of its own ({shown}, …): the label "
                          "column looks like an id or file-name column, not classes; choose the class column "
                          "(--label-col)")


def _digest(item: Item) -> bytes:
    if isinstance(item.image, Image.Image):
        image = item.image
        return hashlib.sha1(f"{image.mode}{image.size}".encode() + image.tobytes()).digest()
    return hashlib.sha1(Path(item.image).read_bytes()).digest()


def check_duplicate_content(items: list[Item], assigned_by_us: set[int]) -> None:
    """The same image content under two labels, or in two splits, is counted in a warning (with examples). Copies
    whose split this build assigned (``assigned_by_us``: indices into ``items``) are moved into the split of their
    first copy, so the build itself never leaks an image from train into test."""
    first: dict[bytes, int] = {}
    cross_label, cross_split, moved = [], [], 0
    for index, item in enumerate(items):
        digest = _digest(item)
        if digest not in first:
            first[digest] = index
            continue
        original = items[first[digest]]
        if original.label != item.label:
            cross_label.append((original, item))
        if original.split != item.split:
            if index in assigned_by_us:
                item.split = original.split
                moved += 1
            else:
                cross_split.append((original, item))
    if cross_label:
        shown = "; ".join(f"{a.source} ({a.label!r}) = {b.source} ({b.label!r})" for a, b in cross_label[:SHOWN])
        warn(f"{len(cross_label)} image(s) have the same content as an image with another label: {shown}. "
             "Check these labels: one image, two answers")
    if cross_split:
        shown = "; ".join(f"{a.source} ({a.split}) = {b.source} ({b.split})" for a, b in cross_split[:SHOWN])
        warn(f"{len(cross_split)} image(s) of one split have the same content as an image of another split "
             f"(leakage: evaluation would see training images): {shown}")
    if moved:
        warn(f"{moved} copy/copies of an image kept in the split of their first copy (the split this build "
             "assigns never separates identical images)")


def check_split_coverage(items: list[Item], wanted: tuple[str, ...] = ()) -> None:
    """A class absent from a split that exists (val or test) is named in a warning: its scores there are empty. A
    split the options ask for (``wanted``) that ends up with no image at all — e.g. every copy of an image kept in
    the split of its first copy — is named too: its datasets are not written."""
    by_split: dict[str | None, Counter] = defaultdict(Counter)
    for item in items:
        by_split[item.split][item.label] += 1
    labels = sorted({item.label for item in items})
    for split in wanted:
        if split not in by_split:
            warn(f"the {split} split has no image at all (the source's images are too few, or identical copies were "
                 f"kept together in the split of their first copy): no {split} datasets are written; add distinct "
                 "images or give the source its own split")
    for split in SPLITS:
        if split in by_split:
            absent = [label for label in labels if not by_split[split][label]]
            if absent:
                warn(f"the {split} split has no image of class(es) {', '.join(repr(a) for a in absent)} "
                     f"({sum(by_split[split].values())} image(s) of the others): its per-class scores there will "
                     "be empty")
