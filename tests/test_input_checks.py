"""Input that could build or run silently wrong, or crash raw: each case gives a clear
error (naming the file, line, sample or option and the fix), a warning with counts, or correct behaviour.

Everything in-process (`main([...])`, the builders, LF's parser); the preemption of saves is in
tests/test_preemption.py and the user's files under --overwrite in tests/test_data_classify.py."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llamafactory_attok.cli import main
from llamafactory_attok.data import sources
from llamafactory_attok.data.classify import build_classification
from llamafactory_attok.errors import AttTokError
from llamafactory_attok.vocab import vocab_from_mapping

CLASS_MAP = "modality: xray\nclasses:\n  normal: normal chest\n  pneumonia: pneumonia\n"


def _png(path: Path, seed: int = 0, size=(20, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _csv(tmp_path: Path, rows: list[tuple[str, str]], name="labels.csv", header="path,diagnosis",
         prefix: str = "") -> Path:
    path = tmp_path / name
    path.write_text(prefix + header + "\n" + "".join(f"{a},{b}\n" for a, b in rows), encoding="utf-8")
    return path


def _images(tmp_path: Path, n: int = 8) -> list[str]:
    return [str(_png(tmp_path / "imgs" / f"{i}.png", seed=i).relative_to(tmp_path)) for i in range(n)]


def _classify(tmp_path: Path, csv_path: Path, *extra: str) -> int:
    return main(["data", "classify", str(csv_path), "--format", "csv", "--image-col", "path", "--label-col",
                 "diagnosis", "--modality", "xray", "--out", str(tmp_path / "out"), "--name", "cx", "--no-augment",
                 *extra])


# ---- silent results --------------------------------------------------------------------------------------------


def test_float_npz_range_is_decided_once_per_dataset(tmp_path, capsys):
    """Float images in [0, 255] with one dark image (max 0.9): that image stays dark, not multiplied by 255."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (6, 8, 8)).astype(np.float32)
    images[2] = rng.uniform(0, 0.9, (8, 8))
    labels = np.array([[0], [1]] * 3)
    arrays = {f"{s}_images": images for s in ("train", "val", "test")} | {f"{s}_labels": labels
                                                                           for s in ("train", "val", "test")}
    np.savez(tmp_path / "x.npz", **arrays)
    items = list(sources.from_npz(tmp_path / "x.npz"))
    assert "3 image(s) have no value above 1: they are read in the dataset's range [0, 255]" in capsys.readouterr().err
    dark = np.asarray(items[2].image)
    assert dark.max() <= 1  # kept in [0, 255]: 0.9 rounds to 1, not 230


def test_a_keyword_shared_by_two_classes_never_makes_correct_answers_unparseable(tmp_path, capsys):
    """Two tokens with one keyword (one concept in two modalities is legitimate): training warns (tested through
    shared_keywords), and scoring generated text with --vocab no longer turns correct answers into unparseable ones."""
    from llamafactory_attok.eval.classification import score_generated
    from llamafactory_attok.vocab import shared_keywords

    vocab = vocab_from_mapping({"<|xray_a|>": "normal", "<|xray_b|>": " Normal "}, "v.yaml")
    assert shared_keywords(vocab) == {"normal": ["<|xray_a|>", "<|xray_b|>"]}
    rows = [{"messages": [{"role": "user", "content": "<image>q"},
                          {"role": "assistant", "content": f"{t} {n}"}], "images": ["x.png"], "label": n}
            for t, n in (("<|xray_a|>", "normal chest"), ("<|xray_b|>", "normal lungs"))] * 5
    dataset = tmp_path / "d.json"
    dataset.write_text(json.dumps(rows))
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("".join(json.dumps({"predict": r["label"], "label": r["messages"][1]["content"]}) + "\n"
                                   for r in rows))
    scores = score_generated(predictions, dataset, vocab)
    assert scores.accuracy == 1.0 and scores.unparseable == 0
    assert "keyword(s) 'normal' belong to several classes; they are not used as class synonyms" \
        in capsys.readouterr().err


@pytest.mark.parametrize("modality", ["<|im_end|>", "<image>", "x{y}"])
def test_markup_in_the_modality_is_refused(tmp_path, capsys, modality):
    csv_path = _csv(tmp_path, [(p, ("a", "b")[i % 2]) for i, p in enumerate(_images(tmp_path))])
    args = ["data", "classify", str(csv_path), "--format", "csv", "--image-col", "path", "--label-col", "diagnosis",
            "--modality", modality, "--out", str(tmp_path / "out"), "--name", "cx"]
    assert main(args) == 2
    assert f"the modality {modality!r} contains" in capsys.readouterr().err
    assert not (tmp_path / "out" / "cx_open_train.json").exists()


@pytest.mark.parametrize("label", ["<image>", "<|im_end|>", "<|xray_x|> x"])
def test_markup_in_a_label_is_refused_at_build(tmp_path, capsys, label):
    rows = [(p, (label, "b")[i % 2]) for i, p in enumerate(_images(tmp_path))]
    assert _classify(tmp_path, _csv(tmp_path, rows)) == 2
    assert re.search(r"labels.csv: line \d+: the label .* contains", capsys.readouterr().err)


@pytest.mark.parametrize("option", ["--out", "--name"])
def test_an_empty_out_or_name_is_refused(tmp_path, capsys, option):
    csv_path = _csv(tmp_path, [(p, ("a", "b")[i % 2]) for i, p in enumerate(_images(tmp_path))])
    args = ["data", "classify", str(csv_path), "--format", "csv", "--image-col", "path", "--label-col", "diagnosis",
            "--modality", "xray", "--out", str(tmp_path / "out"), "--name", "cx"]
    args[args.index(option) + 1] = ""
    if option == "--out":  # a path option: refused by the argument parser (exit status 2)
        with pytest.raises(SystemExit):
            main(args)
        assert "--out: an empty path" in capsys.readouterr().err
    else:
        assert main(args) == 2
        assert "--name '' is empty" in capsys.readouterr().err
    assert not any(p.name.endswith("_open_train.json") for p in tmp_path.iterdir())


def test_labels_differing_in_case_or_spaces_one_rule(tmp_path, capsys):
    images = _images(tmp_path)
    rows = [(p, ("normal ", "pneumonia")[i % 2]) for i, p in enumerate(images)]
    assert _classify(tmp_path, _csv(tmp_path, rows)) == 0  # surrounding spaces: removed, counted
    assert "4 label(s) had spaces around them, removed" in capsys.readouterr().err
    rows = [(p, ("normal", "Normal", "pneumonia")[i % 3]) for i, p in enumerate(images)]
    assert _classify(tmp_path, _csv(tmp_path, rows, name="b.csv"), "--overwrite") == 2
    assert "differ only in case or spacing name one class twice: 'normal' (3 image(s)) / 'Normal' (3 image(s))" \
        in capsys.readouterr().err


def test_a_single_class_is_refused(tmp_path, capsys):
    assert _classify(tmp_path, _csv(tmp_path, [(p, "normal") for p in _images(tmp_path)])) == 2
    assert "one class only ('normal', 8 image(s))" in capsys.readouterr().err


