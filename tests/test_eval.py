"""Evaluation: normalisation rules, scores from generated text, one-forward prediction, calibration, report."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_ok, run_cli

from llamafactory_attok.errors import AttTokError
from llamafactory_attok.eval.attribute_classifier import calibrate_temperature
from llamafactory_attok.eval.classification import score_generated
from llamafactory_attok.eval.normalize import normalize, parse_class
from llamafactory_attok.eval.predict import run_predict
from llamafactory_attok.eval.report import build_report

NAMES = [["no DR", "no diabetic retinopathy"], ["mild DR", "mild diabetic retinopathy"],
         ["proliferative DR"], ["diabetic retinopathy"]]


def test_normalisation_strips_tokens_case_and_punctuation():
    assert normalize("<|fundus_mild_dr|> Mild  DR!<|im_end|>") == "mild dr"


@pytest.mark.parametrize(("text", "expected"), [
    ("<|fundus_no_dr|> no DR", 0),
    ("The image shows mild diabetic retinopathy.", 1),  # keyword synonym; longer match beats "diabetic retinopathy"
    ("diabetic retinopathy", 3),
    ("mild DR or proliferative DR", None),  # several classes: unparseable
    ("a healthy retina", None),  # none: unparseable
    ("no drama", None),  # whole words only
])
def test_parse_class(text, expected):
    assert parse_class(text, NAMES) == expected


def _dataset(tmp_path, labels):
    rows = [{"messages": [{"role": "user", "content": "<image>q"},
                          {"role": "assistant", "content": f"<|fundus_{lab.replace(' ', '_').lower()}|> {lab}"}],
             "images": ["x.png"], "label": lab} for lab in labels]
    path = tmp_path / "test.json"
    path.write_text(json.dumps(rows))
    return path, rows


def _predictions(tmp_path, rows, predicts, name="generated_predictions.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"prompt": "p", "predict": p, "label": r["messages"][1]["content"]}) + "\n"
                            for p, r in zip(predicts, rows, strict=True)))
    return path


def test_scores_from_generated_text(tmp_path):
    dataset, rows = _dataset(tmp_path, ["no DR", "mild DR", "mild DR", "no DR"])
    predictions = _predictions(tmp_path, rows, ["no DR", "mild dr.", "no DR and mild DR", "banana"])
    scores = score_generated(predictions, dataset)
    assert scores.accuracy == 0.5 and scores.unparseable == 2 and scores.total == 4
    assert scores.confusion == [[1, 0, 1], [0, 1, 1]]  # last column: unparseable
    assert scores.per_class_f1 == {"no DR": pytest.approx(2 / 3), "mild DR": pytest.approx(2 / 3)}


def test_predictions_from_another_dataset_are_refused(tmp_path):
    dataset, rows = _dataset(tmp_path, ["no DR", "mild DR"])
    other = [{"messages": [{}, {"content": "proliferative DR"}]}, {"messages": [{}, {"content": "no DR"}]}]
    with pytest.raises(AttTokError, match="line 1: reference .* does not match dataset sample 0"):
        score_generated(_predictions(tmp_path, other, ["x", "y"]), dataset)
    with pytest.raises(AttTokError, match="1 predictions for 2 dataset samples"):
        score_generated(_predictions(tmp_path, rows[:1], ["x"], "short.jsonl"), dataset)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(AttTokError, match="empty.jsonl: no predictions"):
        score_generated(tmp_path / "empty.jsonl", dataset)


def test_temperature_calibration_recovers_the_scale():
    generator = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=generator)
    labels = torch.multinomial(torch.softmax(true_logits, -1), 1, generator=generator).squeeze(1)
    assert calibrate_temperature(true_logits * 3.0, labels) == pytest.approx(3.0, rel=0.1)


def test_report_pools_seeds_as_mean_and_std(tmp_path):
    runs = {}
    for arm, values in (("vanilla", (0.5, 0.7)), ("attok", (0.6, 0.6))):
        for seed, value in enumerate(values):
            path = tmp_path / f"{arm}{seed}.json"
            path.write_text(json.dumps({"accuracy": value, "macro_f1": value / 2}))
            runs[f"{arm}@{seed}"] = path
    text = build_report(runs, tmp_path / "report.md")
    assert "| vanilla | generation (eval classify) | 2 | 0.600 ± 0.141 | 0.300 ± 0.071 |" in text
    assert "| attok | generation (eval classify) | 2 | 0.600 ± 0.000 | 0.300 ± 0.000 |" in text
    assert "Protocol:" in text and (tmp_path / "report.md").read_text() == text


def test_report_never_pools_runs_scored_differently_into_one_arm(tmp_path):
    """An attribute-mode and an answer-mode `attok predict`, or a one-forward run and a generation-scored one, under
    one arm name would be averaged as n = 2: refused, naming both; a metric only some runs have shows its own n."""
    files = {}
    for name, extra in (("attribute", {"mode": "attribute", "retrieval_accuracy": 0.5}),
                        ("answer", {"mode": "answer"}), ("generated", {"unparseable": 0}),
                        ("attribute2", {"mode": "attribute"})):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps({"accuracy": 0.5, "macro_f1": 0.4, **extra}))
    for other in ("answer", "generated"):
        with pytest.raises(AttTokError, match=r"--run attok@1 \(one forward \(attribute\)\) and attok@2 .* are "
                                              "scored differently"):
            build_report({"attok@1": files["attribute"], "attok@2": files[other]}, tmp_path / "r.md")
    text = build_report({"attok@1": files["attribute"], "attok@2": files["attribute2"]}, tmp_path / "r.md")
    assert "| attok | one forward (attribute) | 2 | 0.500 ± 0.000 | 0.400 ± 0.000 | 0.500 (n=1) |" in text


@pytest.mark.slow
def test_one_forward_prediction_retrieval_and_likelihood(modality_adapter, tiny_models, sample_data, tmp_path):
    out = modality_adapter
    dataset = str(sample_data / "modality_train.json")
    val = sample_data / "modality_val_subset.json"  # --val-dataset may not be --dataset, a copy, nor share its images
    rows = json.loads((sample_data / "modality_train.json").read_text())[::2]
    for row in rows:  # the same pictures as other files: a stand-in validation split for the calibration
        copy = Path("modality_val_images") / Path(row["images"][0]).name
        (sample_data / copy).parent.mkdir(exist_ok=True)
        shutil.copy(sample_data / row["images"][0], sample_data / copy)
        row["images"] = [str(copy)]
    val.write_text(json.dumps(rows))
    metrics = run_predict(str(tiny_models["qwen2_vl"]), dataset, str(tmp_path / "p.jsonl"), adapter=str(out),
                          val_dataset=str(val), top_k=2, batch_size=5)
    assert metrics["accuracy"] == 1.0 and metrics["temperature"] > 0 and "retrieval_accuracy" in metrics
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and len(rows[0]["top_k"]) == 2
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert json.loads((tmp_path / "p.metrics.json").read_text())["accuracy"] == 1.0
    assert metrics["confusion"] == [[8, 0], [0, 8]]  # rows = truth, columns = prediction, per_class order
    assert (tmp_path / "p.confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a DataLoader worker encoding the next batches changes nothing but the speed
    run_predict(str(tiny_models["qwen2_vl"]), dataset, str(tmp_path / "w.jsonl"), adapter=str(out),
                val_dataset=str(val), top_k=2, batch_size=5, workers=1)
    assert (tmp_path / "w.jsonl").read_text() == (tmp_path / "p.jsonl").read_text()
    vanilla = run_predict(str(tiny_models["qwen2_vl"]), dataset, str(tmp_path / "v.jsonl"), mode="likelihood")
    assert vanilla["samples"] == 16 and 0.0 <= vanilla["accuracy"] <= 1.0
    assert sum(map(sum, vanilla["confusion"])) == 16 and (tmp_path / "v.confusion.png").is_file()
    with pytest.raises(AttTokError, match="no attribute vocabulary"):
        run_predict(str(tiny_models["qwen2_vl"]), dataset, str(tmp_path / "x.jsonl"))


def test_answer_mode_scores_every_class_answer_whole_by_one_rule(modality_adapter, tiny_models, sample_data,
                                                                 tmp_path, capsys):
    """--mode answer: each class's answer as the dataset writes it ("<|tok|> name" here) scored by the probability
    of the whole answer — the attribute token's log-probability plus the name's after it — so AttTok and vanilla
    arms are compared by one rule; a label written with two answers is refused."""
    from llamafactory_attok.eval.attribute_classifier import likelihood_scores, load_model_for_inference, read_samples
    from llamafactory_attok.eval.predict import class_answers

    dataset = sample_data / "modality_train.json"
    samples = read_samples(str(dataset))
    names = list(dict.fromkeys(s.label for s in samples))
    answers = class_answers(samples, names, str(dataset))
    assert all(a.startswith("<|") and a.endswith(n) for a, n in zip(answers, names, strict=True))
    model, _, processor = load_model_for_inference(str(tiny_models["qwen2_vl"]), str(modality_adapter))
    whole = likelihood_scores(model, processor, samples[:4], answers, show_progress=False)
    assert whole.shape == (4, len(names)) and (whole < 0).all()
    metrics = run_predict(str(tiny_models["qwen2_vl"]), str(dataset), str(tmp_path / "a.jsonl"),
                          adapter=str(modality_adapter), mode="answer")
    assert metrics["mode"] == "answer" and metrics["samples"] == 16
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [names.index(r["prediction"]) for r in rows[:4]] == whole.argmax(-1).tolist()
    expected = torch.softmax(whole, dim=-1)
    for row, probs in zip(rows[:4], expected, strict=True):
        assert [row["probabilities"][n] for n in names] == pytest.approx(probs.tolist(), abs=1e-5)
    rows = json.loads(dataset.read_text())
    one_class = [dict(r, images=[str(sample_data / r["images"][0])]) for r in rows if r["label"] == rows[0]["label"]]
    (tmp_path / "one.json").write_text(json.dumps(one_class))
    capsys.readouterr()
    run_predict(str(tiny_models["qwen2_vl"]), str(tmp_path / "one.json"), str(tmp_path / "o.jsonl"),
                adapter=str(modality_adapter), mode="answer")
    assert f"one.json holds 1 of the model's {len(names)} classes: --mode answer chooses among those 1 only" \
        in capsys.readouterr().err
    rows[3]["messages"][1]["content"] = rows[3]["messages"][1]["content"].split(" ", 1)[1]  # the token dropped
    for row in rows:
        row["images"] = [str(sample_data / row["images"][0])]
    (tmp_path / "mixed.json").write_text(json.dumps(rows))
    with pytest.raises(AttTokError, match=r"samples \d+ and 3 have the label .* but the answers .*--mode answer"):
        run_predict(str(tiny_models["qwen2_vl"]), str(tmp_path / "mixed.json"), str(tmp_path / "m.jsonl"),
                    adapter=str(modality_adapter), mode="answer")


def test_an_encoding_error_in_a_dataloader_worker_is_raised_as_itself():
    """Not wrapped in torch's "Caught AttTokError in DataLoader worker process 0" text: it names the sample."""
    from llamafactory_attok.eval.attribute_classifier import Sample, encoded_batches

    class Unfittable:
        def encode(self, example, stop_ids):
            raise AttTokError("the image cannot be fitted")

    samples = [Sample(0, Path("x.png"), "q", None, dataset="d.json")]
    with pytest.raises(AttTokError) as error:
        list(encoded_batches(Unfittable(), samples, set(), batch_size=1, workers=1))
    assert str(error.value) == "d.json: sample 0: the image cannot be fitted"


