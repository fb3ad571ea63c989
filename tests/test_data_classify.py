"""`attok data classify`: npz / ImageFolder / CSV sources, both question formats, augmentation, vanilla, errors."""

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_ok, run_cli
from PIL import Image

from llamafactory_attok.data import sources
from llamafactory_attok.data.classify import build_classification
from llamafactory_attok.errors import AttTokError
from llamafactory_attok.sample_data import RETINA_NPZ
from llamafactory_attok.vocab import load_vocab

CLASS_MAP = """modality: xray
classes:
  normal: {name: normal chest, keyword: normal lungs}
  pneumonia: {name: pneumonia, concept: pneumonia}
"""


def _class_map(tmp_path: Path, text: str = CLASS_MAP) -> Path:
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    return path


def _folder(tmp_path: Path, counts=(6, 2)) -> Path:
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for label, count in zip(("normal", "pneumonia"), counts, strict=True):
        (root / label).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def _rows(out: Path, name: str) -> list[dict]:
    return json.loads((out / f"{name}.json").read_text())


def test_npz_official_splits_both_formats(tmp_path):
    out = tmp_path / "out"
    grades = ("modality: fundus\nclasses:\n  0: no DR\n  1: mild DR\n  2: moderate DR\n  3: severe DR\n"
              "  4: proliferative DR\n")
    result = run_cli(["attok", "data", "classify", str(RETINA_NPZ), "--format", "npz", "--out", str(out), "--name",
                      "retina", "--max-per-class", "3", "--no-augment", "--image-size", "56", "--class-map",
                      str(_class_map(tmp_path, grades))], cwd=tmp_path)
    assert_ok(result)
    info = json.loads((out / "dataset_info.json").read_text())
    assert set(info) == {f"retina_{k}_{s}" for k in ("open", "close") for s in ("train", "val", "test")}
    open_rows, close_rows = _rows(out, "retina_open_test"), _rows(out, "retina_close_test")
    assert len(open_rows) == 15
    assert "Options" not in open_rows[0]["messages"][0]["content"]
    assert open_rows[0]["messages"][1]["content"].startswith("<|fundus_")
    options = [r["messages"][0]["content"].split("Options: ")[1].split(".")[0] for r in close_rows]
    assert all(sorted(o.split(", ")) == sorted(["no DR", "mild DR", "moderate DR", "severe DR", "proliferative DR"])
               for o in options)
    assert len(set(options)) > 1  # shuffled per sample
    assert Image.open(out / open_rows[0]["images"][0]).size == (56, 56)  # 28x28 upscaled
    assert len(load_vocab(out / "retina_vocab.yaml")) == 5


def test_close_ended_order_is_deterministic_under_a_seed(tmp_path):
    runs = []
    for name in ("a", "b"):
        build_classification(list(sources.from_image_folder(_folder(tmp_path / name))), _class_map(tmp_path),
                             tmp_path / name / "out", "x", seed=7, augment=False)
        runs.append([r["messages"][0]["content"] for r in _rows(tmp_path / name / "out", "x_close_train")])
    assert runs[0] == runs[1]


def test_folder_stratified_split_and_class_balanced_augmentation(tmp_path):
    out = tmp_path / "out"
    build_classification(list(sources.from_image_folder(_folder(tmp_path, counts=(10, 5)))), _class_map(tmp_path),
                         out, "cx", seed=1, val_ratio=0.2, test_ratio=0.2, image_size=32)
    train = _rows(out, "cx_open_train")
    labels = [r["label"] for r in train]
    assert labels.count("normal chest") == labels.count("pneumonia") == 6  # 6 real normals; 3 pneumonia + 3 augmented
    assert sum(r["source"] == "augmented" for r in train) == 3
    for split in ("val", "test"):
        assert all(r["source"] != "augmented" for r in _rows(out, f"cx_open_{split}"))
    vocab = load_vocab(out / "cx_vocab.yaml")
    assert vocab.as_dict() == {"<|xray_normal_chest|>": "normal lungs", "<|xray_pneumonia|>": "pneumonia"}


def test_augmentation_is_byte_identical_under_the_same_seed(tmp_path):
    digests = []
    for name in ("a", "b"):
        out = tmp_path / name
        build_classification(list(sources.from_image_folder(_folder(tmp_path / f"src_{name}"))), _class_map(tmp_path),
                             out, "cx", seed=3, test_ratio=0.0, val_ratio=0.0)
        files = sorted((out / "cx_images" / "train_aug").iterdir())
        digests.append([hashlib.sha256(f.read_bytes()).hexdigest() for f in files])
    assert digests[0] == digests[1] and len(digests[0]) == 4


def test_csv_with_split_column_and_vanilla(tmp_path):
    folder = _folder(tmp_path)
    table = tmp_path / "labels.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "diagnosis", "fold"])
        for i, image in enumerate(sorted(folder.rglob("*.png"))):
            writer.writerow([str(image.relative_to(tmp_path)), image.parent.name, ["train", "test"][i % 2]])
    items = list(sources.from_csv(table, "path", "diagnosis", "fold"))
    build_classification(items, _class_map(tmp_path), tmp_path / "out", "cx", vanilla=True, augment=False)
    rows = _rows(tmp_path / "out", "cx_vanilla_open_train")
    assert rows and all("<|" not in r["messages"][1]["content"] for r in rows)
    assert not (tmp_path / "out" / "cx_vocab.yaml").exists()
    with pytest.raises(AttTokError, match=r"labels.csv: column\(s\) missing_col not found"):
        list(sources.from_csv(table, "path", "missing_col", None))


def test_name_collision_needs_overwrite_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    items = list(sources.from_image_folder(_folder(tmp_path)))
    build_classification(items, _class_map(tmp_path), out, "cx", augment=False)
    before = (out / "cx_open_train.json").read_text()
    with pytest.raises(AttTokError, match="cx_close_test.*already exist; pass --overwrite"):
        build_classification(items, _class_map(tmp_path), out, "cx", augment=False, seed=99)
    assert (out / "cx_open_train.json").read_text() == before
    build_classification(items, _class_map(tmp_path), out, "cx", augment=False, seed=99, overwrite=True)


def test_label_missing_from_class_map_names_the_sample(tmp_path):
    items = list(sources.from_image_folder(_folder(tmp_path)))
    with pytest.raises(AttTokError, match=r"pneumonia/0.png: label 'pneumonia' is not in the class map"):
        build_classification(items, _class_map(tmp_path, "modality: xray\nclasses:\n  normal: normal\n"),
                             tmp_path / "out", "cx")
