"""`attok data classify`: a labelled image source → LF sharegpt datasets with attribute tokens (paper A.2, §5.1).

Outputs, for the dataset name N and the prefix P (N, or ``N_vanilla`` with ``--vanilla``): ``P_images/`` (PNG),
``P_{open,close}_{train,val,test}.json``, ``N_vocab.yaml`` (AttTok builds only) and their ``dataset_info.json``
entries. Open-ended questions list no candidates; close-ended ones list all class names, in an order shuffled per
sample. Every class of the class map needs at least one image (an option no sample can have is refused).

Safety: each build owns its images folder (a vanilla build of N writes ``N_vanilla_images/``, never N's images).
Before anything is written, every dataset name and path the build writes must be free, else an error (unless
``overwrite``). Images are written to a temp folder inside the output folder and renamed into place at the end, so
a failed build leaves the output folder as it was; with ``overwrite`` the previous build of P (images folder, JSON
files, ``dataset_info.json`` entries) is replaced as a whole.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml
from PIL import Image
from tqdm import tqdm

from ..errors import AttTokError
from ..state import atomic_write_bytes, fsync_dir
from ..vocab import read_text, validate_token_name
from .augment import balance, missing_count
from .lf_format import (
    attribute_token,
    check_free_names,
    dataset_entry,
    merge_dataset_info,
    sharegpt_row,
    write_json,
    write_png,
    write_vocab,
)
from .sources import SPLITS, Item

OPEN_QUESTION = "<image>What is the diagnosis shown in this {modality} image?"
CLOSE_QUESTION = (
    "<image>What is the diagnosis shown in this {modality} image? Options: {options}. Answer with one option."
)


@dataclass(frozen=True)
class ClassSpec:
    label: str
    name: str
    keyword: str
    token: str


def load_class_map(path: str | Path, raw: dict | None = None) -> tuple[str, dict[str, ClassSpec]]:
    """YAML: ``modality: fundus`` and ``classes: {label: {name, keyword?, concept?}}`` (or ``label: name``).

    ``raw``: an already parsed map (a derived one), ``path`` then only names it in errors.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(read_text(path)) if raw is None else raw
    except yaml.YAMLError as err:
        raise AttTokError(f"{path}: malformed class map: {err}") from err
    if not isinstance(raw, dict) or "modality" not in raw or not isinstance(raw.get("classes"), dict):
        raise AttTokError(f"{path}: a class map needs `modality:` and a `classes:` mapping label -> name")
    modality = str(raw["modality"])
    specs, tokens = {}, {}
    for label, value in raw["classes"].items():
        entry = {"name": value} if isinstance(value, str) else dict(value or {})
        if not entry.get("name"):
            raise AttTokError(f"{path}: class {label!r} needs a `name`")
        token = attribute_token(str(entry.get("concept") or entry["name"]), modality)
        validate_token_name(token, f"{path}: class {label!r}")
        if token in tokens:
            raise AttTokError(f"{path}: classes {tokens[token]!r} and {label!r} both give the token {token}")
        tokens[token] = label
        keyword = str(entry.get("keyword") or entry["name"])
        specs[str(label)] = ClassSpec(str(label), str(entry["name"]), keyword, token)
    return modality, specs


def derive_class_map(labels: list[str], modality: str) -> tuple[dict, str]:
    """Without a class map: each label is its own answer name and keyword, its slug the concept.

    Returns the class map (the YAML shape :func:`load_class_map` reads) and its text, to write next to the output.
    """
    if not modality or not modality.strip():
        raise AttTokError("without --class-map, --modality must name the imaging modality (e.g. fundus, xray)")
    classes = {label: {"name": label, "keyword": label} for label in sorted(set(labels))}
    mapping = {"modality": modality.strip(), "classes": classes}
    header = ("# class map derived by `attok data classify` from the labels; edit the names, keywords and concepts\n"
              "# and pass it back with --class-map\n")
    return mapping, header + yaml.safe_dump(mapping, allow_unicode=True, sort_keys=False)