def test_confusion_png_rows_truth_columns_prediction(tmp_path, monkeypatch):
    """The figure of `attok predict`: class names on both axes, the count in every cell, written atomically."""
    from llamafactory_attok.eval import figures
    from llamafactory_attok.eval.predict import confusion_png

    drawn = {}
    save = figures.save_figure

    def inspect(fig, out, dpi=100):
        axis = fig.axes[0]
        drawn["x"] = [t.get_text() for t in axis.get_xticklabels()]
        drawn["y"] = [t.get_text() for t in axis.get_yticklabels()]
        drawn["cells"] = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in axis.texts}
        drawn["labels"] = (axis.get_ylabel(), axis.get_xlabel())
        return save(fig, out, dpi)

    monkeypatch.setattr(figures, "save_figure", inspect)
    out = tmp_path / "p.confusion.png"
    confusion = confusion_png([0, 0, 0, 1, 2, 2], [0, 1, 1, 1, 2, 0], ["no DR", "mild DR", "severe DR"], out)
    assert confusion == [[1, 2, 0], [0, 1, 0], [1, 0, 1]]
    assert drawn["x"] == drawn["y"] == ["no DR", "mild DR", "severe DR"] and drawn["labels"] == ("true", "predicted")
    assert drawn["cells"] == {(i, j): str(v) for i, row in enumerate(confusion) for j, v in enumerate(row)}
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.confusion.png"]  # no temp file left behind