def test_identical_images_under_two_labels_or_splits_are_counted(tmp_path, capsys):
    images = _images(tmp_path, 8)
    copy = tmp_path / "imgs" / "copy.png"
    copy.write_bytes((tmp_path / images[0]).read_bytes())
    rows = [(p, ("normal", "pneumonia")[i % 2]) for i, p in enumerate(images)] + [("imgs/copy.png", "pneumonia")]
    assert _classify(tmp_path, _csv(tmp_path, rows)) == 0
    err = capsys.readouterr().err
    assert "1 image(s) have the same content as an image with another label" in err
    split_rows = [(p, ("normal", "pneumonia")[i % 2], ("train", "test")[i // 4]) for i, p in enumerate(images)]
    split_rows.append(("imgs/copy.png", "normal", "test"))  # images[0] is normal / train
    path = tmp_path / "s.csv"
    path.write_text("path,diagnosis,split\n" + "".join(f"{a},{b},{c}\n" for a, b, c in split_rows))
    assert main(["data", "classify", str(path), "--format", "csv", "--image-col", "path", "--label-col",
                 "diagnosis", "--split-col", "split", "--modality", "xray", "--out", str(tmp_path / "o2"), "--name",
                 "cx", "--no-augment"]) == 0
    assert "1 image(s) of one split have the same content as an image of another split (leakage" \
        in capsys.readouterr().err


def test_copies_never_end_up_in_two_splits_the_build_assigns(tmp_path):
    images = _images(tmp_path, 20)
    rows = [(p, ("normal", "pneumonia")[i % 2]) for i, p in enumerate(images)]
    for i in range(6):  # six copies of image 0
        (tmp_path / "imgs" / f"c{i}.png").write_bytes((tmp_path / images[0]).read_bytes())
        rows.append((f"imgs/c{i}.png", "normal"))
    items = list(sources.from_csv(_csv(tmp_path, rows), "path", "diagnosis", None))
    build_classification(items, None, tmp_path / "out", "cx", modality="xray", augment=False, val_ratio=0.3,
                         test_ratio=0.3)
    copies = {images[0], *(f"imgs/c{i}.png" for i in range(6))}
    path_of_line = {index + 2: path for index, (path, _) in enumerate(rows)}  # line 1 is the header
    manifest = json.loads((tmp_path / "out" / "cx_build.json").read_text())
    splits = {e["split"] for e in manifest["images"] if path_of_line[int(e["source"].rsplit(" ", 1)[1])] in copies}
    assert len(splits) == 1


def test_a_class_missing_from_a_source_split_is_named(tmp_path, capsys):
    images = _images(tmp_path, 8)
    path = tmp_path / "s.csv"
    rows = [(p, ("normal", "pneumonia")[i % 2], "train" if i < 6 else "test") for i, p in enumerate(images)]
    rows[7] = (rows[7][0], "normal", "test")  # test: normal only
    path.write_text("path,diagnosis,split\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    assert main(["data", "classify", str(path), "--format", "csv", "--image-col", "path", "--label-col",
                 "diagnosis", "--split-col", "split", "--modality", "xray", "--out", str(tmp_path / "o"), "--name",
                 "cx", "--no-augment"]) == 0
    assert "the test split has no image of class(es) 'pneumonia'" in capsys.readouterr().err


def test_an_empty_attok_vocab_is_an_error_not_a_derived_vocabulary():
    from llamafactory_attok.args import parse_attok_dict

    with pytest.raises(AttTokError, match="attok_vocab is empty; give a file, or remove the key"):
        parse_attok_dict({"attok": True, "attok_vocab": ""})


def _predict_inputs(tmp_path: Path) -> tuple[list[str], Path]:
    """`attok predict` arguments over an empty model folder and an empty dataset (refusals come before loading)."""
    data = tmp_path / "d.json"
    data.write_text("[]")
    (tmp_path / "model").mkdir()
    return ["predict", "--model", str(tmp_path / "model"), "--dataset", str(data), "--out",
            str(tmp_path / "p.jsonl")], data


@pytest.mark.parametrize("mode", ["answer", "likelihood"])
def test_predict_refuses_attribute_mode_options_it_would_ignore(tmp_path, capsys, mode):
    """--val-dataset (temperature) and --vocab (token names) act in attribute mode only: given with --mode answer or
    likelihood they would be ignored without a word — refused, naming the option."""
    argv, _ = _predict_inputs(tmp_path)
    (tmp_path / "val.json").write_text("[]")
    (tmp_path / "v.yaml").write_text('"<|x_a|>": a\n')
    for option, value in (("--val-dataset", "val.json"), ("--vocab", "v.yaml")):
        assert main([*argv, "--mode", mode, option, str(tmp_path / value)]) == 2
        assert f"leave {option} out" in capsys.readouterr().err


def test_outputs_never_replace_the_files_a_dataset_folder_is_read_through(tmp_path, capsys):
    """`attok predict --out` / `eval classify --out` onto the folder's dataset_info.json, a build manifest or
    another dataset's file (with --overwrite) would break every later command on the folder: refused."""
    argv, data = _predict_inputs(tmp_path)
    (tmp_path / "dataset_info.json").write_text('{"other": {"file_name": "other.json"}}')
    (tmp_path / "other.json").write_text("[]")
    (tmp_path / "y_build.json").write_text("{}")
    for name, what in (("dataset_info.json", "dataset_info.json"), ("other.json", "the file of dataset other"),
                       ("y_build.json", "a build's manifest")):
        before = (tmp_path / name).read_bytes()
        out = ["--out", str(tmp_path / name), "--overwrite"]
        assert main([*argv[:-2], *out]) == 2 and what in capsys.readouterr().err
        assert main(["eval", "classify", "--predictions", str(data), "--dataset", str(data), *out]) == 2
        assert what in capsys.readouterr().err
        assert main(["eval", "vqa", "--predictions", str(data), "--dataset", str(data), *out]) == 2
        assert what in capsys.readouterr().err and (tmp_path / name).read_bytes() == before
    (tmp_path / "y_build.json").write_text('{"files": ["y_report.json"]}')  # a build's own report
    (tmp_path / "y_report.json").write_text("{}")
    assert main(["eval", "vqa", "--predictions", str(data), "--dataset", str(data), "--out",
                 str(tmp_path / "y_report.json"), "--overwrite"]) == 2
    assert "a file of the build y_build.json lists" in capsys.readouterr().err


def test_outputs_never_go_into_a_model_adapter_or_a_builds_images_folder(tmp_path, capsys):
    """A report over an adapter's adapter_config.json (it stops loading), a report inside a model folder or a build's
    images folder, a dataset built into another build's images folder or a checkpoint: refused, --overwrite or not;
    a report never replaces its runs' own rows or confusion figure."""
    argv, data = _predict_inputs(tmp_path)
    adapter = tmp_path / "saves" / "b"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    metrics = tmp_path / "runs" / "a.metrics.json"
    metrics.parent.mkdir()
    metrics.write_text('{"accuracy": 0.5, "mode": "attribute"}')
    (tmp_path / "runs" / "a.confusion.png").write_bytes(b"png")
    (tmp_path / "runs" / "a.jsonl").write_text("{}\n")
    report = ["eval", "report", "--run", f"attok@1={metrics}", "--overwrite", "--out"]
    assert main([*report, str(adapter / "adapter_config.json")]) == 2
    assert "is a model, adapter or checkpoint folder" in capsys.readouterr().err
    for sibling in ("a.confusion.png", "a.jsonl"):
        assert main([*report, str(tmp_path / "runs" / sibling)]) == 2
        assert "is the same file as --run attok@1's" in capsys.readouterr().err
    assert (tmp_path / "runs" / "a.confusion.png").read_bytes() == b"png"
    assert (tmp_path / "runs" / "a.jsonl").read_text() == "{}\n"
    assert main([*argv[:-2], "--out", str(adapter / "p.jsonl")]) == 2
    assert "is a model, adapter or checkpoint folder" in capsys.readouterr().err
    sample = tmp_path / "sd"
    assert main(["sample-data", str(sample), "--per-class-train", "2", "--per-class-test", "1"]) == 0
    assert main([*report, str(sample / "retina_images" / "report.md")]) == 2
    assert "the images folder of a dataset build (retina_build.json)" in capsys.readouterr().err
    assert main(["sample-data", str(sample / "retina_images"), "--per-class-train", "2", "--per-class-test", "1"]) == 2
    assert "the images folder of a dataset build" in capsys.readouterr().err
    assert main(["sample-data", str(adapter), "--per-class-train", "2", "--per-class-test", "1"]) == 2
    assert not (adapter / "dataset_info.json").exists()


def test_predict_refuses_calibrating_on_the_scored_dataset(tmp_path, capsys):
    argv, data = _predict_inputs(tmp_path)
    assert main([*argv, "--val-dataset", str(data)]) == 2
    assert "the temperature would be fitted on the very samples it scores" in capsys.readouterr().err


def test_an_interrupted_build_resumes_from_its_finished_images_and_ends_as_an_uninterrupted_one(tmp_path, capsys):
    """SIGTERM during a build keeps its finished images (named); a rerun of the same command reuses the ones that
    are still intact (checked by length and digest: a damaged one is written again), as does a rerun after
    SIGKILL; the result is byte for byte an uninterrupted build's, and no staging folder is left."""
    images = _images(tmp_path, 40)
    csv_path = _csv(tmp_path, [(p, ("a", "b")[i % 2]) for i, p in enumerate(images)])
    out = tmp_path / "out"
    script = ("import sys, time\n"
              "from llamafactory_attok.data import classify\n"
              "real = classify.place_task\n"
              "def slow(*a, **k):\n"
              "    result = real(*a, **k); print('writing', flush=True); time.sleep(0.2); return result\n"
              "classify.place_task = slow\n"
              "from llamafactory_attok.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    args = ["data", "classify", str(csv_path), "--format", "csv", "--image-col", "path", "--label-col", "diagnosis",
            "--modality", "xray", "--name", "cx"]
    argv = [sys.executable, "-c", script, *args, "--out", str(out)]
    for sig in ("TERM", "KILL"):
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4):
            assert process.stdout.readline().strip() == "writing"
        getattr(process, sig.lower() if sig == "KILL" else "terminate")()
        _, err = process.communicate(timeout=60)
        left = list(out.glob(".cx.building.*"))
        assert len(left) == 1, left
        if sig == "TERM":
            assert process.returncode == 128 + 15
            assert re.search(r"interrupted; [3-9] finished image\(s\) kept in .*\.cx\.building\.", err), err
        else:
            assert re.search(r"resuming an interrupted build of the same command: [3-9] finished", err), err
    journal = [json.loads(line) for line in (left[0] / ".attok-journal.jsonl").read_text().splitlines()]
    (left[0] / journal[0]["path"]).write_bytes(b"half")  # damaged since: not trusted
    assert main([*args, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"resuming .*: \d+ finished image\(s\) reused .*; 1 changed or incomplete one\(s\) written again",
                     err), err
    assert not list(out.glob(".*.building.*"))
    assert main([*args, "--out", str(tmp_path / "reference")]) == 0

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    built, reference = files(out), files(tmp_path / "reference")
    assert built.keys() == reference.keys()
    assert built == reference


def test_another_build_of_the_folder_removes_an_interrupted_builds_images(tmp_path, capsys):
    csv_path = _csv(tmp_path, [(p, ("a", "b")[i % 2]) for i, p in enumerate(_images(tmp_path))])
    stale = tmp_path / "out" / ".cx.building.0123456789abcdef01234567"
    stale.mkdir(parents=True)
    (stale / ".attok-staging").touch()
    (stale / "x.png").write_bytes(b"x")
    assert _classify(tmp_path, csv_path) == 0
    assert not stale.exists()
    assert "removed 1 staging folder(s) left by an interrupted build" in capsys.readouterr().err


def _built_images(tmp_path: Path, rows: list[tuple[str, str]], *extra: str) -> list[np.ndarray]:
    """Build ``rows`` (image path relative to tmp_path, label) with --no-augment; the written images in row order."""
    csv_path = _csv(tmp_path, rows)
    assert _classify(tmp_path, csv_path, "--image-size", "4", "--test-ratio", "0", "--val-ratio", "0", *extra) == 0
    manifest = json.loads((tmp_path / "out" / "cx_build.json").read_text())
    written = {image["source"]: image["path"] for image in manifest["images"]}
    return [np.asarray(Image.open(tmp_path / "out" / written[str(tmp_path / "labels.csv") + f": line {i + 2}"]))
            for i in range(len(rows))]


def test_high_bit_images_are_scaled_by_the_datasets_maximum_not_their_own(tmp_path, capsys):
    """A 12-bit dataset (16-bit PNGs, max 4095) with one dark scan (max 200): the dark scan stays dark (200 -> 12),
    not brightened to full range on its own; the images that disagree are counted. The same for a uint16 npz."""
    values = [np.full((6, 6), 4095, np.uint16), np.full((6, 6), 200, np.uint16)] * 2
    rows = []
    for i, array in enumerate(values):
        (tmp_path / "imgs").mkdir(exist_ok=True)
        Image.fromarray(array).save(tmp_path / "imgs" / f"{i}.png")  # mode I;16
        rows.append((f"imgs/{i}.png", ("a", "b")[i % 2]))
    written = _built_images(tmp_path, rows)
    assert [int(w.max()) for w in written] == [255, 12, 255, 12]  # 200 * 255 / 4095 = 12.45
    assert "2 image(s) have no value above 255: every image is scaled by the dataset's maximum (4095 -> 255)" \
        in capsys.readouterr().err
    labels = np.array([[0], [1]] * 2)
    np.savez(tmp_path / "x.npz", **{f"{s}_images": np.stack(values) for s in ("train", "val", "test")},
             **{f"{s}_labels": labels for s in ("train", "val", "test")})
    items = list(sources.from_npz(tmp_path / "x.npz"))
    assert [int(np.asarray(item.image).max()) for item in items[:4]] == [255, 12, 255, 12]


def _png16(path: Path, array: np.ndarray, colour: int) -> None:
    """A 16-bit PNG written by hand (Pillow cannot write colour at 16 bits): colour type 2 RGB, 4 grey + alpha,
    6 RGBA; ``array`` H×W×channels of uint16."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = array.shape[:2]
    raw = b"".join(b"\0" + array[y].astype(">u2").tobytes() for y in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize(("colour", "channels", "kind"), [(2, 3, "RGB"), (6, 4, "RGBA"), (4, 2, "grey \\+ alpha")])
def test_a_16_bit_colour_png_is_refused_not_read_from_its_high_byte(tmp_path, capsys, colour, channels, kind):
    """Pillow opens a 16-bit RGB / RGBA / grey+alpha PNG from the high byte of each channel: 12-bit data came out
    nearly black (max 15), and RGB ones were even copied as "8-bit PNGs". Refused naming the CSV line, before
    anything is written; 16-bit greyscale stays supported (the test above)."""
    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(4):
        Image.fromarray(np.full((6, 6, 3), 100 + i, np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
        rows.append((f"imgs/{i}.png", ("a", "b")[i % 2]))
    _png16(tmp_path / "imgs" / "deep.png", np.full((6, 6, channels), 4000, np.uint16), colour)
    with Image.open(tmp_path / "imgs" / "deep.png") as opened:
        assert opened.size == (6, 6)  # a valid PNG Pillow opens without complaint
    rows.append(("imgs/deep.png", "a"))
    assert _classify(tmp_path, _csv(tmp_path, rows), "--image-size", "4") == 2
    assert re.search(rf"labels.csv: line 6: image .*deep.png: a 16-bit {kind} PNG, which Pillow .* reads from the "
                     "high byte", capsys.readouterr().err)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    from llamafactory_attok.data.placement import place_image

    with pytest.raises(AttTokError, match=f"deep: a 16-bit {kind} PNG"):  # a worker's own check, for any caller
        place_image(tmp_path / "imgs" / "deep.png", "deep", tmp_path / "placed", 4, None)
    assert not list(tmp_path.glob("placed*"))


def test_exif_orientation_is_applied_and_transparency_composited_over_black(tmp_path, capsys):
    """A JPEG whose EXIF says "rotate 90°" is written upright (not copied sideways); an RGBA PNG whose transparent
    pixels hold red is composited over black, not shown red; both are counted in warnings."""
    (tmp_path / "imgs").mkdir()
    tall = np.zeros((8, 4, 3), np.uint8)
    tall[:2] = 255  # a white band at the top of a 4-wide, 8-high image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view": the stored pixels are sideways
    Image.fromarray(np.ascontiguousarray(np.rot90(tall))).save(tmp_path / "imgs" / "0.jpg", exif=exif, quality=100)
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere, transparent on the left half
    rgba[:, 3:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "imgs" / "1.png")
    Image.fromarray(tall).save(tmp_path / "imgs" / "2.png")
    Image.fromarray(tall).save(tmp_path / "imgs" / "3.png")
    turned, flat, *_ = _built_images(tmp_path, [("imgs/0.jpg", "a"), ("imgs/1.png", "b"), ("imgs/2.png", "a"),
                                                ("imgs/3.png", "b")])
    assert turned.shape[:2] == (8, 4) and turned[:2].mean() > 200 and turned[4:].mean() < 40  # upright, band on top
    assert flat[:, :3].max() == 0 and (flat[:, 3:, 0] == 255).all()
    err = capsys.readouterr().err
    assert "1 image(s) carry an EXIF orientation: written turned upright" in err
    assert "1 image(s) have an alpha channel or a transparent colour: composited over black" in err


def test_class_map_labels_are_read_as_the_text_written(tmp_path, capsys):
    """YAML 1.1 reads `01:` as the number 1 and `yes:` / `no:` as booleans: a class map's labels, names and
    keywords are the text written, so they match the CSV's labels; a label given twice is refused with its lines."""
    rows = [(p, ("01", "yes")[i % 2]) for i, p in enumerate(_images(tmp_path))]
    class_map = tmp_path / "classes.yaml"
    class_map.write_text("modality: xray\nclasses:\n  01: normal chest\n  yes: pneumonia\n")
    assert _classify(tmp_path, _csv(tmp_path, rows), "--class-map", str(class_map)) == 0, capsys.readouterr().err
    class_map.write_text("modality: xray\nclasses:\n  01: normal chest\n  yes: no\n  01: again\n")
    assert _classify(tmp_path, _csv(tmp_path, rows), "--class-map", str(class_map), "--overwrite") == 2
    assert f"{class_map}: line 5: duplicated class label '01' (first defined on line 3)" in capsys.readouterr().err


# ---- raw or misleading crashes ---------------------------------------------------------------------------------


def test_a_long_name_is_refused_before_the_file_system_does(tmp_path, capsys):
    csv_path = _csv(tmp_path, [(p, ("a", "b")[i % 2]) for i, p in enumerate(_images(tmp_path))])
    assert _classify(tmp_path, csv_path, "--name", "n" * 250) == 2  # the last --name wins
    assert "is 250 characters long; at most 120" in capsys.readouterr().err


def test_a_failed_write_is_named_and_the_output_left_as_it_was(tmp_path, capsys, monkeypatch):
    """A file-size limit or a full disk during the build: the errno named with its cause, no raw traceback."""
    import errno

    from llamafactory_attok.data import classify

    csv_path = _csv(tmp_path, [(p, ("a", "b")[i % 2]) for i, p in enumerate(_images(tmp_path))])

    def too_large(*args, **kwargs):
        raise OSError(errno.EFBIG, "File too large", "x.png")

    monkeypatch.setattr(classify, "place_task", too_large)
    assert _classify(tmp_path, csv_path) == 2
    err = capsys.readouterr().err
    assert "x.png: File too large (EFBIG); a file-size limit (ulimit -f) stopped the write" in err
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".attok")]