def stratified_split(items: list[Item], val_ratio: float, test_ratio: float, seed: int) -> list[Item]:
    """Give split-less items a seeded, per-class (stratified) train/val/test assignment."""
    rng = random.Random(seed)
    by_label: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_label[item.label].append(item)
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        n_test, n_val = round(len(group) * test_ratio), round(len(group) * val_ratio)
        for index, item in enumerate(group):
            item.split = "test" if index < n_test else "val" if index < n_test + n_val else "train"
    return items


def _load_image(item: Item, size: int) -> Image.Image:
    try:
        if isinstance(item.image, Image.Image):
            image = item.image.convert("RGB")
        else:
            with Image.open(item.image) as opened:
                image = opened.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:  # not an image, truncated, bad header (PIL's own errors)
        where = item.source if item.source == str(item.image) else f"{item.source}: image {item.image}"
        raise AttTokError(f"{where}: cannot be read as an image ({type(err).__name__}: {err})") from err
    if min(image.size) < size:  # small sources (MedMNIST 28×28) are upscaled; larger ones kept
        scale = size / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    return image


def _question(kind: str, modality: str, specs: list[ClassSpec], rng: random.Random) -> str:
    if kind == "open":
        return OPEN_QUESTION.format(modality=modality)
    names = [s.name for s in specs]
    rng.shuffle(names)
    return CLOSE_QUESTION.format(modality=modality, options=", ".join(names))


def _check_items(items: list[Item], specs: dict[str, ClassSpec], class_map: str | Path) -> None:
    if not items:
        raise AttTokError("the source has no samples; nothing to build")
    for item in items:
        if item.label not in specs:
            raise AttTokError(f"{item.source}: label {item.label!r} is not in the class map {class_map}")
    counts = Counter(item.label for item in items)
    empty = [f"{label!r} ({specs[label].name})" for label in specs if not counts[label]]
    if empty:
        raise AttTokError(f"{class_map}: class(es) {', '.join(empty)} have no image in the source; a close-ended "
                          "option no sample can have would be offered: remove them from the class map or add images")


def _write_images(items: list[Item], specs: dict[str, ClassSpec], root: Path, images_dir: str, image_size: int,
                  augment: bool, augment_target: int | None, seed: int) -> dict[str, list[tuple[str, str, dict]]]:
    """Write the PNGs under ``root/images_dir``; return split -> (label, path relative to the output, extra)."""
    per_split: dict[str, list[tuple[str, str, dict]]] = defaultdict(list)
    train_files: dict[str, list[Path]] = defaultdict(list)  # paths, not images: nothing large stays in memory
    for index, item in enumerate(tqdm(items, desc="images", unit="img", disable=None)):
        rel = f"{images_dir}/{item.split}/{index:06d}.png"
        write_png(root / rel, _load_image(item, image_size))
        per_split[item.split].append((item.label, rel, {"source": item.source}))
        if item.split == "train":
            train_files[item.label].append(root / rel)
    if augment and train_files:
        made = balance(train_files, augment_target, seed, image_size)
        for label, j, image in tqdm(made, total=missing_count(train_files, augment_target), desc="augment",
                                    unit="img", disable=None):
            rel = f"{images_dir}/train_aug/{specs[label].token[2:-2]}_{j:05d}.png"
            write_png(root / rel, image)
            per_split["train"].append((label, rel, {"source": "augmented"}))
    return per_split