def test_run_predict_writes_the_confusion_png_next_to_the_metrics(tmp_path, monkeypatch):
    """run_predict's output paths, with the model replaced by fixed class scores (the slow test runs a model)."""
    from PIL import Image

    from llamafactory_attok.eval import predict

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    labels = ["no DR", "no DR", "mild DR", "mild DR"]
    rows = [{"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": lab}],
             "images": ["x.png"], "label": lab} for lab in labels]
    (tmp_path / "test.json").write_text(json.dumps(rows))
    monkeypatch.setattr(predict, "load_model_for_inference", lambda *args, **kwargs: (None, None, None))
    monkeypatch.setattr(predict, "likelihood_scores", lambda *args, **kwargs: torch.tensor(
        [[2.0, 1.0], [1.0, 2.0], [1.0, 2.0], [0.0, 3.0]]))
    metrics = run_predict("unused", str(tmp_path / "test.json"), str(tmp_path / "run.jsonl"), mode="likelihood")
    assert metrics["confusion"] == [[1, 1], [0, 2]]
    assert metrics["per_class"]["mild DR"] == {"precision": pytest.approx(2 / 3), "recall": 1.0,
                                               "f1": pytest.approx(0.8), "support": 2}
    assert json.loads((tmp_path / "run.metrics.json").read_text())["confusion"] == [[1, 1], [0, 2]]
    assert (tmp_path / "run.confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_analysis_figures_and_report_with_curves(modality_adapter, tiny_models, sample_data, tmp_path):
    result = run_cli(["attok", "eval", "figures", "--model", str(tiny_models["qwen2_vl"]), "--adapter",
                      str(modality_adapter), "--dataset", str(sample_data / "modality_train.json"), "--out-dir",
                      str(tmp_path / "figs"), "--batch-size", "4"], cwd=tmp_path)
    assert_ok(result)
    for name in ("tsne.png", "similarity.png", "acc_maps.png"):
        assert (tmp_path / "figs" / name).stat().st_size > 5000
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"accuracy": 1.0}))
    result = run_cli(["attok", "eval", "report", "--run", f"attok@0={metrics}", "--train-dir",
                      f"attok={modality_adapter}", "--out", str(tmp_path / "report.md")], cwd=tmp_path)
    assert_ok(result)
    assert "![report_curves](report_curves.png)" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report_curves.png").is_file()


