"""Every `attok` command refuses to lose data, to write outside --out, to read input silently wrong, or to crash
with a raw error — the message names the file / line / sample / option and the fix.

Everything runs in-process (`main([...])` or the builders), so the CLI's own argument handling is exercised without
launching a process.
"""

import json
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llamafactory_attok.cli import main
from llamafactory_attok.data import classify, sources
from llamafactory_attok.data.classify import build_classification
from llamafactory_attok.data.slake import build_slake
from llamafactory_attok.data.vqa_rad import build_vqa_rad
from llamafactory_attok.errors import AttTokError
from llamafactory_attok.eval.predict import run_predict, vocab_token_ids
from llamafactory_attok.eval.vqa_protocols import VqaItem, medevalkit_verdict, paper_verdict
from llamafactory_attok.safe_paths import build_lock, dataset_name
from llamafactory_attok.tiny import build_tiny_model, build_tiny_tokenizer
from llamafactory_attok.tiny.sample_data import RETINA_NPZ, build_retina_sample
from llamafactory_attok.vocab import (
    check_data_tokens,
    check_keywords_against,
    derive_vocab,
    load_vocab,
    vocab_from_mapping,
)

CLASS_MAP = "modality: xray\nclasses:\n  normal: normal chest\n  pneumonia: pneumonia\n"


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (hidden ones included) under ``folder`` with its bytes; folders as None."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _png(path: Path, seed: int = 0, size=(20, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _folder(root: Path, counts=(6, 4)) -> Path:
    for label, count in zip(("normal", "pneumonia"), counts, strict=True):
        for i in range(count):
            _png(root / label / f"{i}.png", seed=hash((label, i)) % 1000)
    return root


def _csv(path: Path, rows: list[tuple[str, ...]], header=("path", "diagnosis")) -> Path:
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return path


def _class_map(tmp_path: Path) -> Path:
    path = tmp_path / "classes.yaml"
    path.write_text(CLASS_MAP)
    return path


def _err(capsys) -> str:
    return capsys.readouterr().err


# --- lose data -------------------------------------------------------------------------------------------------

def test_tiny_model_refuses_an_existing_folder_without_overwrite(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"mine": true}')
    (model / "model.safetensors").write_bytes(b"my weights")
    before = _snapshot(model)
    for extra in ([], ["--overwrite"]):  # not a tiny model folder: never replaced, --overwrite not suggested
        assert main(["tiny-model", str(model), *extra]) == 2
        err = _err(capsys)
        assert "model is not a tiny model folder (no attok_tiny_model.json with the digests of what it wrote): " \
               "config.json, model.safetensors" in err
        assert "pass --overwrite" not in err and _snapshot(model) == before
    (tmp_path / "file").write_text("x")
    assert main(["tiny-model", str(tmp_path / "file"), "--overwrite"]) == 2
    assert "is a file, not a folder" in _err(capsys) and (tmp_path / "file").read_text() == "x"
    with pytest.raises(AttTokError, match=r"model: already exists .*pass --overwrite"):  # the library's own refusal
        build_tiny_model(model, overwrite=False)  # (the rename itself refuses: no check-then-write race)
    assert _snapshot(model) == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    tiny = tmp_path / "tiny"
    assert main(["tiny-model", str(tiny)]) == 0
    assert main(["tiny-model", str(tiny)]) == 2 and "pass --overwrite" in _err(capsys)  # ours: replaceable
    assert main(["tiny-model", str(tiny), "--overwrite", "--seed", "1"]) == 0
    assert json.loads((tiny / "config.json").read_text())["model_type"] == "qwen2_vl"


def test_tiny_model_overwrite_never_wipes_a_folder_with_the_users_files(tmp_path, capsys):
    """A tiny model folder to which the user added thesis.txt and data/: --overwrite refuses, naming them."""
    tiny = tmp_path / "proj"
    assert main(["tiny-model", str(tiny)]) == 0
    (tiny / "thesis.txt").write_text("years of work")
    (tiny / "data").mkdir()
    (tiny / "data" / "x.csv").write_text("a,b\n")
    before = _snapshot(tiny)
    assert main(["tiny-model", str(tiny), "--family", "qwen2_vl", "--overwrite"]) == 2
    err = _err(capsys)
    assert "proj holds files a tiny-model build did not write, or changed since: data, thesis.txt" in err
    assert _snapshot(tiny) == before