def build_classification(items: list[Item], class_map: str | Path | None, out_dir: str | Path, name: str, *,
                         image_size: int = 112, seed: int = 42, val_ratio: float = 0.1, test_ratio: float = 0.2,
                         augment: bool = True, augment_target: int | None = None, vanilla: bool = False,
                         overwrite: bool = False, modality: str | None = None) -> dict[str, str]:
    """Write images, datasets, vocabulary and ``dataset_info.json`` entries; return dataset name → file name.

    Without ``class_map`` the labels are the answer names (``modality`` names the modality) and the derived map
    is written as ``<prefix>_classes.yaml`` next to the datasets, to edit and pass back as ``class_map``.
    """
    out = Path(out_dir)
    prefix = f"{name}_vanilla" if vanilla else name
    derived_file = None
    if class_map is None:
        if not items:
            raise AttTokError("the source has no samples; nothing to build")
        derived_file = f"{prefix}_classes.yaml"
        mapping, derived_text = derive_class_map([item.label for item in items], modality or "")
        modality, specs = load_class_map(out / derived_file, raw=mapping)
        class_map = out / derived_file
    else:
        modality, specs = load_class_map(class_map)
    _check_items(items, specs, class_map)
    images_dir = f"{prefix}_images"
    vocab_file = None if vanilla else f"{name}_vocab.yaml"
    datasets = [f"{prefix}_{kind}_{split}" for kind in ("open", "close") for split in SPLITS]
    check_free_names(out, datasets, overwrite,
                     paths=[images_dir, *(f"{d}.json" for d in datasets), *([vocab_file] if vocab_file else []),
                            *([derived_file] if derived_file else [])])
    if any(item.split is None for item in items):
        stratified_split([i for i in items if i.split is None], val_ratio, test_ratio, seed)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{prefix}.building.", dir=out))
    try:
        per_split = _write_images(items, specs, staging, images_dir, image_size, augment, augment_target, seed)
    except BaseException:
        shutil.rmtree(staging)
        if created:
            with contextlib.suppress(OSError):  # removed only while still empty
                out.rmdir()
        raise
    ordered = [specs[k] for k in specs]
    rows_of = _datasets(per_split, specs, ordered, modality, prefix, seed, vanilla)
    stale = [d for d in datasets if d not in rows_of]  # written by a build being replaced, not by this one
    try:
        _commit(out, staging, images_dir, rows_of, stale)
        if derived_file:
            atomic_write_bytes(out / derived_file, derived_text.encode("utf-8"))
        if vocab_file:
            write_vocab(out / vocab_file, {s.token: s.keyword for s in ordered},
                        f"attribute vocabulary of {name} ({modality}), written by `attok data classify`")
        merge_dataset_info(out, {d: dataset_entry(f"{d}.json") for d in rows_of}, overwrite=overwrite, remove=stale)
    finally:
        shutil.rmtree(staging)
    return {d: f"{d}.json" for d in rows_of}


def _datasets(per_split: dict[str, list[tuple[str, str, dict]]], specs: dict[str, ClassSpec],
              ordered: list[ClassSpec], modality: str, prefix: str, seed: int, vanilla: bool) -> dict[str, list[dict]]:
    """Dataset name -> sharegpt rows, for every (kind, split) with samples."""
    rows_of: dict[str, list[dict]] = {}
    for split in SPLITS:
        for kind in ("open", "close"):
            rng = random.Random(f"{seed}-{split}-{kind}")
            rows = []
            for label, rel, extra in per_split.get(split, []):
                spec = specs[label]
                answer = spec.name if vanilla else f"{spec.token} {spec.name}"
                question = _question(kind, modality, ordered, rng)
                rows.append(sharegpt_row(question, answer, [rel], label=spec.name, **extra))
            if rows:
                rows_of[f"{prefix}_{kind}_{split}"] = rows
    return rows_of


def _commit(out: Path, staging: Path, images_dir: str, rows_of: dict[str, list[dict]], stale: list[str]) -> None:
    """Swap the staged images folder in (a previous one moves into ``staging``), then write the JSON files."""
    target, previous = out / images_dir, staging / "previous"
    if os.path.lexists(target):  # only reached with overwrite
        os.replace(target, previous)
    try:
        os.replace(staging / images_dir, target)
    except BaseException:
        if os.path.lexists(previous):
            os.replace(previous, target)
        raise
    fsync_dir(out)
    for dataset, rows in rows_of.items():
        write_json(out / f"{dataset}.json", rows)
    for dataset in stale:
        (out / f"{dataset}.json").unlink(missing_ok=True)