@pytest.mark.slow
def test_batched_likelihood_equals_one_sequence_at_a_time(tiny_models, sample_data):
    """Left-padded batches of prompt + answer score what each sequence alone scores: the answer's tokens and the
    template's end of turn, after the training prompt LF's template builds."""
    from llamafactory_attok.eval.attribute_classifier import (
        Sample,
        encode_sample,
        likelihood_scores,
        load_model_for_inference,
        prompt_encoder,
        read_samples,
    )
    from llamafactory_attok.lf_data import EncodedPrompt

    model, _, processor = load_model_for_inference(str(tiny_models["qwen2_vl"]))
    samples = read_samples(sample_data / "retina_vanilla_test.json", require_token=False)[:2]
    names = ["mild diabetic retinopathy", "moderate diabetic retinopathy", "no"]  # shared prefix, unequal lengths
    batched = likelihood_scores(model, processor, samples, names)
    encoder = prompt_encoder(processor, "qwen2_vl")
    for i, sample in enumerate(samples):
        for j, name in enumerate(names):
            example = {**sample.example, "_response": [{**sample.example["_response"][0], "content": name}]}
            encoded = encode_sample(encoder, Sample(i, sample.image, "", None, example=example), None)
            assert encoded.answer_ids[: len(processor.tokenizer(name)["input_ids"])] == processor.tokenizer(name)[
                "input_ids"]
            full = EncodedPrompt(encoded.input_ids + encoded.answer_ids, encoded.images)
            with torch.no_grad():
                log_probs = torch.log_softmax(model(**encoder.batch([full], "cpu", model)).logits[0, :-1].float(), -1)
            start = len(encoded.input_ids) - 1
            expected = sum(log_probs[start + k, token].item() for k, token in enumerate(encoded.answer_ids))
            assert batched[i, j].item() == pytest.approx(expected, abs=1e-4)


