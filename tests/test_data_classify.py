"""`attok data classify`: npz / ImageFolder / CSV sources, both question formats, augmentation, vanilla, errors."""

import csv
import hashlib
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_ok, run_cli
from PIL import Image

from llamafactory_attok.data import sources
from llamafactory_attok.data.classify import build_classification
from llamafactory_attok.errors import AttTokError
from llamafactory_attok.tiny.sample_data import RETINA_NPZ
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
    with pytest.raises(AttTokError, match="cx_images, .* already exist from an earlier build of 'cx'; "
                                          "pass --overwrite"):
        build_classification(items, _class_map(tmp_path), out, "cx", augment=False, seed=99)
    assert (out / "cx_open_train.json").read_text() == before
    build_classification(items, _class_map(tmp_path), out, "cx", augment=False, seed=99, overwrite=True)


def test_label_missing_from_class_map_names_the_sample(tmp_path):
    items = list(sources.from_image_folder(_folder(tmp_path)))
    with pytest.raises(AttTokError, match=r"pneumonia/0.png: label 'pneumonia' is not in the class map"):
        build_classification(items, _class_map(tmp_path, "modality: xray\nclasses:\n  normal: normal\n"),
                             tmp_path / "out", "cx")


# --- bad input and safety of the output folder -------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file (hidden ones included) under ``folder`` with its bytes; folders as ``None``."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _image_digests(out: Path, dataset: str) -> list[tuple[str, str]]:
    return [(r["label"], hashlib.sha256((out / r["images"][0]).read_bytes()).hexdigest()) for r in _rows(out, dataset)]


def _csv(tmp_path: Path, images: list[tuple[str, str]], name: str = "labels.csv") -> Path:
    table = tmp_path / name
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "diagnosis"])
        writer.writerows(images)
    return table


def test_vanilla_build_of_the_same_name_never_touches_the_attok_images(tmp_path):
    out = tmp_path / "out"
    items = list(sources.from_image_folder(_folder(tmp_path)))
    build_classification(items, _class_map(tmp_path), out, "cx", augment=False, seed=1)
    before = {d: _image_digests(out, d) for d in ("cx_open_train", "cx_close_test")}
    reordered = list(sources.from_image_folder(_folder(tmp_path / "again")))[::-1]
    build_classification(reordered, _class_map(tmp_path), out, "cx", augment=False, seed=5, vanilla=True)
    assert {d: _image_digests(out, d) for d in before} == before
    assert all(r["images"][0].startswith("cx_vanilla_images/") for r in _rows(out, "cx_vanilla_open_train"))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_collision_check_covers_every_path_not_only_dataset_names(tmp_path):
    out = tmp_path / "out"
    items = list(sources.from_image_folder(_folder(tmp_path)))
    build_classification(items, _class_map(tmp_path), out, "cx", augment=False)
    (out / "dataset_info.json").unlink()  # the names are free again, the files are not
    before = _snapshot(out)
    with pytest.raises(AttTokError, match=r"out: cx_images, cx_open_train.json, .* and \d+ more already exist from an "
                                          r"earlier build of 'cx'; pass --overwrite to replace that build"):
        build_classification(items[::-1], _class_map(tmp_path), out, "cx", augment=False)
    assert _snapshot(out) == before


