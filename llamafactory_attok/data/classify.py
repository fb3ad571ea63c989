"""`attok data classify`: a labelled image source → LF sharegpt datasets with attribute tokens (paper A.2, §5.1).

Outputs, for the dataset name N: ``N_images/`` (PNG), ``N_{open,close}_{train,val,test}.json``, ``N_vocab.yaml``
and their ``dataset_info.json`` entries (``--vanilla``: ``N_vanilla_…`` without tokens, no vocabulary).
Open-ended questions list no candidates; close-ended ones list all class names, in an order shuffled per sample.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml
from PIL import Image

from ..errors import AttTokError
from ..vocab import validate_token_name
from .augment import balance
from .lf_format import (
    attribute_token,
    check_free_names,
    dataset_entry,
    merge_dataset_info,
    sharegpt_row,
    write_json,
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


def load_class_map(path: str | Path) -> tuple[str, dict[str, ClassSpec]]:
    """YAML: ``modality: fundus`` and ``classes: {label: {name, keyword?, concept?}}`` (or ``label: name``)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
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
    image = item.image if isinstance(item.image, Image.Image) else Image.open(item.image)
    image = image.convert("RGB")
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


def build_classification(items: list[Item], class_map: str | Path, out_dir: str | Path, name: str, *,
                         image_size: int = 112, seed: int = 42, val_ratio: float = 0.1, test_ratio: float = 0.2,
                         augment: bool = True, augment_target: int | None = None, vanilla: bool = False,
                         overwrite: bool = False) -> dict[str, str]:
    """Write images, datasets, vocabulary and ``dataset_info.json`` entries; return dataset name → file name."""
    out = Path(out_dir)
    modality, specs = load_class_map(class_map)
    for item in items:
        if item.label not in specs:
            raise AttTokError(f"{item.source}: label {item.label!r} is not in the class map {class_map}")
    if any(item.split is None for item in items):
        stratified_split([i for i in items if i.split is None], val_ratio, test_ratio, seed)
    prefix = f"{name}_vanilla" if vanilla else name
    check_free_names(out, [f"{prefix}_{kind}_{split}" for kind in ("open", "close") for split in SPLITS], overwrite)
    per_split: dict[str, list[tuple[str, str, dict]]] = defaultdict(list)  # split -> (label, rel path, extra)
    train_images: dict[str, list[Image.Image]] = defaultdict(list)
    for index, item in enumerate(items):
        rel = f"{name}_images/{item.split}/{index:06d}.png"
        image = _load_image(item, image_size)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(out / rel)
        per_split[item.split].append((item.label, rel, {"source": item.source}))
        if item.split == "train":
            train_images[item.label].append(image)
    if augment and train_images:
        for label, images in balance(train_images, augment_target, seed, image_size).items():
            for j, image in enumerate(images):
                rel = f"{name}_images/train_aug/{specs[label].token[2:-2]}_{j:05d}.png"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                image.save(out / rel)
                per_split["train"].append((label, rel, {"source": "augmented"}))
    ordered = [specs[k] for k in specs]
    written: dict[str, str] = {}
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
                dataset = f"{prefix}_{kind}_{split}"
                write_json(out / f"{dataset}.json", rows)
                written[dataset] = f"{dataset}.json"
    if not vanilla:
        write_vocab(out / f"{name}_vocab.yaml", {s.token: s.keyword for s in ordered},
                    f"attribute vocabulary of {name} ({modality}), written by `attok data classify`")
    merge_dataset_info(out, {d: dataset_entry(f) for d, f in written.items()}, overwrite=overwrite)
    return written