def test_csv_wording_bom_folder_dicom_and_wrong_format(tmp_path, capsys):
    images = _images(tmp_path)
    bom = _csv(tmp_path, [(p, ("a", "b")[i % 2]) for i, p in enumerate(images)], name="bom.csv", prefix="\ufeff")
    assert [i.label for i in sources.from_csv(bom, "path", "diagnosis", None)][:2] == ["a", "b"]
    folder = _csv(tmp_path, [("imgs", "a")], name="folder.csv")
    with pytest.raises(AttTokError, match=r"folder.csv: line 2: image 'imgs' is a folder, not an image file"):
        list(sources.from_csv(folder, "path", "diagnosis", None))
    dicom = tmp_path / "scan.dcm"
    dicom.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    from llamafactory_attok.data.images import open_rgb

    with pytest.raises(AttTokError, match="DICOM file, which attok .* does not read: convert it to PNG"):
        open_rgb(dicom, str(dicom))
    with pytest.raises(AttTokError, match="not a .npz archive .*a CSV file\\? use --format csv") as error:
        sources.load_npz(bom)
    assert "allow_pickle" not in str(error.value)


def test_predict_names_swapped_model_and_adapter_folders_and_a_missing_gpu(tmp_path, capsys):
    data = tmp_path / "d.json"
    data.write_text("[]")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")
    out = str(tmp_path / "p.jsonl")
    assert main(["predict", "--model", str(adapter), "--dataset", str(data), "--out", out]) == 2
    assert "--model" in (err := capsys.readouterr().err) and "is a LoRA adapter folder" in err and "--adapter" in err
    assert main(["predict", "--model", str(full), "--adapter", str(full), "--dataset", str(data), "--out", out]) == 2
    assert "is not a LoRA adapter folder (no adapter_config.json); it is a full model" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert main(["predict", "--model", str(full), "--dataset", str(data), "--out", out, "--device", "cuda"]) == 2
        assert "--device cuda: no CUDA GPU is visible here" in capsys.readouterr().err