# --- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "message"), [
    ('{"predict": "no DR", "label": ', r"line 2: invalid JSON: Expecting value"),
    ('{"prompt": "p", "label": "<|fundus_mild_dr|> mild DR"}', r"line 2: a prediction needs the string field\(s\) "
                                                                r"predict \(as in LLaMA-Factory's"),
])
def test_bad_prediction_line_names_file_and_line(tmp_path, capsys, line, message):
    from llamafactory_attok.cli import main

    dataset, rows = _dataset(tmp_path, ["no DR", "mild DR"])
    predictions = _predictions(tmp_path, rows[:1], ["no DR"])
    predictions.write_text(predictions.read_text() + line + "\n")
    with pytest.raises(AttTokError, match=f"generated_predictions.jsonl: {message}"):
        score_generated(predictions, dataset)
    out = tmp_path / "scores.json"
    assert main(["eval", "classify", "--predictions", str(predictions), "--dataset", str(dataset), "--out",
                 str(out)]) == 2
    assert f"{predictions}: {message.split(':')[0]}" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".confusion.png").exists()


def test_dataset_sample_without_messages_names_the_sample(tmp_path):
    dataset, rows = _dataset(tmp_path, ["no DR", "mild DR"])
    predictions = _predictions(tmp_path, rows, ["no DR", "mild DR"])
    dataset.write_text(json.dumps([rows[0], {"images": ["x.png"], "label": "mild DR"}]))
    with pytest.raises(AttTokError, match=r"test.json: sample 1: needs `messages` with a user and an assistant"):
        score_generated(predictions, dataset)


def _image_dataset(tmp_path, images):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    rows = [{"messages": [{"role": "user", "content": "<image>q"},
                          {"role": "assistant", "content": "<|fundus_no_dr|> no DR"}],
             "images": [image], "label": "no DR"} for image in images]
    (tmp_path / "test.json").write_text(json.dumps(rows))
    (tmp_path / "vocab.yaml").write_text('"<|fundus_no_dr|>": no DR\n"<|fundus_mild_dr|>": mild DR\n')
    return tmp_path / "test.json", tmp_path / "vocab.yaml"