def test_tiny_model_overwrite_keeps_a_file_listed_in_its_marker_by_hand_or_edited(tmp_path, capsys):
    """The marker's list alone does not make a file the build's: notes.txt added to it by hand, or a config edited
    since, is refused by name (the digests of what the build wrote do not match) and nothing is deleted."""
    tiny = tmp_path / "proj"
    assert main(["tiny-model", str(tiny)]) == 0
    (tiny / "notes.txt").write_text("mine")
    marker = json.loads((tiny / "attok_tiny_model.json").read_text())
    marker["files"].append("notes.txt")
    (tiny / "attok_tiny_model.json").write_text(json.dumps(marker))
    before = _snapshot(tiny)
    assert main(["tiny-model", str(tiny), "--overwrite"]) == 2
    assert "did not write, or changed since: notes.txt" in _err(capsys) and _snapshot(tiny) == before
    (tiny / "notes.txt").unlink()
    (tiny / "config.json").write_text((tiny / "config.json").read_text() + "\n")
    before = _snapshot(tiny)
    assert main(["tiny-model", str(tiny), "--overwrite"]) == 2
    assert "config.json (changed since the build)" in _err(capsys) and _snapshot(tiny) == before


def test_sample_data_refuses_to_replace_the_users_datasets_and_vocabulary(tmp_path, capsys):
    """--overwrite replaces only what an earlier sample-data build wrote (retina_build.json) and nobody edited since;
    the user's own retina_vocab.yaml or dataset entry is refused with or without it, and it is not suggested."""
    small = ["--per-class-train", "1", "--per-class-test", "1"]
    out = tmp_path / "data"
    out.mkdir()
    (out / "retina_vocab.yaml").write_text('"<|fundus_no_dr|>": "my own keyword"\n')
    (out / "dataset_info.json").write_text('{"retina_attok_test": {"file_name": "mine.json"}}')
    before = _snapshot(out)
    for extra in ([], ["--overwrite"]):
        assert main(["sample-data", str(out), *small, *extra]) == 2
        err = _err(capsys)
        assert "retina_vocab.yaml, dataset_info.json entry retina_attok_test already exist and no earlier `attok " \
               "sample-data` build of 'retina' wrote them" in err
        assert "--overwrite" not in err and _snapshot(out) == before
    (out / "retina_vocab.yaml").unlink()
    (out / "dataset_info.json").unlink()
    assert main(["sample-data", str(out), *small]) == 0
    assert main(["sample-data", str(out), *small]) == 2
    assert "already exist from an earlier build of 'retina'; pass --overwrite" in _err(capsys)
    assert main(["sample-data", str(out), *small, "--overwrite", "--npz", str(RETINA_NPZ)]) == 0
    (out / "retina_vocab.yaml").write_text('"<|fundus_no_dr|>": "my edited keyword"\n')
    before = _snapshot(out)
    for extra in ([], ["--overwrite"]):
        assert main(["sample-data", str(out), *small, *extra]) == 2
        assert "retina_vocab.yaml (edited since the build)" in _err(capsys) and _snapshot(out) == before
    assert main(["sample-data", str(tmp_path / "d2"), "--npz", str(out / "retina_vocab.yaml")]) == 2
    assert "retina_vocab.yaml: not a .npz archive" in _err(capsys)
    assert not (tmp_path / "d2").exists()


def test_sample_data_npz_option_scales_float_images(tmp_path):
    npz = tmp_path / "float.npz"
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = np.full((5, 28, 28, 3), 0.5, dtype=np.float32)
        arrays[f"{split}_labels"] = np.arange(5).reshape(5, 1)
    np.savez(npz, **arrays)
    build_retina_sample(tmp_path / "out", per_class_train=1, per_class_test=1, npz_path=npz)
    pixels = np.asarray(Image.open(next((tmp_path / "out" / "retina_images").iterdir())))
    assert abs(int(pixels.mean()) - 128) <= 1  # 0.5 * 255, not black


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink"])
def test_predict_refuses_to_write_over_its_dataset(tmp_path, capsys, spelling):
    dataset = tmp_path / "data" / "x.json"
    dataset.parent.mkdir()
    dataset.write_text("[]")
    out = {"same": dataset, "dotted": tmp_path / "data" / ".." / "data" / "x.json", "symlink": tmp_path / "link"}
    if spelling == "symlink":
        out["symlink"].symlink_to(dataset)
    argv = ["predict", "--model", str(tmp_path / "model"), "--dataset", str(dataset), "--out", str(out[spelling])]
    assert main(argv) == 2
    assert "is the same file as --dataset" in _err(capsys) and dataset.read_text() == "[]"
    metrics_over_input = ["--dataset", str(dataset), "--val-dataset", str(tmp_path / "p.metrics.json")]
    with pytest.raises(AttTokError, match=r"p.metrics.json is the same file as --val-dataset"):
        run_predict(str(tmp_path / "model"), metrics_over_input[1], str(tmp_path / "p.jsonl"),
                    val_dataset=metrics_over_input[3])
    with pytest.raises(AttTokError, match=r"--out .* is a folder"):
        run_predict(str(tmp_path / "model"), str(dataset), str(tmp_path))