def test_predict_refuses_an_adapter_on_another_model_type_and_warns_on_other_weights(tmp_path, capsys):
    """An AttTok adapter says which base it was trained on: another model type is refused before anything loads;
    the same type with other weights (a tiny model of another seed) gets a warning."""
    from llamafactory_attok.base_model import weights_fingerprint
    from llamafactory_attok.eval.attribute_classifier import check_adapter_base
    from llamafactory_attok.tiny import build_tiny_model

    base = build_tiny_model(tmp_path / "base", family="qwen2_vl", seed=0)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "attok_config.json").write_text(json.dumps({"model_type": "qwen2_5_vl",
                                                           "base_weights": weights_fingerprint(str(base))}))
    with pytest.raises(AttTokError, match=r"trained on a qwen2_5_vl base model .* is a qwen2_vl: give the base"):
        check_adapter_base(str(base), adapter)
    (adapter / "attok_config.json").write_text(json.dumps({"model_type": "qwen2_vl",
                                                           "base_weights": weights_fingerprint(str(base))}))
    check_adapter_base(str(base), adapter)
    assert "warning" not in capsys.readouterr().err
    other = build_tiny_model(tmp_path / "other", family="qwen2_vl", seed=1)
    check_adapter_base(str(other), adapter)
    assert "holds other weights than the base --adapter" in capsys.readouterr().err