def test_predict_skips_missing_images_by_id_and_keeps_rows_scored_before_a_crash(tmp_path, monkeypatch, capsys):
    """A sample whose image is missing is reported by id and skipped with a count; rows are written as they are
    scored, so a crash halfway keeps them (in <out>.partial) instead of losing the run."""
    from llamafactory_attok.eval import predict

    dataset, _ = _image_dataset(tmp_path, ["ok.png", "missing.png", "ok.png", "ok.png"])
    monkeypatch.setattr(predict, "load_model_for_inference", lambda *args, **kwargs: (None, None, None))
    calls = []

    def scores(model, processor, chunk, names, **kwargs):
        calls.append(len(chunk))
        if len(calls) == 2:
            raise RuntimeError("out of memory halfway")
        return torch.zeros(len(chunk), len(names))

    monkeypatch.setattr(predict, "likelihood_scores", scores)
    out = tmp_path / "p.jsonl"
    with pytest.raises(RuntimeError, match="halfway"):
        run_predict("unused", str(dataset), str(out), mode="likelihood", batch_size=2)
    assert f"skipped {dataset}: sample 1: image {tmp_path / 'missing.png'} does not exist" in capsys.readouterr().err
    kept = [json.loads(line) for line in (tmp_path / "p.jsonl.partial").read_text().splitlines()]
    assert [row["id"] for row in kept] == [0, 2] and not out.exists()
    calls.clear()
    monkeypatch.setattr(predict, "likelihood_scores", lambda m, p, chunk, names, **kw: torch.zeros(len(chunk), 1))
    metrics = run_predict("unused", str(dataset), str(out), mode="likelihood", batch_size=2)
    assert metrics["samples"] == 3 and metrics["skipped"] == 1 and metrics["skipped_samples"][0]["id"] == 1
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [0, 2, 3]
    assert not (tmp_path / "p.jsonl.partial").exists()
    assert "p.jsonl.partial: the rows of an interrupted run; this run writes its own" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["MY OWN NOTES\n", '{"id": 0, "label": "a"}\n', '{"id": 0, "la'])
def test_predict_refuses_a_partial_file_that_is_not_its_own_rows(tmp_path, text):
    """``<out>.partial`` is replaced only when it holds an interrupted run's rows (the last may be cut after a
    complete one); anything else — a user's notes, a row of another shape, a lone cut line — needs --overwrite."""
    from llamafactory_attok.eval.predict import check_partial_rows

    partial = tmp_path / "p.jsonl.partial"
    partial.write_text(text)
    with pytest.raises(AttTokError, match="does not hold the rows of an interrupted `attok predict`"):
        check_partial_rows(partial, overwrite=False)
    check_partial_rows(partial, overwrite=True)
    row = '{"id": 0, "label": "a", "prediction": "a", "top_k": [], "probabilities": {}}'
    partial.write_text(row + "\n" + '{"id": 1, "lab')
    check_partial_rows(partial, overwrite=False)


def test_predict_rows_never_write_through_a_hard_linked_partial_file(tmp_path):
    """With --overwrite, a `.partial` that is a hard link to a file of the user's is replaced by a new file, not
    written through (the user's file keeps its bytes)."""
    from llamafactory_attok.eval.predict import _RowWriter

    mine = tmp_path / "target.txt"
    mine.write_text("mine")
    os.link(mine, tmp_path / "p.jsonl.partial")
    writer = _RowWriter(tmp_path / "p.jsonl")
    writer.write([{"id": 0}])
    writer.finish()
    assert mine.read_text() == "mine" and (tmp_path / "p.jsonl").read_text() == '{"id": 0}\n'


def test_predict_refuses_a_template_other_than_the_trained_one(tmp_path):
    from llamafactory_attok.eval.predict import resolve_template, saved_run

    (tmp_path / "attok_config.json").write_text(json.dumps({"args": {}, "token_ids": [1], "template": "qwen2_vl",
                                                            "default_system": "Be brief."}))
    (tmp_path / "attok_vocab.yaml").write_text('"<|fundus_no_dr|>": no DR\n')
    (tmp_path / "attok_state.safetensors").write_bytes(b"")
    assert resolve_template(saved_run(str(tmp_path), None), None) == ("qwen2_vl", "Be brief.")
    with pytest.raises(AttTokError, match="--template gemma3 differs from the template .qwen2_vl. that"):
        resolve_template(saved_run(str(tmp_path), None), "gemma3")
    assert resolve_template(saved_run(str(tmp_path / "nothing"), None), None) == ("qwen2_vl", None)