def test_eval_classify_refuses_to_write_over_its_predictions(tmp_path, capsys):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"predict": "a", "label": "a"}\n')
    dataset = tmp_path / "d.json"
    dataset.write_text("[]")
    assert main(["eval", "classify", "--predictions", str(predictions), "--dataset", str(dataset), "--out",
                 str(predictions)]) == 2
    assert "is the same file as --predictions" in _err(capsys)
    assert predictions.read_text() == '{"predict": "a", "label": "a"}\n'
    assert main(["eval", "vqa", "--predictions", str(predictions), "--dataset", str(dataset), "--out",
                 str(tmp_path / "d.json")]) == 2
    assert "is the same file as --dataset" in _err(capsys) and dataset.read_text() == "[]"


def test_general_no_command_writes_into_what_the_user_has(tmp_path, capsys):
    figures = tmp_path / "figs"
    figures.mkdir()
    (figures / "tsne.png").write_bytes(b"mine")
    (tmp_path / "d.json").write_text("[]")
    assert main(["eval", "figures", "--model", "m", "--dataset", str(tmp_path / "d.json"), "--out-dir",
                 str(figures)]) == 2
    assert "tsne.png; pass --overwrite" in _err(capsys) and (figures / "tsne.png").read_bytes() == b"mine"
    (tmp_path / "out").write_text("a file")
    assert main(["data", "classify", str(_folder(tmp_path / "src")), "--format", "folder", "--out",
                 str(tmp_path / "out"), "--name", "cx", "--modality", "xray"]) == 2
    assert "is a file, not a folder" in _err(capsys) and (tmp_path / "out").read_text() == "a file"
    class_map = tmp_path / "o2" / "cx_vocab.yaml"  # a class map where the build writes its vocabulary
    class_map.parent.mkdir()
    class_map.write_text(CLASS_MAP)
    assert main(["data", "classify", str(tmp_path / "src"), "--format", "folder", "--out", str(class_map.parent),
                 "--name", "cx", "--class-map", str(class_map), "--overwrite"]) == 2
    assert "cx_vocab.yaml is the same file as --class-map" in _err(capsys) and class_map.read_text() == CLASS_MAP


def test_relabel_never_writes_over_its_class_map(tmp_path, capsys):
    """--relabel with the class map kept where the build writes its vocabulary: refused with or without
    --overwrite (the normal build path refuses it the same way), the class map untouched."""
    src, out = _folder(tmp_path / "src"), tmp_path / "o_rl"
    argv = ["data", "classify", str(src), "--format", "folder", "--out", str(out), "--name", "t", "--no-augment"]
    assert main([*argv, "--class-map", str(_class_map(tmp_path))]) == 0
    class_map = out / "t_vocab.yaml"
    class_map.write_text(CLASS_MAP.replace("normal chest", "healthy chest"))
    for extra in ([], ["--overwrite"]):
        assert main([*argv, "--class-map", str(class_map), "--relabel", *extra]) == 2
        assert "t_vocab.yaml is the same file as --class-map" in _err(capsys)
        assert class_map.read_text() == CLASS_MAP.replace("normal chest", "healthy chest")