def test_the_base_weights_fingerprint_sees_a_fine_tune_of_one_tensor(tmp_path):
    """Every tensor is sampled: a copy with one projection of one layer fine-tuned (another seed's values) gets
    another fingerprint; the same weights in another folder, the same."""
    import shutil

    from safetensors.torch import load_file, save_file

    from llamafactory_attok.base_model import weights_fingerprint
    from llamafactory_attok.tiny import build_tiny_model

    base = build_tiny_model(tmp_path / "base", family="qwen2_vl", seed=0)
    other = load_file(str(build_tiny_model(tmp_path / "other", family="qwen2_vl", seed=1) / "model.safetensors"))
    shutil.copytree(base, tmp_path / "moved")
    assert weights_fingerprint(str(tmp_path / "moved")) == weights_fingerprint(str(base)) is not None
    shutil.copytree(base, tmp_path / "tuned")
    weights = load_file(str(tmp_path / "tuned" / "model.safetensors"))
    key = next(k for k in sorted(weights) if "layers.1.mlp.gate_proj" in k)
    weights[key] = other[key]
    save_file(weights, str(tmp_path / "tuned" / "model.safetensors"), metadata={"format": "pt"})
    assert weights_fingerprint(str(tmp_path / "tuned")) != weights_fingerprint(str(base))


def test_output_dir_that_is_a_file_is_named(tiny_models, sample_data, tmp_path):
    from conftest import base_args
    from llamafactory.hparams import get_train_args

    target = tmp_path / "out"
    target.write_text("not a folder")
    with pytest.raises(AttTokError, match="output_dir .*out is a file, not a folder"):
        get_train_args(base_args(tiny_models["qwen2_vl"], sample_data, target, attok=True))
    assert target.read_text() == "not a folder"


def test_a_vocabulary_inside_output_dir_is_not_rewritten_by_the_run(tiny_models, sample_data, tmp_path):
    """attok_vocab given as output_dir/attok_vocab.yaml with the user's comment: the run would rewrite it (comment and
    layout lost) — refused before anything is written; the vocabulary exactly as a run writes it passes."""
    import shutil

    from conftest import base_args
    from llamafactory.hparams import get_train_args

    from llamafactory_attok.vocab import load_vocab

    out = tmp_path / "out"
    out.mkdir()
    vocab = out / "attok_vocab.yaml"
    shutil.copy(sample_data / "retina_vocab.yaml", vocab)
    with open(vocab, "a") as handle:
        handle.write("# my precious comment\n")
    mine = vocab.read_bytes()
    with pytest.raises(AttTokError, match=r"attok_vocab .*attok_vocab.yaml lies in output_dir .*comments and layout "
                                          "lost"):
        get_train_args(base_args(tiny_models["qwen2_vl"], sample_data, out, attok=True, attok_vocab=str(vocab)))
    assert vocab.read_bytes() == mine
    vocab.write_text(load_vocab(vocab).to_yaml())
    get_train_args(base_args(tiny_models["qwen2_vl"], sample_data, out, attok=True, attok_vocab=str(vocab)))


def test_a_missing_training_image_names_the_dataset_and_sample(tiny_models, sample_data, tmp_path):
    import shutil

    from conftest import base_args
    from lf_inprocess import run_sft

    data = tmp_path / "data"
    shutil.copytree(sample_data, data)
    rows = json.loads((data / "retina_attok_train.json").read_text())
    missing = rows[3]["images"][0]
    (data / missing).unlink()
    name = re.escape(Path(missing).name)
    with pytest.raises(AttTokError, match=rf"retina_attok_train.json: sample 3: image .*{name}.* does not exist"):
        run_sft(base_args(tiny_models["qwen2_vl"], data, tmp_path / "o", attok=True, max_steps=1))



BAD_REQUESTS = {
    "bad base64": {"image": "data:image/png;base64,!!!not-base64!!!"},
    "base64 of text": {"image": "data:image/png;base64,aGVsbG8gd29ybGQ="},
    "two <image> for one image": {"text": "<image><image>what is this?"},
    "max_tokens -1": {"max_tokens": -1},
    "temperature NaN": {"temperature": float("nan")},
}


def _status_codes(client, image_b64: str) -> dict[str, int]:
    codes = {}
    for name, bad in BAD_REQUESTS.items():
        content = [{"type": "text", "text": bad.get("text", "what is this?")},
                   {"type": "image_url", "image_url": {"url": bad.get("image", image_b64)}}]
        body = {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 4}
        body.update({k: v for k, v in bad.items() if k in ("max_tokens", "temperature")})
        response = client.post("/v1/chat/completions", content=json.dumps(body, allow_nan=True),
                               headers={"Content-Type": "application/json"})
        codes[name] = response.status_code
    return codes


def test_api_bad_requests_get_the_same_answer_for_an_attok_model_as_for_a_vanilla_one(tiny_models,
                                                                                         modality_adapter,
                                                                                         sample_data):
    """`llamafactory-cli api`'s handling of bad requests is LF's own (it decodes images and sampling options before
    anything of AttTok runs): an AttTok model answers each exactly as the vanilla base model does — the plugin
    makes none of them worse. Run in process through LF's FastAPI app."""
    import base64

    from fastapi.testclient import TestClient
    from llamafactory.api.app import create_app
    from llamafactory.chat import ChatModel

    image = sorted((sample_data / "modality_images").glob("*.png"))[0]
    image_b64 = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    codes = {}
    for arm, extra in (("vanilla", {}), ("attok", {"adapter_name_or_path": str(modality_adapter)})):
        chat = ChatModel({"model_name_or_path": str(tiny_models["qwen2_vl"]), "template": "qwen2_vl",
                          "infer_dtype": "float32", **extra})
        with TestClient(create_app(chat), raise_server_exceptions=False) as client:
            codes[arm] = _status_codes(client, image_b64)
    assert codes["attok"] == codes["vanilla"], codes
    assert all(code >= 400 for code in codes["attok"].values()), codes  # none is answered as if it were fine


@pytest.mark.parametrize(("labels", "message"), [
    (("café", "cafe\u0301"), "differ only in case or spacing name one class twice"),  # NFC vs NFD
    (("cat", "c\u200bat"), "contains the invisible character U+200B"),
    (("cat", "\u0441at"), "has letters outside ASCII a-z / 0-9"),  # Cyrillic с
    (("正常", "肺炎"), "the labels cannot become a class map by themselves"),
    (("cat", "line\u2028break"), "contains the invisible character U+2028"),
])
def test_look_alike_and_non_ascii_labels_never_become_silently_different_tokens(tmp_path, capsys, labels, message):
    rows = [(p, labels[i % 2]) for i, p in enumerate(_images(tmp_path))]
    assert _classify(tmp_path, _csv(tmp_path, rows)) == 2
    err = capsys.readouterr().err
    assert message in err and "look like codes" not in err
    assert not (tmp_path / "out" / "cx_open_train.json").exists()