def test_unreadable_image_names_sample_and_path(tmp_path):
    from llamafactory_attok.eval.attribute_classifier import open_image, read_samples, read_samples_skipping

    dataset, _ = _image_dataset(tmp_path, ["ok.png", "broken.png"])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    message = rf"test.json: sample 1: image {tmp_path / 'broken.png'} cannot be read"
    with pytest.raises(AttTokError, match=message):
        read_samples(dataset)
    samples, skipped = read_samples_skipping(dataset)
    assert open_image(samples[0]).size == (8, 8) and [s["id"] for s in skipped] == [1]


def test_report_run_without_name_is_refused(tmp_path, capsys):
    from llamafactory_attok.cli import main

    assert main(["eval", "report", "--run", "metrics.json", "--out", str(tmp_path / "r.md")]) == 2
    assert "--run 'metrics.json': expected name=value" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()


def test_report_never_writes_into_a_train_dir(tmp_path, capsys):
    """--out (and the curves figure beside it) inside a --train-dir: a checkpoint's trainer_state.json, the training
    log the report reads, or a new file there; refused with or without --overwrite, the folder untouched."""
    from llamafactory_attok.cli import main

    metrics = tmp_path / "runs" / "r1.metrics.json"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps({"accuracy": 0.5}))
    rep = tmp_path / "saves" / "rep"
    (rep / "checkpoint-6").mkdir(parents=True)
    (rep / "checkpoint-6" / "trainer_state.json").write_text('{"global_step": 6}')
    (rep / "trainer_log.jsonl").write_text(json.dumps({"current_steps": 1, "loss_ntp": 1.0, "loss_acm": 0.5}) + "\n")
    before = {p: p.read_bytes() for p in rep.rglob("*") if p.is_file()}
    argv = ["eval", "report", "--run", f"attok@1={metrics}", "--train-dir", f"a={rep}"]
    for out in (rep / "checkpoint-6" / "trainer_state.json", rep / "trainer_log.jsonl", rep / "report.md"):
        for extra in ([], ["--overwrite"]):
            assert main([*argv, "--out", str(out), *extra]) == 2
            assert f"lies inside --train-dir a={rep}" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in rep.rglob("*") if p.is_file()} == before
    assert main([*argv, "--out", str(tmp_path / "report.md")]) == 0
    assert (tmp_path / "report_curves.png").is_file()