def test_no_command_writes_through_or_replaces_a_symbolic_link(tmp_path, capsys):
    """A dataset_info.json, a report or an image that is a link to a shared file, and a tiny-model OUT that is a link
    to a folder: refused naming link and target, with or without --overwrite; the link and its target stay."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "dataset_info.json").write_text('{"theirs": {"file_name": "t.json"}}')
    out = tmp_path / "out"
    out.mkdir()
    link = out / "dataset_info.json"
    link.symlink_to(shared / "dataset_info.json")

    def refused(argv: list[str], path: Path, target: Path) -> None:
        for extra in ([], ["--overwrite"]):
            assert main([*argv, *extra]) == 2
            err = _err(capsys)
            assert f"{path} is a symbolic link to {target}: attok never writes through or replaces a link; pass the " \
                   "target's real path" in err and "or remove the link" in err
            assert path.is_symlink() and Path(os.readlink(path)) == target

    refused(["data", "classify", str(_folder(tmp_path / "src")), "--format", "folder", "--out", str(out), "--name",
             "cx", "--modality", "xray", "--no-augment"], link, shared / "dataset_info.json")
    refused(["sample-data", str(out), "--per-class-train", "1", "--per-class-test", "1"], link,
            shared / "dataset_info.json")
    assert sorted(p.name for p in out.iterdir()) == ["dataset_info.json"]
    assert (shared / "dataset_info.json").read_text() == '{"theirs": {"file_name": "t.json"}}'
    rad = tmp_path / "rad"  # an image path of a VQA build that is a link
    (rad / "VQA_RAD Image Folder").mkdir(parents=True)
    (rad / "VQA_RAD Image Folder" / "a.jpg").write_bytes(b"A")
    (rad / "VQA_RAD Dataset Public.json").write_text(json.dumps([{"qid": 1, "image_name": "a.jpg", "question": "q?",
                                                                  "answer": "yes", "answer_type": "CLOSED",
                                                                  "phrase_type": "freeform"}]))
    build_vqa_rad(rad, tmp_path / "rad_out", "rad")
    image = tmp_path / "rad_out" / "rad_images" / "a.jpg"
    image.unlink()
    image.symlink_to(shared / "a.jpg")
    refused(["data", "vqa-rad", str(rad), "--out", str(tmp_path / "rad_out"), "--name", "rad"], image,
            shared / "a.jpg")
    metrics = tmp_path / "r1.metrics.json"
    metrics.write_text('{"accuracy": 0.5}')
    report = tmp_path / "report.md"
    report.symlink_to(shared / "report.md")
    refused(["eval", "report", "--run", f"attok@1={metrics}", "--out", str(report)], report, shared / "report.md")
    assert not (shared / "report.md").exists()
    real = tmp_path / "models" / "tiny"
    real.mkdir(parents=True)
    folder_link = tmp_path / "LINKDIR"
    folder_link.symlink_to(real)
    refused(["tiny-model", str(folder_link)], folder_link, real)
    assert not any(real.iterdir())
    with pytest.raises(AttTokError, match="LINKDIR is a symbolic link to"):  # the library refuses it too
        build_tiny_model(folder_link, overwrite=True)


def test_builds_of_one_folder_exclude_each_other_and_the_last_wins_whole(tmp_path, monkeypatch):
    root = _folder(tmp_path / "src", counts=(8, 8))
    real_write_json = classify.write_json

    def uneven_write_json(path, data):  # the first build writes its JSON files slowly: unlocked, the second
        time.sleep(0.15 if threading.current_thread().name == "first" else 0)  # build's images and the first's
        real_write_json(path, data)  # JSON files would end up together (val rows pointing at missing images)

    monkeypatch.setattr(classify, "write_json", uneven_write_json)
    out, errors = tmp_path / "out", []

    def build(seed: int) -> None:
        try:
            build_classification(list(sources.from_image_folder(root)), _class_map(tmp_path), out, "a", seed=seed,
                                 augment=False, overwrite=True)
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=build, args=(seed,), name=name) for seed, name in ((1, "first"), (2, "next"))]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join()
    assert not errors
    for dataset in out.glob("a_*_*.json"):  # the datasets (a_build.json is the manifest)
        for row in json.loads(dataset.read_text()):
            assert (out / row["images"][0]).is_file(), f"{dataset.name} points at a missing image"
    sources_of = [r["source"] for split in ("train", "val", "test")
                  for r in json.loads((out / f"a_open_{split}.json").read_text())]
    assert sorted(sources_of) == sorted(str(p) for p in root.rglob("*.png"))  # each image once: one build, whole


def test_a_build_waits_for_the_lock_of_its_folder(tmp_path, capsys):
    root = _folder(tmp_path / "src")
    out = tmp_path / "out"
    done = threading.Event()
    worker = threading.Thread(target=lambda: (build_classification(
        list(sources.from_image_folder(root)), _class_map(tmp_path), out, "a", augment=False), done.set()))
    with build_lock(out):
        worker.start()
        time.sleep(0.5)
        assert not done.is_set() and not (out / "dataset_info.json").exists()
    worker.join()
    assert done.is_set() and (out / "dataset_info.json").is_file()
    assert "another attok build is writing to" in _err(capsys)


# --- escape ----------------------------------------------------------------------------------------------------

BAD_NAMES = ["../../vq", "a/b", "a\\b", "..", ".hidden", "", " ", "x..y"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_dataset_names_stay_inside_out(name):
    with pytest.raises(AttTokError, match=r"--name .*; a dataset name becomes file names inside --out"):
        dataset_name(name)


def test_every_builder_refuses_an_escaping_name(tmp_path, capsys):
    out = tmp_path / "trav" / "a" / "b"
    rows = [{"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "yes"}],
             "images": ["i.png"], "modality": "CT", "location": "Lung"}]
    (tmp_path / "in.json").write_text(json.dumps(rows))
    assert main(["data", "vqa-attributes", str(tmp_path / "in.json"), "--out", str(out), "--name", "../../vq",
                 "--from-fields", "modality,location"]) == 2
    assert "--name '../../vq' contains a path separator" in _err(capsys)
    assert main(["data", "classify", str(_folder(tmp_path / "src")), "--format", "folder", "--out", str(out),
                 "--name", "../../x", "--modality", "xray"]) == 2
    assert "--name '../../x'" in _err(capsys)
    (tmp_path / "slake").mkdir()
    (tmp_path / "rad").mkdir()
    (tmp_path / "rad" / "VQA_RAD Dataset Public.json").write_text("[]")
    for build in (lambda: build_slake(tmp_path / "slake", out, "../s"), lambda: build_vqa_rad(tmp_path / "rad", out,
                                                                                                "../r")):
        with pytest.raises(AttTokError, match=r"--name '\.\./[sr]' contains a path separator"):
            build()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json", "rad", "slake", "src"]  # no trav/ left
    assert sorted(p.name for p in tmp_path.rglob("*.json")) == ["VQA_RAD Dataset Public.json", "in.json"]


# --- silent ----------------------------------------------------------------------------------------------------

def test_duplicate_csv_rows_are_kept_once_with_a_warning(tmp_path, capsys):
    root = _folder(tmp_path / "src")
    rows = [(str(p.relative_to(tmp_path)), p.parent.name) for p in sorted(root.rglob("*.png"))]
    table = _csv(tmp_path / "labels.csv", rows + rows[:3] + [("./" + rows[0][0], rows[0][1])])
    written = build_classification(list(sources.from_csv(table, "path", "diagnosis", None)), _class_map(tmp_path),
                                   tmp_path / "out", "cx", augment=False)
    total = sum(len(json.loads((tmp_path / "out" / f).read_text())) for d, f in written.items() if "_open_" in d)
    assert total == len(rows)
    assert "4 duplicate row(s) (an image listed again with the same label) kept once: " in _err(capsys)


def test_one_image_under_two_labels_or_in_two_splits_is_refused_naming_both_lines(tmp_path):
    root = _folder(tmp_path / "src")
    rows = [(str(p.relative_to(tmp_path)), p.parent.name) for p in sorted(root.rglob("*.png"))]
    table = _csv(tmp_path / "labels.csv", [*rows, (rows[0][0], "pneumonia")])
    with pytest.raises(AttTokError, match=rf"labels.csv: line {len(rows) + 2}: image .* \(label 'pneumonia'.*already "
                                          r"listed at .*labels.csv: line 2 \(label 'normal'"):
        build_classification(list(sources.from_csv(table, "path", "diagnosis", None)), _class_map(tmp_path),
                             tmp_path / "out", "cx", augment=False)
    split_rows = [(*r, "train") for r in rows] + [(rows[1][0], rows[1][1], "test")]
    table = _csv(tmp_path / "split.csv", split_rows, header=("path", "diagnosis", "fold"))
    with pytest.raises(AttTokError, match=r"split.csv: line \d+: .*split test\) is already listed at .*split train"):
        build_classification(list(sources.from_csv(table, "path", "diagnosis", "fold")), _class_map(tmp_path),
                             tmp_path / "out", "cx", augment=False)
    assert not (tmp_path / "out").exists()


def _built_pixels(out: Path) -> np.ndarray:
    return np.concatenate([np.asarray(Image.open(p)).ravel() for p in sorted((out / "cx_images").rglob("*.png"))])


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(32 * 32).reshape(32, 32) * 4).astype(np.uint16)  # 0 .. 4092: a 12-bit image in 16 bits
    Image.fromarray(ramp).save(tmp_path / "a.png")
    Image.fromarray(ramp[::-1]).save(tmp_path / "b.png")
    table = _csv(tmp_path / "labels.csv", [("a.png", "normal"), ("b.png", "pneumonia")],
                 header=("path", "diagnosis", "fold")[:2])
    items = list(sources.from_csv(table, "path", "diagnosis", None))
    for item, split in zip(items, ("train", "test"), strict=True):
        item.split = split
    build_classification(items, _class_map(tmp_path), tmp_path / "out", "cx", augment=False, image_size=8)
    pixels = _built_pixels(tmp_path / "out")
    assert (pixels == 255).mean() < 0.01 and 120 < pixels.mean() < 135  # the ramp's mid grey, not white


def test_float_npz_images_are_scaled_and_out_of_range_ones_refused(tmp_path):
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = np.linspace(0, 1, 2 * 28 * 28).reshape(2, 28, 28).astype(np.float32)
        arrays[f"{split}_labels"] = np.array([[0], [1]])
    np.savez(tmp_path / "float.npz", **arrays)
    mapping = tmp_path / "m.yaml"
    mapping.write_text("modality: xray\nclasses:\n  0: normal\n  1: pneumonia\n")
    build_classification(list(sources.from_npz(tmp_path / "float.npz")), mapping, tmp_path / "out", "cx",
                         augment=False, image_size=28)
    assert 120 < _built_pixels(tmp_path / "out").mean() < 135  # not black
    arrays["val_images"] = arrays["val_images"] * 1000
    np.savez(tmp_path / "wide.npz", **arrays)
    with pytest.raises(AttTokError, match=r"wide.npz: val sample 0: float image with values in \[0, \d+"):
        list(sources.from_npz(tmp_path / "wide.npz"))


def test_hidden_folders_and_files_are_no_classes(tmp_path, capsys):
    root = _folder(tmp_path / "src")
    _png(root / ".ipynb_checkpoints" / "0-checkpoint.png")
    (root / "normal" / "._0.png").write_bytes(b"AppleDouble")
    items = list(sources.from_image_folder(root))
    assert {i.label for i in items} == {"normal", "pneumonia"} and len(items) == 10
    assert "skipped 2 hidden folder(s)/file(s) (name starting with a dot): .ipynb_checkpoints" in _err(capsys)


@pytest.mark.parametrize(("options", "message"), [
    (["--val-ratio", "0.7", "--test-ratio", "0.7"], "--val-ratio 0.7 + --test-ratio 0.7 = 1.4: the sum must be below"),
    (["--val-ratio", "0.5", "--test-ratio", "0.5"], "= 1: the sum must be below 1"),
])
def test_ratios_that_leave_no_training_split_are_refused(tmp_path, capsys, options, message):
    argv = ["data", "classify", str(_folder(tmp_path / "src")), "--format", "folder", "--out", str(tmp_path / "out"),
            "--name", "cx", "--modality", "xray", *options]
    assert main(argv) == 2
    assert message in _err(capsys) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", [["--image-size", "0"], ["--image-size", "-3"], ["--val-ratio", "1"],
                                    ["--test-ratio", "-0.1"], ["--augment-target", "0"]])
def test_bad_numbers_are_refused_by_the_parser(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "classify", "src", "--format", "folder", "--out", str(tmp_path / "o"), "--name", "cx", *option])
    assert exit_.value.code == 2 and f"argument {option[0]}" in _err(capsys)
    with pytest.raises(AttTokError, match=r"--image-size 0: must be between 1 and 16384"):
        build_classification([], None, tmp_path / "o", "cx", image_size=0)


def test_a_class_too_small_for_the_split_is_named_with_its_counts(tmp_path, capsys):
    build_classification(list(sources.from_image_folder(_folder(tmp_path / "src", counts=(10, 1)))),
                         _class_map(tmp_path), tmp_path / "out", "cx", augment=False)
    err = _err(capsys)
    assert "class(es) too small for --val-ratio 0.1 / --test-ratio 0.2" in err
    assert "'pneumonia' (1 image(s): train 1, val 0, test 0)" in err and "'normal'" not in err


def test_empty_vqa_answers_are_refused_or_skipped_by_qid(tmp_path, capsys):
    rows = [{"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": a}],
             "images": ["i.png"], "qid": q, "modality": "CT", "location": "Lung"} for q, a in ((7, "yes"), (8, " "))]
    (tmp_path / "in.json").write_text(json.dumps(rows))
    assert main(["data", "vqa-attributes", str(tmp_path / "in.json"), "--out", str(tmp_path / "out"), "--name", "v",
                 "--from-fields", "modality,location"]) == 2
    assert "in.json: sample(s) 1 (qid 8: ' ') have an empty answer" in _err(capsys)
    assert not (tmp_path / "out").exists()
    source = tmp_path / "rad"
    (source / "VQA_RAD Image Folder").mkdir(parents=True)
    (source / "VQA_RAD Image Folder" / "a.jpg").write_bytes(b"A")
    entries = [{"qid": q, "image_name": "a.jpg", "question": "Is it?", "answer": a, "answer_type": "CLOSED",
                "phrase_type": p} for q, a, p in ((1, "yes", "freeform"), (2, "", "freeform"), (3, "no", "test_para"))]
    (source / "VQA_RAD Dataset Public.json").write_text(json.dumps(entries))
    build_vqa_rad(source, tmp_path / "rad_out", "rad")
    assert len(json.loads((tmp_path / "rad_out" / "rad_train.json").read_text())) == 1
    assert "skipped 1 question(s): qid 2: answer '' has no letter or digit" in _err(capsys)


@pytest.mark.parametrize("verdict", [paper_verdict, medevalkit_verdict])
@pytest.mark.parametrize("prediction", ["", "  ", "<|ct_lung|>", "?!"])
@pytest.mark.parametrize(("answer", "closed"), [("lung", False), ("yes", True), ("肺", False)])
def test_an_empty_prediction_is_wrong_whatever_the_judge_says(verdict, prediction, answer, closed):
    asked = []
    result = verdict(VqaItem(0, "q", answer, prediction, closed), lambda item, pred: asked.append(pred) or True)
    assert not result.correct and not asked


def test_a_chinese_answer_is_scored_and_an_empty_reference_refused(tmp_path, capsys):
    rows = [{"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": a}],
             "images": ["i.png"], "answer_type": "open"} for a in ("肺", "<|ct_lung|> ")]
    (tmp_path / "d.json").write_text(json.dumps(rows[:1]))
    (tmp_path / "p.jsonl").write_text(json.dumps({"predict": "肝", "label": "肺"}) + "\n")
    assert main(["eval", "vqa", "--predictions", str(tmp_path / "p.jsonl"), "--dataset", str(tmp_path / "d.json"),
                 "--out", str(tmp_path / "r.json"), "--protocol", "paper"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["protocols"]["paper"]["accuracy"] == 0.0
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"predict": "", "label": r["messages"][1]["content"]}) + "\n"
                                              for r in rows))
    assert main(["eval", "vqa", "--predictions", str(tmp_path / "p.jsonl"), "--dataset", str(tmp_path / "d.json"),
                 "--out", str(tmp_path / "r2.json")]) == 2
    assert "d.json: sample(s) 1: the reference answer is empty" in _err(capsys)


@pytest.mark.parametrize("answer", ["<|Fundus_Weird Token|> w", "<| fundus_a |> a", "<|fundus_a|> and <|FUNDUS b|>"])
def test_a_malformed_token_in_an_answer_is_refused_naming_the_sample(answer):
    vocab = vocab_from_mapping({"<|fundus_a|>": "a"}, "v.yaml")
    with pytest.raises(AttTokError, match=r"d.json: sample 3: attribute token .* breaks the naming rule"):
        check_data_tokens([("d.json: sample 3", answer)], vocab, known_special={"<|im_end|>"})
    with pytest.raises(AttTokError, match=r"d.json: sample 3: attribute token .* breaks the naming rule"):
        derive_vocab([("d.json: sample 3", answer)], known_special={"<|im_end|>"})
    assert check_data_tokens([("s", "<|fundus_a|> a<|im_end|>")], vocab, known_special={"<|im_end|>"}) == 1


@pytest.mark.parametrize("keyword", ["<|im_end|>", "lung <|endoftext|>", "<image> lung", "</s>", "<start_of_turn>"])
def test_special_tokens_as_keywords_are_refused_naming_file_and_line(tmp_path, keyword):
    path = tmp_path / "vocab.yaml"
    path.write_text(f'"<|ct_liver|>": liver\n"<|ct_lung|>": {json.dumps(keyword)}\n')
    with pytest.raises(AttTokError, match=r"vocab.yaml: line 2: the keyword .* of <\|ct_lung\|> contains .*special"):
        load_vocab(path)


def test_keywords_containing_a_tokenizer_special_are_refused_with_the_tokenizer(tmp_path):
    path = tmp_path / "vocab.yaml"
    path.write_text('"<|ct_liver|>": liver\n"<|ct_lung|>": "lung [CLS]"\n')
    vocab = load_vocab(path)
    check_keywords_against(vocab, ["[SEP]"])
    with pytest.raises(AttTokError, match=r"vocab.yaml: line 2: the keyword 'lung \[CLS\]' of <\|ct_lung\|> contains "
                                          r"'\[CLS\]', a special token of the tokenizer"):
        check_keywords_against(vocab, ["[CLS]", "[SEP]"])


def test_report_refuses_a_file_without_metrics_and_a_run_given_twice(tmp_path, capsys):
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "a.json").write_text('{"accuracy": 0.5}')
    (tmp_path / "b.json").write_text('{"accuracy": 0.7}')
    assert main(["eval", "report", "--run", f"x@1={tmp_path / 'empty.json'}", "--out", str(tmp_path / "r.md")]) == 2
    assert ("empty.json: no metrics (accuracy, macro_f1, balanced_accuracy, retrieval_accuracy, unparseable) in "
            "run x@1") in _err(capsys)
    assert main(["eval", "report", "--run", f"x@1={tmp_path / 'a.json'}", "--run", f"x@1={tmp_path / 'b.json'}",
                 "--out", str(tmp_path / "r.md")]) == 2
    err = _err(capsys)
    assert "--run x@1 is given twice" in err and "a.json" in err and "b.json" in err
    assert main(["eval", "report", "--run", f"x@1={tmp_path / 'a.json'}", "--run", f"x@2={tmp_path / 'a.json'}",
                 "--out", str(tmp_path / "r.md")]) == 2
    assert "is the same file as --run x@1" in _err(capsys)
    assert main(["eval", "report", "--run", f"x@1={tmp_path / 'a.json'}", "--out", str(tmp_path / "a.json")]) == 2
    assert "is the same file as --run x@1" in _err(capsys) and not (tmp_path / "r.md").exists()


# --- raw crashes -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-2"])
def test_predict_batch_size_below_one_is_refused_before_anything_is_written(tmp_path, capsys, value):
    out = tmp_path / "p.jsonl"
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--model", "m", "--dataset", "d.json", "--out", str(out), "--batch-size", value])
    assert exit_.value.code == 2 and "argument --batch-size: must be at least 1" in _err(capsys)
    with pytest.raises(AttTokError, match=rf"--batch-size {value}: must be at least 1"):
        run_predict("m", "d.json", str(out), batch_size=int(value))
    assert list(tmp_path.iterdir()) == []


def test_a_vocabulary_token_the_model_lacks_is_named_with_the_vocab_file(tmp_path):
    path = tmp_path / "vocab.yaml"
    path.write_text('"<|ct_liver|>": liver\n"<|ct_lung|>": lung\n')
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(["<|ct_liver|>"], special_tokens=True)
    with pytest.raises(AttTokError, match=r"vocab.yaml: line 2: attribute token\(s\) <\|ct_lung\|> are not in the "
                                          r"tokenizer of model-dir"):
        vocab_token_ids(tokenizer, load_vocab(path), "model-dir")
    tokenizer.add_tokens(["<|ct_lung|>"], special_tokens=True)
    assert vocab_token_ids(tokenizer, load_vocab(path), "m") == tokenizer.convert_tokens_to_ids(
        ["<|ct_liver|>", "<|ct_lung|>"])


def test_predict_with_a_vocabulary_the_model_lacks_names_token_and_file(tmp_path):
    model = build_tiny_model(tmp_path / "model")
    _png(tmp_path / "a.png")
    rows = [{"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "<|ct_lung|> x"}],
             "images": ["a.png"]}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "vocab.yaml").write_text('"<|ct_lung|>": lung\n')
    with pytest.raises(AttTokError, match=r"vocab.yaml: line 1: attribute token\(s\) <\|ct_lung\|> are not in the "
                                          r"tokenizer of .*model"):
        run_predict(str(model), str(tmp_path / "d.json"), str(tmp_path / "p.jsonl"),
                    vocab_path=str(tmp_path / "vocab.yaml"))
    assert not (tmp_path / "p.jsonl").exists()


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width``×``height`` (Pillow refuses it at open, before reading pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_a_huge_csv_image_is_refused_naming_the_csv_line(tmp_path):
    _png(tmp_path / "ok.png")
    _png(tmp_path / "ok2.png", seed=1)
    _png_header_only(tmp_path / "huge.png", 15000, 15000)
    table = _csv(tmp_path / "labels.csv", [("ok.png", "normal"), ("huge.png", "normal"), ("ok2.png", "pneumonia")])
    with pytest.raises(AttTokError, match=r"labels.csv: line 3: image .*huge.png: image is too large to read safely"
                                          r".*downscale it"):
        build_classification(list(sources.from_csv(table, "path", "diagnosis", None)), _class_map(tmp_path),
                             tmp_path / "out", "cx", augment=False)
    assert not (tmp_path / "out").exists()


def test_broken_npz_files_are_named(tmp_path):
    arrays = {f"{s}_{k}": np.zeros((3, 28, 28), np.uint8) if k == "images" else np.zeros((3, 1), np.int64)
              for s in ("train", "val", "test") for k in ("images", "labels")}
    arrays["val_labels"] = np.zeros((2, 1), np.int64)
    np.savez(tmp_path / "short.npz", **arrays)
    (tmp_path / "text.npz").write_text("label,image\n0,a.png\n")
    np.save(tmp_path / "one.npy", np.zeros(3))
    del arrays["test_labels"]
    np.savez(tmp_path / "nolabels.npz", **{**arrays, "val_labels": np.zeros((3, 1))})
    cases = {"short.npz": r"short.npz: val_images has shape \(3, 28, 28\) and val_labels \(2, 1\); expected N",
             "text.npz": r"text.npz: not a .npz archive \(it starts with 'label,image': a CSV file\? use --format csv",
             "one.npy": r"one.npy: a single .npy array, not a .npz archive",
             "nolabels.npz": r"nolabels.npz: no 'test_labels' array"}
    for name, message in cases.items():
        with pytest.raises(AttTokError, match=message):
            list(sources.from_npz(tmp_path / name))
    assert os.path.getsize(tmp_path / "text.npz") > 0