def test_predict_refuses_a_copied_val_split_and_a_malformed_device(tmp_path, capsys):
    argv, _ = _predict_inputs(tmp_path)
    copy = tmp_path / "copy.json"
    copy.write_text("[]")
    assert main([*argv, "--val-dataset", str(copy)]) == 2
    assert "is --dataset (or a copy of it)" in capsys.readouterr().err
    assert main([*argv, "--device", "gpu"]) == 2
    assert "--device 'gpu' is not a torch device" in capsys.readouterr().err


def test_a_local_lf_build_counts_as_its_release(monkeypatch):
    from llamafactory_attok.lf_patches import stack

    monkeypatch.setattr(stack, "lf_version", lambda: "0.9.5+cu121")
    monkeypatch.setattr(stack, "transformers_version", lambda: "5.6.0")
    assert stack.untested() == []


def test_inputs_of_the_wrong_kind_are_named_with_the_right_one(tmp_path, capsys):
    """A folder given as the CSV, a .npz given as --format csv, a tab in a label, a dataset or `attok predict`'s
    rows given to `attok eval classify`, and a report of a metrics file that contradicts itself."""
    from llamafactory_attok.eval.classification import read_predictions
    from llamafactory_attok.eval.report import build_report

    with pytest.raises(AttTokError, match="a folder, not a CSV file; .*--format folder"):
        list(sources.from_csv(tmp_path, "path", "diagnosis", None))
    npz = tmp_path / "x.npz"
    np.savez(npz, a=np.zeros(3))
    with pytest.raises(AttTokError, match=r"a zip archive \(a .npz\?\), not a text file; .*--format npz"):
        list(sources.from_csv(npz, "path", "diagnosis", None))
    rows = [(p, ("a\tb", "c")[i % 2]) for i, p in enumerate(_images(tmp_path))]
    assert _classify(tmp_path, _csv(tmp_path, rows)) == 2
    assert "contains the control character U+0009 (TAB)" in capsys.readouterr().err
    dataset = tmp_path / "d.json"
    dataset.write_text('[{"messages": []}]')
    with pytest.raises(AttTokError, match="a sharegpt dataset .*, not LF's generated_predictions.jsonl"):
        read_predictions(dataset)
    predicted = tmp_path / "p.jsonl"
    predicted.write_text(json.dumps({"id": 0, "label": "a", "prediction": "a", "top_k": [], "probabilities": {}}))
    with pytest.raises(AttTokError, match="rows of `attok predict`"):
        read_predictions(predicted)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"accuracy": 0.99, "confusion": [[1, 4], [0, 0]]}))
    with pytest.raises(AttTokError, match="accuracy 0.99 but its own confusion matrix gives 0.200000"):
        build_report({"a@1": bad}, tmp_path / "r.md")
    bad.write_text(json.dumps({"accuracy": 0.5, "per_class": {"x": {"f1": 0.5, "support": -3}}}))
    with pytest.raises(AttTokError, match=r"per_class\['x'\] support -3 is not a count"):
        build_report({"a@1": bad}, tmp_path / "r.md")


def test_relabel_name_clash_duplicate_header_fifo_and_sizes_are_named(tmp_path, capsys):
    """--relabel over edited files, a --name that collides with --vanilla's prefix, a duplicated CSV header, sizes
    beyond any image, a FIFO as the CSV, a typo'd --augment-target, sample-data over the user's own images folder."""
    import os

    from llamafactory_attok.data.classify import relabel_classification
    from llamafactory_attok.tiny.sample_data import build_retina_sample

    images = _images(tmp_path)
    rows = [(p, ("normal", "pneumonia")[i % 2]) for i, p in enumerate(images)]
    assert _classify(tmp_path, _csv(tmp_path, rows)) == 0
    out = tmp_path / "out"
    vocab = out / "cx_vocab.yaml"
    vocab.write_text(vocab.read_text() + "# my note\n")
    class_map = tmp_path / "cm.yaml"
    class_map.write_text("modality: xray\nclasses:\n  normal: normal chest\n  pneumonia: pneumonia\n")
    with pytest.raises(AttTokError, match=r"cx_vocab.yaml \(edited since the build\): --relabel would rewrite"):
        relabel_classification(class_map, out, "cx")
    assert "# my note" in vocab.read_text()
    relabel_classification(class_map, out, "cx", overwrite=True)  # asked for: replaced
    assert _classify(tmp_path, _csv(tmp_path, rows), "--name", "cx_vanilla") == 2
    assert "ends with '_vanilla', the suffix of --vanilla builds" in capsys.readouterr().err
    dup = tmp_path / "dup.csv"
    dup.write_text("path,diagnosis,diagnosis\n" + "".join(f"{p},{lab},x\n" for p, lab in rows))
    assert _classify(tmp_path, dup) == 2
    assert "column name(s) 'diagnosis' appear more than once in the header" in capsys.readouterr().err
    assert _classify(tmp_path, _csv(tmp_path, rows), "--image-size", "99999999999") == 2
    assert "--image-size 99999999999: must be between 1 and 16384" in capsys.readouterr().err
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    assert _classify(tmp_path, fifo) == 2
    assert "not a regular file (a device or a pipe)" in capsys.readouterr().err
    args = ["--name", "big", "--augment-target", "100000"]
    assert main(["data", "classify", str(_csv(tmp_path, rows)), "--format", "csv", "--image-col", "path",
                 "--label-col", "diagnosis", "--modality", "xray", "--out", str(tmp_path / "o3"), *args]) == 2
    assert "more than 20 per original" in capsys.readouterr().err
    mine = tmp_path / "s" / "retina_images"
    mine.mkdir(parents=True)
    (mine / "train_0000.png").write_bytes(b"mine")
    for overwrite in (False, True):
        with pytest.raises(AttTokError, match="no earlier `attok sample-data` build of 'retina' wrote them"):
            build_retina_sample(tmp_path / "s", per_class_train=1, per_class_test=1, overwrite=overwrite)
    assert (mine / "train_0000.png").read_bytes() == b"mine"


def test_vqa_attributes_never_writes_over_its_report_or_another_builds_files(tmp_path, capsys):
    rows = [(p, ("normal", "pneumonia")[i % 2]) for i, p in enumerate(_images(tmp_path))]
    assert _classify(tmp_path, _csv(tmp_path, rows)) == 0
    out = tmp_path / "out"
    source = tmp_path / "qa.json"
    source.write_text(json.dumps([{"messages": [{"role": "user", "content": "<image>q"},
                                                {"role": "assistant", "content": "yes"}],
                                   "images": ["x.png"], "modality": "CT", "organ": "Lung"}]))
    (out / "Y_report.json").write_text('{"my": "precious"}')
    argv = ["data", "vqa-attributes", str(source), "--out", str(out), "--from-fields", "modality,organ"]
    assert main([*argv, "--name", "Y"]) == 2
    assert "Y_report.json already exist" in capsys.readouterr().err
    assert (out / "Y_report.json").read_text() == '{"my": "precious"}'
    assert main([*argv, "--name", "cx_open_train", "--overwrite"]) == 2
    assert "cx_open_train.json (listed by cx_build.json) belong to another build" in capsys.readouterr().err