def test_overwrite_replaces_the_previous_build_as_a_whole(tmp_path):
    out = tmp_path / "out"
    items = list(sources.from_image_folder(_folder(tmp_path, counts=(10, 5))))
    build_classification(items, _class_map(tmp_path), out, "cx", augment=False, val_ratio=0.2)
    assert (out / "cx_open_val.json").is_file()
    items = list(sources.from_image_folder(_folder(tmp_path / "again", counts=(10, 5))))[::-1]
    build_classification(items, _class_map(tmp_path), out, "cx", augment=False, val_ratio=0.0, overwrite=True)
    info = json.loads((out / "dataset_info.json").read_text())
    assert "cx_open_val" not in info and not (out / "cx_open_val.json").exists()  # no stale split of the old build
    for dataset in info:
        assert all((out / r["images"][0]).is_file() for r in _rows(out, dataset))
    referenced = {r["images"][0] for d in info for r in _rows(out, d)}
    assert {str(p.relative_to(out)) for p in (out / "cx_images").rglob("*.png")} == referenced
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("bad", ["truncated", "not_an_image"])
def test_unreadable_csv_image_names_csv_line_and_image_and_leaves_output_as_before(tmp_path, capsys, bad):
    from llamafactory_attok.cli import main

    folder = _folder(tmp_path)
    good = sorted(folder.rglob("*.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(good[0].read_bytes()[:60] if bad == "truncated" else b"not a png\n")
    table = _csv(tmp_path, [(str(p.relative_to(tmp_path)), p.parent.name) for p in good[:3]]
                 + [("broken.png", "normal")] + [(str(p.relative_to(tmp_path)), p.parent.name) for p in good[3:]])
    out = tmp_path / "out"
    build_classification(list(sources.from_image_folder(folder)), _class_map(tmp_path), out, "other", augment=False)
    before = _snapshot(out)
    message = r"labels.csv: line 5: image .*broken.png: cannot be read as an image"
    with pytest.raises(AttTokError, match=message):
        build_classification(list(sources.from_csv(table, "path", "diagnosis", None)), _class_map(tmp_path), out,
                             "cx")
    assert _snapshot(out) == before
    argv = ["data", "classify", str(table), "--format", "csv", "--image-col", "path", "--label-col", "diagnosis",
            "--class-map", str(_class_map(tmp_path)), "--name", "cx"]
    assert main([*argv, "--out", str(out)]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert _snapshot(out) == before
    assert main([*argv, "--out", str(tmp_path / "new" / "out")]) == 2  # a folder the build made is removed again
    assert not (tmp_path / "new" / "out").exists()


def test_header_only_csv_is_refused(tmp_path, capsys):
    from llamafactory_attok.cli import main

    table = _csv(tmp_path, [])
    with pytest.raises(AttTokError, match=r"labels.csv: no data rows below the header; nothing to build"):
        list(sources.from_csv(table, "path", "diagnosis", None))
    assert main(["data", "classify", str(table), "--format", "csv", "--image-col", "path", "--label-col",
                 "diagnosis", "--class-map", str(_class_map(tmp_path)), "--name", "cx", "--out",
                 str(tmp_path / "out")]) == 2
    assert "labels.csv: no data rows below the header" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_class_without_images_is_refused_naming_class_and_class_map(tmp_path):
    class_map = _class_map(tmp_path, CLASS_MAP + "  effusion: {name: pleural effusion}\n")
    items = list(sources.from_image_folder(_folder(tmp_path)))
    with pytest.raises(AttTokError, match=r"classes.yaml: class\(es\) 'effusion' \(pleural effusion\) have no image "
                                          r"in the source"):
        build_classification(items, class_map, tmp_path / "out", "cx")
    assert not (tmp_path / "out").exists()


def test_non_utf8_class_map_names_the_file(tmp_path):
    path = tmp_path / "classes.yaml"
    path.write_bytes(CLASS_MAP.encode() + "  x: {name: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(AttTokError, match=r"classes.yaml: line 5: not UTF-8 text"):
        build_classification(list(sources.from_image_folder(_folder(tmp_path))), path, tmp_path / "out", "cx")


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o077, 0o600, 0o700), (0o022, 0o644, 0o755)])
def test_written_files_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    items = list(sources.from_image_folder(_folder(tmp_path)))
    out = tmp_path / "out"
    previous = os.umask(umask)
    try:
        build_classification(items, _class_map(tmp_path), out, "cx", image_size=24)
    finally:
        os.umask(previous)
    png = next((out / "cx_images" / "train").glob("*.png"))
    aug = next((out / "cx_images" / "train_aug").glob("*.png"))
    for path in (out / "dataset_info.json", out / "cx_open_train.json", out / "cx_vocab.yaml", png, aug):
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path
    for path in (out / "cx_images", out / "cx_images" / "train"):
        assert stat.S_IMODE(path.stat().st_mode) == dir_mode, path


def test_without_a_class_map_labels_become_answers_and_the_map_is_written(tmp_path):
    out = tmp_path / "out"
    items = list(sources.from_image_folder(_folder(tmp_path)))
    build_classification(items, None, out, "cx", modality="X-Ray", augment=True, seed=3)
    derived = out / "cx_classes.yaml"
    assert derived.is_file() and "edit the names" in derived.read_text()
    vocab = load_vocab(out / "cx_vocab.yaml")
    assert vocab.as_dict() == {"<|xray_normal|>": "normal", "<|xray_pneumonia|>": "pneumonia"}
    answers = {row["messages"][1]["content"] for row in _rows(out, "cx_open_train")}
    assert answers == {"<|xray_normal|> normal", "<|xray_pneumonia|> pneumonia"}
    again = tmp_path / "again"  # the written map is a valid --class-map and gives the same datasets
    build_classification(items, derived, again, "cx", augment=True, seed=3)
    assert _rows(again, "cx_open_train") == _rows(out, "cx_open_train")
    with pytest.raises(AttTokError, match="without --class-map, --modality must name the imaging modality"):
        build_classification(items, None, tmp_path / "x", "cx")


def _labels_csv(tmp_path: Path, header=("path", "diagnosis", "split"), splits=("train", "test")) -> Path:
    folder = _folder(tmp_path, counts=(6, 4))
    table = tmp_path / "labels.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i, image in enumerate(sorted(folder.rglob("*.png"))):
            writer.writerow([str(image.relative_to(tmp_path)), image.parent.name, splits[i % len(splits)]])
    return table


def test_a_split_column_left_unused_is_named(tmp_path, capsys):
    table = _labels_csv(tmp_path)
    list(sources.from_csv(table, "path", "diagnosis", None))
    assert ("column 'split' is not used (no --split-col): the images get a seeded stratified train/val/test split "
            "instead; pass --split-col split") in capsys.readouterr().err
    list(sources.from_csv(table, "path", "diagnosis", "split"))
    assert "not used" not in capsys.readouterr().err


def test_classify_logs_progress_when_not_a_terminal_and_ends_with_a_table(tmp_path, capsys):
    """Output to a file (no terminal): progress as log lines on stderr, then images per class and split."""
    from llamafactory_attok.cli import main

    table = _labels_csv(tmp_path, splits=("train", "train", "test"))
    assert main(["data", "classify", str(table), "--format", "csv", "--image-col", "path", "--label-col",
                 "diagnosis", "--split-col", "split", "--modality", "xray", "--out", str(tmp_path / "out"),
                 "--name", "cx", "--no-augment"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"attok: images: 10/10 \(100 %\), [\d.]+ img/s in [\d.]+ s", captured.err)
    assert "images per class and split" in captured.out
    lines = captured.out.split("images per class and split")[1].splitlines()
    assert lines[1].split() == ["class", "train", "train", "+augmented", "val", "test"]
    assert lines[2].split() == ["normal", "4", "0", "0", "2"] and lines[3].split() == ["pneumonia", "3", "0", "0", "1"]
    assert lines[4].split() == ["total", "7", "0", "0", "3"]


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_build_never_replaces_the_users_own_images_folder(tmp_path, capsys, overwrite):
    """The README flow with the images in data/mycxr_images/ and --out data --name mycxr: the clash is with the
    user's source folder, which no build wrote; refused with and without --overwrite, and --overwrite is not
    suggested; nothing is deleted."""
    from llamafactory_attok.cli import main

    data = tmp_path / "data"
    images = data / "mycxr_images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["path,diagnosis"]
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(images / f"{i}.png")
        rows.append(f"mycxr_images/{i}.png,{('normal', 'pneumonia')[i % 2]}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    before = _hashes(data)
    argv = ["data", "classify", str(data / "labels.csv"), "--format", "csv", "--image-col", "path", "--label-col",
            "diagnosis", "--modality", "xray", "--out", str(data), "--name", "mycxr", *(["--overwrite"] * overwrite)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "labels.csv: line 2: image" in err and "mycxr_images, the folder this build writes its images to" in err
    assert "pass --overwrite" not in err
    assert _hashes(data) == before
    (data / "elsewhere").mkdir()  # the images read from elsewhere: the clash is with a folder no build wrote
    (data / "labels.csv").write_text("\n".join(["path,diagnosis", *(
        f"elsewhere/{i}.png,{('normal', 'pneumonia')[i % 2]}" for i in range(8))]) + "\n")
    for i in range(8):
        (data / "elsewhere" / f"{i}.png").write_bytes((images / f"{i}.png").read_bytes())
    before = _hashes(data)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "mycxr_images already exist and no earlier `attok data classify` build of 'mycxr' wrote them" in err
    assert "never replaced or deleted" in err and "pass --overwrite" not in err
    assert _hashes(data) == before


def test_overwrite_replaces_only_what_the_manifest_lists(tmp_path):
    out = tmp_path / "out"
    items = list(sources.from_image_folder(_folder(tmp_path)))
    build_classification(items, _class_map(tmp_path), out, "cx", augment=False)
    manifest = json.loads((out / "cx_build.json").read_text())
    assert "cx_images" in manifest["files"] and len(manifest["images"]) == 8
    assert {e["label"] for e in manifest["images"]} == {"normal", "pneumonia"}
    (out / "notes.txt").write_text("mine")
    build_classification(items, _class_map(tmp_path), out, "cx", augment=False, seed=5, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "cx_build.json").unlink()  # a build without its manifest: nothing of it is ours any more
    with pytest.raises(AttTokError, match="no earlier `attok data classify` build of 'cx' wrote them"):
        build_classification(items, _class_map(tmp_path), out, "cx", augment=False, overwrite=True)


def test_code_labels_are_named_and_a_relabel_reuses_the_images(tmp_path, capsys):
    """Labels like AKIEC / NV become meaningless keywords: the build says so and how to give names; --relabel then
    rewrites datasets and vocabulary from the edited class map without touching an image."""
    from llamafactory_attok.cli import main

    root = tmp_path / "folder"
    rng = np.random.default_rng(1)
    for label in ("AKIEC", "NV"):
        (root / label).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    out = tmp_path / "out"
    argv = ["data", "classify", str(root), "--format", "folder", "--modality", "derm", "--out", str(out), "--name",
            "skin", "--no-augment"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "labels AKIEC, NV look like codes" in err and f"--class-map {out / 'skin_classes.yaml'} --relabel" in err
    images = _hashes(out / "skin_images")
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "skin_images").rglob("*.png")}
    class_map = out / "skin_classes.yaml"
    class_map.write_text("modality: derm\nclasses:\n  AKIEC: {name: actinic keratosis, keyword: actinic keratosis}\n"
                         "  NV: {name: melanocytic nevus, keyword: benign mole}\n")
    assert main([*argv, "--class-map", str(class_map), "--relabel"]) == 0
    assert "images reused, none re-encoded" in capsys.readouterr().out
    assert _hashes(out / "skin_images") == images
    assert {p: p.stat().st_mtime_ns for p in (out / "skin_images").rglob("*.png")} == mtimes
    answers = {row["messages"][1]["content"] for row in _rows(out, "skin_open_train")}
    assert answers == {"<|derm_actinic_keratosis|> actinic keratosis", "<|derm_melanocytic_nevus|> melanocytic nevus"}
    assert load_vocab(out / "skin_vocab.yaml").as_dict() == {"<|derm_actinic_keratosis|>": "actinic keratosis",
                                                             "<|derm_melanocytic_nevus|>": "benign mole"}
    assert main([*argv, "--relabel"]) == 2  # --relabel needs the new class map
    assert "give --class-map" in capsys.readouterr().err


def _photos(root: Path) -> Path:
    """Class 'nv': 60×45 JPEG photos (4:3, above --image-size); class 'vasc': 3 small 16-bit PNGs (to upscale)."""
    rng = np.random.default_rng(4)
    (root / "nv").mkdir(parents=True)
    (root / "vasc").mkdir(parents=True)
    for i in range(9):
        Image.fromarray(rng.integers(0, 255, (45, 60, 3), dtype=np.uint8)).save(root / "nv" / f"{i}.jpg", quality=90)
    for i in range(3):
        Image.fromarray(rng.integers(0, 4000, (20, 30), dtype=np.uint16)).save(root / "vasc" / f"{i}.png")
    return root


def test_sources_are_copied_where_nothing_changes_and_resized_with_the_aspect_kept(tmp_path):
    root = _photos(tmp_path / "src")
    out = tmp_path / "out"
    items = list(sources.from_image_folder(root))
    build_classification(items, None, out, "sk", modality="derm", augment=False, image_size=40, max_size=48,
                         val_ratio=0.0, test_ratio=0.0)
    rows = _rows(out, "sk_open_train")
    by_source = {r["source"]: out / r["images"][0] for r in rows}
    for i in range(9):  # 60×45 JPEG: longer side above --max-size 48 -> 48×36 (4:3 kept), still a JPEG
        written = by_source[str(root / "nv" / f"{i}.jpg")]
        assert written.suffix == ".jpg"
        with Image.open(written) as image:
            assert image.size == (48, 36) and image.format == "JPEG"
    for i in range(3):  # 30×20 16-bit PNG: 8 bits; shorter side up to 40 would make it 60×40, above --max-size 48:
        with Image.open(by_source[str(root / "vasc" / f"{i}.png")]) as image:  # the longer side's limit wins
            assert image.size == (48, 32) and image.mode == "RGB"
    again = tmp_path / "again"  # within the limits: the JPEG bytes are the source's, not re-encoded
    build_classification(items, None, again, "sk", modality="derm", augment=False, image_size=40, val_ratio=0.0,
                         test_ratio=0.0)
    rows = _rows(again, "sk_open_train")
    copied = [again / r["images"][0] for r in rows if r["source"].endswith(".jpg")]
    assert len(copied) == 9 and all(p.read_bytes() == (root / "nv" / Path(r["source"]).name).read_bytes()
                                    for p, r in zip(copied, [r for r in rows if r["source"].endswith(".jpg")],
                                                    strict=True))
    with pytest.raises(AttTokError, match="--max-size 30 is below --image-size 40"):
        build_classification(items, None, tmp_path / "x", "sk", modality="derm", image_size=40, max_size=30)


def test_augmented_images_have_their_class_originals_sizes_and_format(tmp_path):
    """Balancing never lets image size (visual-token count) or format predict a class: every augmented image has
    the size and format of an original of its class."""
    out = tmp_path / "out"
    build_classification(list(sources.from_image_folder(_photos(tmp_path / "src"))), None, out, "sk",
                         modality="derm", augment=True, image_size=40, val_ratio=0.0, test_ratio=0.0, seed=1)
    rows = _rows(out, "sk_open_train")
    originals: dict[str, set] = {}
    augmented: dict[str, set] = {}
    for row in rows:
        path = out / row["images"][0]
        with Image.open(path) as image:
            key = (image.size, path.suffix)
        (augmented if row["source"] == "augmented" else originals).setdefault(row["label"], set()).add(key)
    assert augmented["vasc"] and augmented["vasc"] <= originals["vasc"] == {((60, 40), ".png")}
    assert originals["nv"] == {((60, 45), ".jpg")} and "nv" not in augmented  # the largest class needs none


def test_the_crop_draws_torchvision_random_resized_crop_parameters():
    """The Pillow crop + flip (no torch in the build's workers) samples as torchvision's RandomResizedCrop with the
    same scale and ratio: the same distribution of area share, aspect ratio and position (4,000 draws each)."""
    import random

    import torch
    from torchvision.transforms import v2

    from llamafactory_attok.data.augment import RATIO_SPREAD, SCALE, crop_box

    width, height, n = 600, 450, 4000
    rng = random.Random(0)
    ours = [crop_box(width, height, rng) for _ in range(n)]
    aspect = width / height
    transform = v2.RandomResizedCrop((height, width), scale=SCALE,
                                     ratio=(RATIO_SPREAD[0] * aspect, RATIO_SPREAD[1] * aspect))
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    theirs = [(p["left"], p["top"], p["width"], p["height"]) for p in (transform.make_params([image])
                                                                       for _ in range(n))]

    def summary(boxes):
        area = torch.tensor([w * h / (width * height) for _, _, w, h in boxes])
        ratio = torch.tensor([w / h / aspect for _, _, w, h in boxes])
        left = torch.tensor([x / max(1, width - w) for x, _, w, _ in boxes])
        return area.mean(), area.std(), ratio.mean(), ratio.std(), left.mean()

    for a, b in zip(summary(ours), summary(theirs), strict=True):
        assert abs(float(a) - float(b)) < 0.02, (summary(ours), summary(theirs))
    assert all(0 <= x and 0 <= y and x + w <= width and y + h <= height for x, y, w, h in ours)
    assert min(w * h for _, _, w, h in ours) >= SCALE[0] * width * height * 0.98


def test_one_worker_and_two_write_the_same_files_byte_for_byte(tmp_path, monkeypatch):
    from llamafactory_attok.data import parallel

    monkeypatch.setattr(parallel, "MIN_PARALLEL_TASKS", 0)  # two processes even for these few images
    items = list(sources.from_image_folder(_photos(tmp_path / "src")))
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        build_classification(items, None, out, "sk", modality="derm", augment=True, image_size=40, max_size=56,
                             seed=3, workers=workers)
        outs.append(out)
    files = [{str(p.relative_to(o)): p.read_bytes() for p in sorted(o.rglob("*")) if p.is_file()
              and not p.name.startswith(".")} for o in outs]
    assert files[0].keys() == files[1].keys() and any("train_aug" in name for name in files[0])
    assert files[0] == files[1]


def test_overwrite_refuses_files_added_to_the_images_folder_or_edited_since_the_build(tmp_path):
    """--overwrite replaces a build only as it was written: a file the user put into its images folder, or a
    dataset / vocabulary / derived class map edited since, is named and nothing is deleted."""
    out = tmp_path / "out"
    items = list(sources.from_image_folder(_folder(tmp_path)))
    build_classification(items, None, out, "cx", modality="xray", augment=False)
    (out / "cx_images" / "MY_NOTES.txt").write_text("mine")
    with pytest.raises(AttTokError, match=r"1 file\(s\) in cx_images/ that the build did not write "
                                          r"\(cx_images/MY_NOTES.txt\)"):
        build_classification(items, None, out, "cx", modality="xray", augment=False, overwrite=True)
    assert (out / "cx_images" / "MY_NOTES.txt").read_text() == "mine"
    (out / "cx_images" / "MY_NOTES.txt").unlink()
    classes = out / "cx_classes.yaml"
    classes.write_text(classes.read_text().replace("name: normal", "name: normal chest"))
    with pytest.raises(AttTokError, match=r"cx_classes.yaml \(edited since the build\)"):
        build_classification(items, None, out, "cx", modality="xray", augment=False, overwrite=True)
    assert "normal chest" in classes.read_text()


def test_stale_staging_cleanup_removes_only_folders_a_build_made(tmp_path):
    from llamafactory_attok.safe_paths import STAGING_MARKER, remove_stale_staging

    mine = tmp_path / ".big.building.mybackup"
    mine.mkdir()
    (mine / "f.txt").write_text("precious")
    ours = tmp_path / ".big.building.x1y2"
    ours.mkdir()
    (ours / STAGING_MARKER).touch()
    assert remove_stale_staging(tmp_path) == [".big.building.x1y2"]
    assert (mine / "f.txt").read_text() == "precious"


def test_a_rebuild_never_reads_the_images_folder_it_replaces(tmp_path):
    """A CSV listing an earlier build's own images, rebuilt under the same name with --overwrite, would delete and
    renumber them under the build's feet (two of them ended up with the other class's pixels): refused, nothing
    touched; the same for a CSV kept inside that images folder."""
    out = tmp_path / "ob"
    build_classification(list(sources.from_image_folder(_folder(tmp_path))), None, out, "t", modality="xray",
                         augment=False)
    rows = _rows(out, "t_open_train")
    reuse = out / "reuse.csv"
    reuse.write_text("path,label\n" + "".join(f"{r['images'][0]},{r['label']}\n" for r in rows))
    before = {p: p.read_bytes() for p in sorted((out / "t_images").rglob("*")) if p.is_file()}
    items = list(sources.from_csv(reuse, "path", "label", None))
    with pytest.raises(AttTokError, match=r"reuse.csv: line 2: .*lies in .*t_images, the folder this build writes "
                                          r"its images to"):
        build_classification(items, None, out, "t", modality="xray", augment=False, overwrite=True,
                             inputs={"source": reuse})
    assert {p: p.read_bytes() for p in sorted((out / "t_images").rglob("*")) if p.is_file()} == before
    inner = out / "t_images" / "list.csv"
    inner.write_text("path,label\n")
    with pytest.raises(AttTokError, match=r"source .*list.csv lies in .*t_images"):
        build_classification(list(sources.from_image_folder(_folder(tmp_path / "again"))), None, out, "t",
                             modality="xray", augment=False, overwrite=True, inputs={"source": inner})


def test_a_split_left_empty_by_keeping_copies_together_is_named(tmp_path, capsys):
    """Ten copies of one image per class: keeping identical images in one split empties val and test — said, with
    the reason, instead of a build with no val / test datasets and no word."""
    src = tmp_path / "src"
    src.mkdir()
    rows = ["path,label"]
    for label, value in (("cat", 40), ("dog", 200)):
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(src / f"{label}.png")
        for i in range(10):
            (src / f"{label}_{i}.png").write_bytes((src / f"{label}.png").read_bytes())
            rows.append(f"src/{label}_{i}.png,{label}")
    (tmp_path / "dup.csv").write_text("\n".join(rows) + "\n")
    items = list(sources.from_csv(tmp_path / "dup.csv", "path", "label", None))
    written = build_classification(items, None, tmp_path / "out", "d", modality="xray", augment=False)
    assert set(written) == {"d_open_train", "d_close_train"}
    err = capsys.readouterr().err
    assert "the val split has no image at all" in err and "the test split has no image at all" in err


def test_relabel_refuses_a_source_whose_labels_changed_and_says_what_it_does_not_read(tmp_path, capsys):
    """--relabel rebuilds the text from the earlier build's manifest: a CSV corrected since (labels swapped) would
    lose its corrections without a word — refused, naming a line; with the CSV unchanged it relabels and says that
    the source and the image / split options are not read again."""
    from llamafactory_attok.cli import main

    src = tmp_path / "imgs"
    src.mkdir()
    rows = ["path,label"]
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(src / f"{i}.png")
        rows.append(f"imgs/{i}.png,{('normal', 'pneumonia')[i % 2]}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    base = ["data", "classify", str(tmp_path / "list.csv"), "--format", "csv", "--image-col", "path",
            "--modality", "xray", "--out", str(tmp_path / "out"), "--name", "y", "--no-augment"]
    assert main(base) == 0
    relabel = [*base, "--class-map", str(tmp_path / "out" / "y_classes.yaml"), "--relabel", "--overwrite"]
    capsys.readouterr()
    assert main(relabel) == 0
    assert "--relabel takes the images, raw labels and splits from the earlier build's manifest" in \
        capsys.readouterr().err
    swapped = [rows[0]] + [r.replace("normal", "X").replace("pneumonia", "normal").replace("X", "pneumonia")
                           for r in rows[1:]]
    (tmp_path / "list.csv").write_text("\n".join(swapped) + "\n")
    before = (tmp_path / "out" / "y_open_train.json").read_bytes()
    assert main(relabel) == 2
    err = capsys.readouterr().err
    assert "12 row(s) differ from the earlier build of 'y' (line 2: 'normal' then, 'pneumonia' now)" in err
    assert (tmp_path / "out" / "y_open_train.json").read_bytes() == before