def test_eval_outputs_honour_the_umask(tmp_path):
    import os
    import stat

    from llamafactory_attok.cli import main

    dataset, rows = _dataset(tmp_path, ["no DR", "mild DR"])
    predictions = _predictions(tmp_path, rows, ["no DR", "mild DR"])
    out = tmp_path / "scores.json"
    previous = os.umask(0o027)
    try:
        assert main(["eval", "classify", "--predictions", str(predictions), "--dataset", str(dataset), "--out",
                     str(out)]) == 0
    finally:
        os.umask(previous)
    for path in (out, out.with_suffix(".confusion.png")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    assert out.with_suffix(".confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_prints_a_short_summary_not_json(tmp_path):
    """`attok predict` prints accuracy, macro-F1, balanced accuracy, the majority baseline, per-class support /
    precision / recall / F1 and the files it wrote; the JSON stays in the metrics file (or behind --json)."""
    from llamafactory_attok.eval.predict import per_class_metrics, summary_lines

    truth, predicted = [0, 0, 0, 1], [0, 0, 1, 1]
    metrics = {"mode": "attribute", "template": "qwen2_vl", "samples": 4, "skipped": 0, "temperature": 1.0,
               "accuracy": 0.75, "macro_f1": 0.733, "balanced_accuracy": 0.833, "retrieval_accuracy": 0.5,
               "per_class": per_class_metrics(truth, predicted, ["no DR", "mild DR"])}
    text = "\n".join(summary_lines(metrics, tmp_path / "runs" / "x.jsonl"))
    assert "accuracy 0.7500   macro-F1 0.7330   balanced accuracy 0.8330" in text
    assert "always answering 'no DR': accuracy 0.7500, balanced 0.5000" in text
    assert "retrieval accuracy 0.5000 (the attribute token whose output-head row is nearest" in text
    assert "no DR          3      1.000   0.667  0.800" in text
    assert f"wrote {tmp_path / 'runs' / 'x.jsonl'} (one row per image), {tmp_path / 'runs' / 'x.metrics.json'}" in text
    assert "{" not in text and len(text.splitlines()) <= 10


def _metrics_file(path, accuracy, per_class=None, **extra):
    path.write_text(json.dumps({"accuracy": accuracy, "macro_f1": accuracy / 2, **extra,
                                **({"per_class": per_class} if per_class else {})}))
    return path


PER_CLASS = {"no DR": {"precision": 0.8, "recall": 1.0, "f1": 0.889, "support": 6},
             "mild DR": {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 4}}


def test_report_with_one_run_shows_n_and_no_spread_and_every_per_class_column(tmp_path):
    metrics = _metrics_file(tmp_path / "x.metrics.json", 0.8, PER_CLASS, balanced_accuracy=0.75,
                            retrieval_accuracy=0.7)
    (tmp_path / "x.confusion.png").write_bytes(b"png")
    text = build_report({"attok@1": metrics}, tmp_path / "out" / "report.md")
    assert "| arm | scored by | n | accuracy | macro_f1 | balanced_accuracy | retrieval_accuracy |" in text
    table = text.split("| arm | scored by | n |")[1].split("Per class")[0]
    assert "| 1 | 0.800 | 0.400 | 0.750 | 0.700 |" in table and "±" not in table
    # the majority baseline: always "no DR" = 6 of 10; macro-F1 (2·0.6/1.6)/2; balanced 1/2
    assert "| *majority class ('no DR', baseline)* | — | — | 0.600 | 0.375 | 0.500 | — |" in text
    assert "- `retrieval_accuracy`: the attribute token whose output-head row is nearest" in text
    assert "| arm | n | class | support | precision | recall | f1 |" in text
    assert "| attok | 1 | mild DR | 4 | 1.000 | 0.500 | 0.667 |" in text
    assert "- attok@1: [x.confusion.png](../x.confusion.png)" in text


def test_report_refuses_runs_scored_on_different_classes(tmp_path):
    """Two vocabularies' runs would be pooled class by class, each class row counting runs it was not in."""
    first = _metrics_file(tmp_path / "a.metrics.json", 0.8, PER_CLASS)
    other = {**PER_CLASS, "extra finding": next(iter(PER_CLASS.values()))}
    second = _metrics_file(tmp_path / "b.metrics.json", 0.7, other)
    with pytest.raises(AttTokError, match=r"runs attok@1 and attok@2 .* were scored on different classes \(extra "
                                          r"finding in one only\)"):
        build_report({"attok@1": first, "attok@2": second}, tmp_path / "out" / "report.md")


@pytest.mark.parametrize(("content", "message"), [
    ({"accuracy": 1.5}, "accuracy 1.5 is outside [0, 1]"),
    ({"accuracy": "0.8"}, "accuracy is '0.8', not a number"),
    ({"accuracy": 0.8, "unparseable": -1}, "unparseable -1 is not a count"),
    ({"accuracy": True}, "accuracy is True, not a number"),
    ({"accuracy": 0.8, "per_class": {"a": {"f1": "high"}}}, "per_class['a'] must map precision"),
])
def test_report_refuses_metric_files_with_wrong_types_or_ranges(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(AttTokError, match=re.escape(f"bad.json: {message}")):
        build_report({"attok@1": path}, tmp_path / "report.md")
    assert not (tmp_path / "report.md").exists()