def test_files_written_beside_out_are_never_replaced_without_overwrite(tmp_path, capsys):
    """`attok predict`'s metrics / confusion files, `eval classify`'s confusion figure and `eval report`'s curves
    figure are outputs like --out: an existing one (the user's, or another run's) is refused without --overwrite."""
    data = tmp_path / "d.json"
    data.write_text("[]")
    (tmp_path / "model").mkdir()
    (tmp_path / "p.metrics.json").write_text("mine")
    assert main(["predict", "--model", str(tmp_path / "model"), "--dataset", str(data), "--out",
                 str(tmp_path / "p.jsonl")]) == 2
    assert "--out's metrics file" in capsys.readouterr().err and (tmp_path / "p.metrics.json").read_text() == "mine"
    rows = [{"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "a"}],
             "images": ["x.png"], "label": "a"}]
    dataset = tmp_path / "ds.json"
    dataset.write_text(json.dumps(rows))
    predictions = tmp_path / "pred.jsonl"
    predictions.write_text(json.dumps({"predict": "a", "label": "a"}) + "\n")
    (tmp_path / "s.confusion.png").write_text("mine")
    assert main(["eval", "classify", "--predictions", str(predictions), "--dataset", str(dataset), "--out",
                 str(tmp_path / "s.json")]) == 2
    assert "--out's confusion figure" in capsys.readouterr().err
    assert (tmp_path / "s.confusion.png").read_text() == "mine"


def test_a_source_split_without_val_gets_one_carved_from_train_per_class(tmp_path, capsys):
    """A CSV whose split column says only train / test: --val-ratio of each class's training images become val
    (seeded, said on stderr); the test split is the source's; --val-ratio 0 keeps the source's splits."""
    images = _images(tmp_path, 40)
    rows = [(p, ("a", "b")[i % 2]) for i, p in enumerate(images)]
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,diagnosis,split\n" + "".join(f"{p},{label},{'test' if i < 8 else 'train'}\n"
                                                          for i, (p, label) in enumerate(rows)))
    assert _classify(tmp_path, csv_path, "--split-col", "split", "--val-ratio", "0.25") == 0
    assert "the source has no val split: 8 of its training images (0.25 of each class, seeded) became the val split" \
        in capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "cx_build.json").read_text())
    splits = {}
    for image in manifest["images"]:
        splits.setdefault(image["split"], []).append(image["label"])
    assert sorted(splits["val"]) == ["a"] * 4 + ["b"] * 4 and len(splits["test"]) == 8 and len(splits["train"]) == 24
    assert _classify(tmp_path, csv_path, "--split-col", "split", "--val-ratio", "0", "--overwrite") == 0
    assert "became the val split" not in capsys.readouterr().err
    assert not (tmp_path / "out" / "cx_open_val.json").exists()


# ---- images, class maps, columns and folders no model could use -----------------------------------------------


def test_images_no_vision_tower_can_take_are_refused_naming_them(tmp_path, capsys):
    """A 3000×2 strip (aspect ratio 1500:1) and a 1500×10 one that --image-size would raise to 16800×112 pixels."""
    (tmp_path / "imgs").mkdir()
    rows = [(p, ("a", "b")[i % 2]) for i, p in enumerate(_images(tmp_path))]
    for name, size in (("strip.png", (3000, 2)), ("thin.png", (1500, 10))):
        Image.new("RGB", size).save(tmp_path / "imgs" / name)
        csv_path = _csv(tmp_path, [*rows, (f"imgs/{name}", "a")])
        assert _classify(tmp_path, csv_path) == 2
        err = capsys.readouterr().err
        if name == "strip.png":
            assert "imgs/strip.png: an image of 3000×2 pixels (aspect ratio 1500:1)" in err, err
        else:
            assert "gives 16800×112 pixels, beyond 16384; pass --max-size" in err, err
        assert not (tmp_path / "out" / "cx_build.json").exists()


@pytest.mark.parametrize(("classes", "message"), [
    ("  normal: [a, b]\n  pneumonia: pneumonia\n", "class 'normal': give its answer name as text"),
    ("  normal:\n    name: normal chest\n    keywrod: clear lungs\n  pneumonia: pneumonia\n",
     "class 'normal': unknown key `keywrod`; did you mean `keyword`?"),
    ("  normal:\n    name: [normal]\n  pneumonia: pneumonia\n", "class 'normal': `name` must be text, got list"),
])
def test_class_map_values_of_the_wrong_kind_are_refused(tmp_path, capsys, classes, message):
    rows = [(p, ("normal", "pneumonia")[i % 2]) for i, p in enumerate(_images(tmp_path))]
    class_map = tmp_path / "classes.yaml"
    class_map.write_text("modality: xray\nclasses:\n" + classes)
    assert _classify(tmp_path, _csv(tmp_path, rows), "--class-map", str(class_map)) == 2
    assert message in capsys.readouterr().err


def test_a_modality_that_is_not_text_is_refused(tmp_path, capsys):
    rows = [(p, ("normal", "pneumonia")[i % 2]) for i, p in enumerate(_images(tmp_path))]
    class_map = tmp_path / "classes.yaml"
    class_map.write_text("modality: [xray]\nclasses:\n  normal: normal\n  pneumonia: pneumonia\n")
    assert _classify(tmp_path, _csv(tmp_path, rows), "--class-map", str(class_map)) == 2
    assert "`modality:` must be one word or phrase of text" in capsys.readouterr().err


def test_empty_column_options_an_id_column_and_no_training_split_are_refused(tmp_path, capsys):
    images = _images(tmp_path, 12)
    csv_path = _csv(tmp_path, [(p, ("a", "b")[i % 2]) for i, p in enumerate(images)])
    assert _classify(tmp_path, csv_path, "--image-col", "") == 2
    assert "--image-col is empty: name a column of" in capsys.readouterr().err
    assert _classify(tmp_path, csv_path, "--label-col", "path") == 2
    assert "every one of the 12 images has a label of its own" in capsys.readouterr().err
    assert _classify(tmp_path, csv_path, "--val-ratio", "0.5", "--test-ratio", "0.49") == 2
    assert "no image is left for training" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_image_folder_counts_what_it_skips_and_reads_webp_and_gif(tmp_path, capsys):
    root = tmp_path / "if"
    for label in ("normal", "pneumonia"):
        for i in range(3):
            _png(root / label / f"{i}.png", seed=i + 10 * len(label))
    Image.new("RGB", (16, 16), "red").save(root / "normal" / "scan.webp")
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    frames[0].save(root / "pneumonia" / "anim.gif", save_all=True, append_images=frames[1:])
    _png(root / "normal" / "sub" / "deep.png")
    (root / "normal" / "readme.txt").write_text("notes")
    (root / "normal" / "ct.dcm").write_bytes(b"\0" * 128 + b"DICM")
    assert main(["data", "classify", str(root), "--format", "folder", "--modality", "xray", "--out",
                 str(tmp_path / "out"), "--name", "cx", "--no-augment", "--test-ratio", "0.3"]) == 0
    err = capsys.readouterr().err
    assert "skipped 3 entr(ies) that are not images of a class folder it reads" in err
    assert "1 are sub-folders" in err and "1 are DICOM files, which are not read" in err
    assert "1 image(s) have several frames (animated GIF, multi-page TIFF): the first frame" in err
    images = json.loads((tmp_path / "out" / "cx_build.json").read_text())["images"]
    assert len(images) == 8


def test_a_vocabulary_folder_and_a_token_no_answer_carries_are_named(tiny_models, sample_data, tmp_path, caplog,
                                                                    monkeypatch):
    import logging

    from conftest import base_args
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    with pytest.raises(AttTokError, match=rf"attok_vocab: {tmp_path} is a folder; give the vocabulary YAML file"):
        model_args, *_ = get_train_args(base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out",
                                                  attok=True, attok_vocab=str(tmp_path)))
        load_tokenizer(model_args)
    vocab = tmp_path / "v.yaml"
    vocab.write_text((sample_data / "retina_vocab.yaml").read_text() + '"<|fundus_extra|>": extra finding\n')
    model_args, *_ = get_train_args(base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok=True,
                                              attok_vocab=str(vocab)))
    monkeypatch.setattr(logging.getLogger("llamafactory_attok"), "propagate", True)  # its own handler, else
    caplog.set_level("WARNING")
    load_tokenizer(model_args)
    assert f"1 attribute token(s) of {vocab} appear in no training answer: <|fundus_extra|>" in caplog.text


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_cut_short_image_is_named_not_copied(tmp_path, capsys, suffix):
    """A PNG / JPEG cut short (a failed download) would be copied byte for byte and fail only in training: its end
    is checked before copying, and a file without one is decoded, which names it."""
    rows = [(p, ("a", "b")[i % 2]) for i, p in enumerate(_images(tmp_path))]
    whole = tmp_path / f"whole{suffix}"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 140, 3), dtype=np.uint8)).save(whole)
    (tmp_path / "imgs" / f"cut{suffix}").write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    assert _classify(tmp_path, _csv(tmp_path, [*rows, (f"imgs/cut{suffix}", "a")])) == 2
    assert re.search(rf"labels.csv: line 10: image \S*imgs/cut\{suffix}: cannot be read as an image .*truncated",
                     capsys.readouterr().err)


def test_split_folders_as_public_datasets_name_them_and_what_lies_beside_them(tmp_path, capsys):
    """root/{training,validation,Test}/<class>/ are the three splits; an extra folder and a stray file beside them
    are counted, not dropped silently."""
    root = tmp_path / "if"
    for split in ("training", "validation", "Test"):
        for label in ("normal", "pneumonia"):
            for i in range(2):
                _png(root / split / label / f"{i}.png", seed=i + len(label) + len(split))
    _png(root / "extra" / "normal" / "9.png")
    _png(root / "stray.png")
    assert main(["data", "classify", str(root), "--format", "folder", "--modality", "xray", "--out",
                 str(tmp_path / "out"), "--name", "cx", "--no-augment"]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 entr(ies)" in err and "2 lie beside the split / class folders" in err
    splits = [image["split"] for image in json.loads((tmp_path / "out" / "cx_build.json").read_text())["images"]]
    assert sorted(splits) == ["test"] * 4 + ["train"] * 4 + ["val"] * 4
    _png(root / "val" / "normal" / "0.png")
    assert main(["data", "classify", str(root), "--format", "folder", "--modality", "xray", "--out",
                 str(tmp_path / "out2"), "--name", "cx"]) == 2
    assert "folders val, validation all name the val split; keep one" in capsys.readouterr().err


def test_two_classes_with_one_keyword_are_refused_at_build_and_kept_apart_by_predict(tmp_path, capsys):
    """A class map giving two classes one keyword is refused (their keyword entries would start equal); a
    vocabulary that shares a keyword on purpose (one concept, two modalities) keeps its classes apart in predict's
    output, named by token where the keyword is shared."""
    from llamafactory_attok.eval.predict import class_names

    rows = [(p, ("cat", "dog")[i % 2]) for i, p in enumerate(_images(tmp_path))]
    class_map = tmp_path / "classes.yaml"
    class_map.write_text("modality: photo\nclasses:\n  cat:\n    name: cat\n    keyword: animal\n"
                         "  dog:\n    name: dog\n    keyword: ' Animal'\n")
    assert _classify(tmp_path, _csv(tmp_path, rows), "--class-map", str(class_map)) == 2
    assert "classes 'cat' and 'dog' both have the keyword ' Animal'" in capsys.readouterr().err
    vocab = vocab_from_mapping({"<|ct_abdomen|>": "abdomen", "<|mri_abdomen|>": "abdomen", "<|ct_chest|>": "chest"},
                               "v.yaml")
    assert class_names(vocab) == ["<|ct_abdomen|>", "<|mri_abdomen|>", "chest"]


def test_outputs_never_replace_a_dataset_image_nor_join_its_image_folder(tmp_path, capsys):
    """predict / eval classify with --overwrite, or eval figures, pointed at an image the dataset lists (or, for an
    image output, at a folder of its images): refused before anything is read or written."""
    images = tmp_path / "ds" / "imgs"
    image = _png(images / "0.png")
    before = image.read_bytes()
    dataset = tmp_path / "ds" / "test.json"
    dataset.write_text(json.dumps([{"messages": [{"role": "user", "content": "<image>q"},
                                                 {"role": "assistant", "content": "<|xray_a|> a"}],
                                    "images": ["imgs/0.png"]}]))
    (tmp_path / "p.jsonl").write_text("")
    model = str(tmp_path / "m")
    for argv in (["predict", "--model", model, "--dataset", str(dataset), "--out", str(image), "--overwrite"],
                 ["eval", "classify", "--predictions", str(tmp_path / "p.jsonl"), "--dataset", str(dataset), "--out",
                  str(images / "scores.json"), "--overwrite"],
                 ["eval", "figures", "--model", model, "--dataset", str(dataset), "--out-dir", str(images)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert ("an image of --dataset" in err or "a folder of --dataset" in err), err
    assert image.read_bytes() == before and sorted(p.name for p in images.iterdir()) == ["0.png"]


def test_a_missing_npz_label_and_a_validation_split_sharing_test_images_are_refused(tmp_path, capsys):
    """A NaN label would become a class "nan"; the close-ended twin of the test split given as --val-dataset holds
    the test images, so the temperature would be fitted on the images it scores."""
    images = np.zeros((3, 8, 8), np.uint8)
    labels = np.array([[0.0], [1.0], [np.nan]])
    np.savez(tmp_path / "x.npz", **{f"{s}_images": images for s in ("train", "val", "test")},
             **{f"{s}_labels": labels for s in ("train", "val", "test")})
    with pytest.raises(AttTokError, match=r"x.npz: train sample 2: label nan is not a class"):
        list(sources.from_npz(tmp_path / "x.npz"))
    rows = [{"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "<|xray_a|> a"}],
             "images": ["imgs/0.png"]}]
    _png(tmp_path / "imgs" / "0.png")
    (tmp_path / "open_test.json").write_text(json.dumps(rows))
    rows[0]["messages"][0]["content"] = "<image>Which of a, b?"  # the close-ended question: other bytes
    (tmp_path / "close_test.json").write_text(json.dumps(rows))
    assert main(["predict", "--model", str(tmp_path / "m"), "--dataset", str(tmp_path / "open_test.json"),
                 "--val-dataset", str(tmp_path / "close_test.json"), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "shares 1 image(s) with --dataset" in capsys.readouterr().err
