"""The bookkeeping of `make bench-science` v2 (BENCHMARKS.md §4), without training: the parity count of what each
arm trained, the tests against hand-computed values, the control rows, the import of a CSV-built dataset, the arms'
recipes and the report."""

import json

import pytest
import torch
from safetensors.torch import save_file

from bench.science.common import ARMS
from bench.science.datasets import Dataset, control_rows, import_dataset, strip_attribute_token, warm_rows
from bench.science.params import changed_elements
from bench.science.report import report
from bench.science.stats import bootstrap_interval, included, mcnemar, replicate_test


def test_changed_elements_counts_per_group_and_new_rows(tmp_path):
    warm, run = tmp_path / "warm", tmp_path / "run"
    warm.mkdir()
    run.mkdir()
    embed, head = torch.randn(4, 3), torch.randn(4, 3)
    layer, tower = torch.randn(3, 3), torch.randn(2, 2)
    save_file({"model.embed_tokens.weight": embed, "lm_head.weight": head, "model.layers.0.mlp.weight": layer,
               "model.norm.weight": torch.ones(3), "visual.blocks.0.weight": tower}, str(warm / "model.safetensors"))
    trained_layer = layer.clone()
    trained_layer[0, :2] += 1.0  # two elements trained
    save_file({"model.embed_tokens.weight": torch.cat([embed, torch.randn(3, 3)]),  # 2 attribute rows + 1 padding
               "lm_head.weight": torch.cat([head, torch.randn(3, 3)]), "model.layers.0.mlp.weight": trained_layer,
               "model.norm.weight": torch.ones(3), "visual.blocks.0.weight": tower}, str(run / "model.safetensors"))
    (run / "attok_vocab.yaml").write_text("<|us_mass|>: mass\n<|us_cyst|>: cyst\n")
    save_file({"param.acc.attok_q.weight": torch.zeros(3, 3), "bank.prototypes": torch.ones(2, 3)},
              str(run / "attok_state.safetensors"))
    groups = changed_elements(warm, run)
    assert groups == {"embed: warm-model rows": [0, 12], "embed: attribute rows (added by AttTok)": [-1, 6],
                      "head: warm-model rows": [0, 12], "head: attribute rows (added by AttTok)": [-1, 6],
                      "LLM layers": [2, 9], "LLM final norm": [0, 3], "vision tower + merger": [0, 4],
                      "AttTok modules (ACC, θ, keyword embeddings)": [-1, 9]}  # EMA prototypes are not parameters


def test_mcnemar_replicate_test_and_bootstrap_against_hand_values():
    # 3 images only the arm gets right, 1 only the baseline: two-sided binomial p = 2 * P(X >= 3 | n=4) = 0.625
    arm, base = [1, 1, 1, 0, 1, 0], [0, 0, 0, 1, 1, 0]
    assert mcnemar(arm, base) == {"b": 3, "c": 1, "delta": pytest.approx(2 / 6), "p": pytest.approx(0.625)}
    assert mcnemar([1, 0], [1, 0])["p"] == 1.0  # no discordant image
    # t = mean / (sd / sqrt(n)) = 0.02 / (0.01 / sqrt(3)) = 3.4641; two-sided p with 2 df = 0.0742
    result = replicate_test([0.01, 0.02, 0.03])
    assert result["t"] == pytest.approx(3.4641, abs=1e-4) and result["p"] == pytest.approx(0.0742, abs=1e-4)
    assert result["low"] == pytest.approx(0.02 - 4.3027 * 0.01 / 3 ** 0.5, abs=1e-4)  # t(0.975, 2) = 4.3027
    assert replicate_test([0.01] * 3)["note"] == "no spread" and replicate_test([0.01] * 3)["p"] is None
    mean, low, high = bootstrap_interval([arm, arm], [base, base])
    assert mean == pytest.approx(2 / 6) and low <= mean <= high
    assert bootstrap_interval([base], [base]) == (0.0, 0.0, 0.0)


def test_inclusion_rule_reads_val_only():
    labels = ["a"] * 7 + ["b"] * 3  # majority 0.7
    assert included([0.74, 0.72], labels)["included"] is True  # +0.03
    assert included([0.72, 0.72], labels)["included"] is False
    assert included([0.57], ["a"] * 54 + ["b"] * 46)["included"] is True  # 0.57 − 0.54 is 0.0299999… in floats


def test_control_rows_are_k_distinct_deciding_tokens():
    from llamafactory_attok.tiny.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(family="qwen2_vl")
    for classes in (["normal", "pneumonia"], ["mild DR", "moderate DR", "no DR", "proliferative DR", "severe DR"]):
        rows = control_rows(tokenizer, classes)
        assert len(set(rows)) == len(classes)
        for name, row in zip(classes, rows, strict=True):
            assert row in tokenizer.encode(name, add_special_tokens=False)


def test_csv_dataset_imports_with_vanilla_rows_and_warm_forms(tmp_path):
    """`--data-dir` takes what `attok data classify --format csv` writes; the user's folder is only read."""
    import numpy as np
    from conftest import run_attok_in_process
    from PIL import Image

    images = tmp_path / "csv" / "images"
    images.mkdir(parents=True)
    lines = ["image,label"]
    for i in range(30):
        Image.fromarray(np.full((28, 28), 40 + 6 * i, dtype=np.uint8)).save(images / f"{i}.png")
        lines.append(f"images/{i}.png,{'cyst' if i % 2 else 'mass'}")
    (tmp_path / "csv" / "scans.csv").write_text("\n".join(lines) + "\n")
    built = tmp_path / "built"
    done = run_attok_in_process(["data", "classify", str(tmp_path / "csv" / "scans.csv"), "--format", "csv",
                                 "--modality", "us", "--out", str(built), "--name", "scans", "--no-augment"], tmp_path)
    assert done.returncode == 0, done.stderr
    before = {p: p.stat().st_mtime_ns for p in built.rglob("*")}
    ds = import_dataset(built, "scans", tmp_path / "exp" / "data")
    assert {p: p.stat().st_mtime_ns for p in built.rglob("*")} == before
    assert ds.classes == ["cyst", "mass"] and set(ds.keyword_class.values()) == {0, 1}
    for split in ("train", "val", "test"):
        attok_rows = json.loads((ds.data / f"scans_attok_{split}.json").read_text())
        vanilla = json.loads((ds.data / f"scans_vanilla_{split}.json").read_text())
        assert [r["messages"][1]["content"] for r in vanilla] == [r["label"] for r in attok_rows]
        assert all(r["images"][0].startswith("/") for r in vanilla)
    info = json.loads((ds.data / "dataset_info.json").read_text())
    assert {"scans_attok_train", "scans_vanilla_test"} <= info.keys()
    forms = {r["messages"][1]["content"] for r in warm_rows(ds, 1)}
    assert forms == {"cyst", "mass", " cyst", " mass"}  # both answer forms, no label read
    with pytest.raises(SystemExit, match="scans2_open_train.json"):
        import_dataset(built, "scans2", tmp_path / "exp2")
    with pytest.raises(ValueError, match="does not start with its attribute token"):
        strip_attribute_token("mass", "<|us_mass|>", "x.json: sample 3")


def test_arms_get_the_same_recipe_apart_from_what_they_add(tmp_path, monkeypatch):
    """The jobs of one (replicate, seed) differ only in the AttTok keys, the control rows and the answers' dataset;
    every LLM layer trains, embed / head / tower / merger stay frozen (freeze tuning)."""
    import bench.science.run as science_run

    seen = {}
    monkeypatch.setattr("llamafactory.train.tuner.run_exp", lambda args, callbacks=None: seen.__setitem__(
        args["output_dir"], (args, callbacks)))
    model = tmp_path / "warm"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": 3}}))
    ds = Dataset(name="p", data=tmp_path, vocab=tmp_path / "v.yaml", classes=["a", "b"], keyword_class={})
    for arm in ("vanilla", "class_rows", "matched", "attok"):
        job = {"model": str(model), "data_dir": str(tmp_path), "datasets": ds.datasets(arm), "attok": ARMS[arm],
               "vocab": "v.yaml", "control_rows": [5, 6] if arm in ("class_rows", "matched") else None,
               "matched": arm == "matched", "gamma": 0.1, "seed": 2, "batch": 32, "lr": 5e-4, "epochs": 3}
        science_run.train(job, tmp_path / arm)
    (vanilla, _), (rows, callbacks), (matched, matched_callbacks), (attok, _) = (
        seen[str(tmp_path / a)] for a in ("vanilla", "class_rows", "matched", "attok"))
    assert {k for k in vanilla.keys() | rows.keys() if vanilla.get(k) != rows.get(k)} == {"output_dir"}
    assert {k for k in vanilla.keys() | matched.keys() if vanilla.get(k) != matched.get(k)} == {"output_dir"}
    assert callbacks[0].token_ids == [5, 6] and type(callbacks[0]).__name__ == "ClassRowsCallback"
    assert type(matched_callbacks[0]).__name__ == "MatchedControlCallback" and matched_callbacks[0].token_ids == [5, 6]
    differ = {k for k in vanilla.keys() | attok.keys() if vanilla.get(k) != attok.get(k)} - {"output_dir"}
    assert differ == {"dataset", "attok", "attok_vocab", "attok_acc", "attok_acm"}
    assert (vanilla["dataset"], attok["dataset"]) == ("p_vanilla_train", "p_attok_train")
    assert vanilla["finetuning_type"] == "freeze" and vanilla["freeze_trainable_layers"] == 3
    assert vanilla["freeze_vision_tower"] and vanilla["freeze_multi_modal_projector"]
    assert vanilla["seed"] == vanilla["data_seed"] == 2


def _run(arm: str, replicate: int, seed: int, one: list[int], gen: list[int], val: float | None = None) -> dict:
    run = {"dataset": "d", "arm": arm, "replicate": replicate, "seed": seed, "changed": {},
           "one_forward": {"test": {"accuracy": sum(one) / len(one), "predicted": one}},
           "generative": {"test": {"accuracy": sum(gen) / len(gen), "predicted": gen, "unparseable": 0}}}
    if val is not None:
        run["one_forward"]["val"] = {"accuracy": val}
    return run


def test_report_pairs_runs_keeps_unfavourable_signs_and_applies_inclusion():
    truth = [1, 1, 1, 1, 0, 0]
    val_labels = ["a"] * 6 + ["b"] * 4
    results = {"datasets": {"d": {"classes": ["a", "b"], "truth": {"test": truth}, "val_labels": val_labels}},
               "towers": [], "warm": [], "repro": [], "runs": []}
    for replicate in (1, 2):
        results["runs"] += [_run("vanilla", replicate, 1, [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0], val=0.7),
                            _run("attok", replicate, 1, [1, 1, 1, 1, 0, 0], [1, 1, 0, 1, 0, 0])]
    text = report(results)
    assert "| d | 0.700 | 0.600 | +0.100 | yes |" in text
    # one forward: +1 image of 6 in both replicates; generative: -1 image of 6
    assert "| attok − vanilla | one forward (answer rule) | 2 | +0.1667 |" in text
    assert "| attok − vanilla | generative | 2 | -0.1667 |" in text
    assert "- d, generative: attok − vanilla = -0.1667" in text
    results["runs"][0]["one_forward"]["val"]["accuracy"] = results["runs"][2]["one_forward"]["val"]["accuracy"] = 0.62
    excluded = report(results)
    assert "not in the headline" in excluded and "## Headline" not in excluded
    # outside the inclusion rule: why, and no comparison, p-value or interval
    assert ("**Excluded: vanilla's val accuracy 0.620 against the val majority 0.600 (margin +0.020; the rule "
            "asks") in excluded
    assert "| attok − vanilla |" not in excluded and "p=" not in excluded


def test_report_shows_balanced_metrics_reference_rows_and_flags_one_class_answers():
    """An arm answering the majority class for every image has accuracy = the majority rate but balanced accuracy
    1/K and macro-F1 of one class: shown beside accuracy, with the constant and chance rows, and flagged."""
    from bench.science.report import balanced_scores, one_class_share

    truth = [1, 1, 1, 1, 0, 0]
    assert balanced_scores([1] * 6, truth, 2) == (0.5, 0.4)  # F1: class 1 = 0.8, class 0 = 0
    assert balanced_scores([1, 1, 1, 0, 0, -1], truth, 2) == (0.625, pytest.approx((6 / 7 + 0.5) / 2))
    assert one_class_share([1, 1, 1, 1, 1, 0]) == 5 / 6
    val_labels = ["a"] * 6 + ["b"] * 4
    results = {"datasets": {"d": {"classes": ["a", "b"], "truth": {"test": truth}, "val_labels": val_labels}},
               "towers": [], "warm": [], "repro": [], "runs": []}
    for replicate in (1, 2):
        results["runs"] += [_run("vanilla", replicate, 1, [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], val=0.7),
                            _run("attok", replicate, 1, [1, 1, 1, 1, 0, 0], [1, 1, 0, 1, 0, 0])]
    for run in results["runs"]:  # accuracy against the truth (``_run`` stores a stand-in)
        for scorer in ("one_forward", "generative"):
            predicted = run[scorer]["test"]["predicted"]
            run[scorer]["test"]["accuracy"] = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    text = report(results)
    assert "| vanilla | 2 | 0.667 ± 0.000 ⚑ 2/2 | 0.500 ± 0.000 | 0.400 ± 0.000 |" in text
    assert "| attok | 2 | 1.000 ± 0.000 | 1.000 ± 0.000 | 1.000 ± 0.000 |" in text
    assert "| always the majority class | — | 0.667 ⚑ | 0.500 | 0.400 |" in text
    assert "| chance (uniform guess, expected) | — | 0.500 | 0.500 | — |" in text


def test_v3_report_states_the_primary_endpoint_first_and_in_the_headline():
    """Version-3 results: the protocol's primary endpoint (generative balanced accuracy, attok − matched) is stated
    at the top, computed per included dataset and repeated in the headline; the accuracy comparisons are labelled
    secondary."""
    truth = [1, 1, 1, 1, 0, 0]
    results = {"version": 3, "datasets": {"d": {"classes": ["a", "b"], "truth": {"test": truth},
                                                "val_labels": ["a"] * 6 + ["b"] * 4}},
               "towers": [], "warm": [], "repro": [], "runs": []}
    for replicate in (1, 2, 3):
        results["runs"] += [_run("vanilla", replicate, 1, [1] * 6, [1] * 6, val=0.7),
                            _run("matched", replicate, 1, [1] * 6, [1, 1, 1, 1, 1, 1]),
                            _run("attok", replicate, 1, [1] * 6, [1, 1, 1, 1, 0, 1 if replicate > 1 else 0])]
    text = report(results)
    assert text.startswith("# Science v3") and "**Primary endpoint** (fixed in the protocol" in text
    # matched: all class 1 -> balanced 0.5; attok: one class-0 image right (0.75) or both (1.0)
    line = "- **d, primary endpoint** — generative balanced accuracy, attok − matched: +0.3333 over 3 run pairs"
    assert text.count(line) == 2 and "Δ per replicate +0.5000, +0.2500, +0.2500" in text
    assert "Secondary comparisons (Δ accuracy):" in text and "| attok − matched | generative | 3 |" in text


def test_out_folder_rules(tmp_path):
    """--out: new, empty or an earlier output (resumed); a foreign folder, the dataset's folder or one around it is
    refused; --overwrite removes only an earlier output."""
    from bench.science.cli import check_out
    from bench.science.experiment import Experiment

    check_out(tmp_path / "new", False, None)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(SystemExit, match="not an output|removes only"):
            check_out(foreign, overwrite, None)
    assert (foreign / "notes.txt").read_text() == "keep"
    with pytest.raises(SystemExit, match="inside --data-dir"):
        check_out(foreign / "out", False, foreign)
    with pytest.raises(SystemExit, match="inside --data-dir"):
        check_out(tmp_path, False, foreign)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "results.json").write_text(json.dumps({"version": 3}))
    check_out(earlier, False, None)
    exp = Experiment(earlier)
    exp.results["datasets"]["d"] = {"sha256": "abc", "recipe": {"lr": 5e-4, "epochs": 3}}
    exp.check_resume("d", "abc", {"lr": 5e-4, "epochs": 3})
    with pytest.raises(SystemExit, match="other data"):
        exp.check_resume("d", "xyz", {"lr": 5e-4, "epochs": 3})
    with pytest.raises(SystemExit, match="--lr / --epochs"):
        exp.check_resume("d", "abc", {"lr": 1e-3, "epochs": 3})
    check_out(earlier, True, None)
    assert not earlier.exists()


def test_class_rows_control_keeps_lf_trainable_layers_and_trains_only_its_rows(tiny_models):
    """The control arm's callback on a real tiny model: LF's trainable layers stay trainable, the two row deltas are
    added, and after a step and the merge only the K rows of embed and head moved (plain modules, as LF saves)."""
    from transformers import AutoModelForImageTextToText

    from bench.science.run import ClassRowsCallback

    model = AutoModelForImageTextToText.from_pretrained(tiny_models["qwen2_vl"])
    for name, param in model.named_parameters():  # what LF's freeze tuning leaves trainable: the LLM layers
        param.requires_grad_(".layers." in name and "visual" not in name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    layers = {n for n, p in model.named_parameters() if p.requires_grad}
    callback = ClassRowsCallback([5, 9])
    callback.on_init_end(None, None, None, model=model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert layers < trainable and len(trainable - layers) == 2
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    ids = torch.tensor([[5, 9, 3, 5]])
    model.model.language_model(input_ids=ids).last_hidden_state.sum().backward()
    model.lm_head(model.model.language_model(input_ids=ids).last_hidden_state).sum().backward()
    optimizer.step()
    callback.on_train_end(None, None, None)
    after = dict(model.named_parameters())
    assert set(after) == set(before)  # plain modules again
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        moved = (after[key] != before[key]).any(-1).nonzero().flatten().tolist()
        assert moved == [5, 9], (key, moved)
    assert any((after[n] != before[n]).any() for n in layers)


def test_inclusion_is_stored_only_when_every_vanilla_run_exists(tmp_path):
    from bench.science.experiment import Experiment

    exp = Experiment(tmp_path / "out")
    exp.results["datasets"]["d"] = {"val_labels": ["a"] * 6 + ["b"] * 4, "truth": {"test": [0, 1]}}
    exp.out.mkdir()
    exp.add("runs", _run("vanilla", 1, 1, [1, 0], [1, 0], val=0.9))
    exp.fix_inclusion(["d"], [1, 2], [1])
    assert "d" not in exp.results["inclusion"]  # replicate 2 missing: nothing fixed yet
    exp.add("runs", _run("vanilla", 2, 1, [1, 0], [1, 0], val=0.6))
    exp.add("runs", _run("vanilla", 2, 1, [1, 0], [1, 0], val=0.62))  # a rerun replaces, never duplicates
    assert len(exp.results["runs"]) == 2
    exp.fix_inclusion(["d"], [1, 2], [1])
    assert exp.results["inclusion"]["d"]["included"] is True and exp.results["inclusion"]["d"]["vanilla_runs"]


@pytest.mark.parametrize("argv, message", [
    (["--data-dir", "x", "--name", "n", "--out", "o", "--datasets", "breast"], "--datasets / --focus"),
    (["--data-dir", "x", "--name", "n"], "needs its own --out"),
    (["--seeds", "1", "--ablation-seeds", "3"], "must be among --seeds"),
    (["--replicates", "0"], "--replicates must be"),
    (["--lr", "0"], "--lr must be > 0"),
])
def test_bad_arguments_are_refused_by_name(argv, message, capsys):
    from bench.science.cli import main

    with pytest.raises(SystemExit):
        main(["run", *argv])
    assert message in capsys.readouterr().err


def test_hierarchical_interval_and_minimum_detectable_effect_against_hand_values():
    """Two replicates with opposite Δ: an interval over replicates and images that straddles 0 and is wider than
    the one holding the runs fixed; the MDE of Δs with sd s over n replicates is (t.975 + t.8) · s / √n."""
    from scipy.stats import t as student

    from bench.science.stats import hierarchical_interval, minimum_detectable_effect

    right = [1] * 50 + [0] * 50
    arms = [right, [0] * 100]
    bases = [[0] * 100, right]  # replicate 1: +0.5; replicate 2: −0.5
    low, high = hierarchical_interval(arms, bases, [1, 2])
    _, fixed_low, fixed_high = bootstrap_interval(arms, bases)
    assert low < -0.3 and high > 0.3 and high - low > fixed_high - fixed_low
    same = hierarchical_interval([right, right], [[0] * 100] * 2, [1, 2])
    assert same[0] == pytest.approx(0.5, abs=0.15) and same[1] == pytest.approx(0.5, abs=0.15)
    deltas = [0.01, 0.03, 0.02]
    expected = (student.ppf(0.975, 2) + student.ppf(0.8, 2)) * 0.01 / 3 ** 0.5
    assert minimum_detectable_effect(deltas) == pytest.approx(expected)
    assert minimum_detectable_effect([0.02, 0.02]) is None and minimum_detectable_effect([0.1]) is None


def test_matched_control_has_attoks_forward_capacity_without_its_semantics(tiny_models, tmp_path):
    """The capacity-matched control on a real tiny model: K class-name rows plus ACC (4·d² elements) over K free
    vectors (K·d) — exactly the elements of AttTok's ACC and keyword entries (θ's d² + d enter no forward pass and
    are reported apart); Eq. 7 by hand on the free vectors; saved, taken off before LF saves, and attached again
    for scoring with the same outputs."""
    from transformers import AutoModelForImageTextToText

    from bench.science.control import STATE_FILE, MatchedControlCallback, load_control, trainable_elements
    from llamafactory_attok.acc import ACCAdapter
    from llamafactory_attok.acm import ACMProjection
    from llamafactory_attok.books import AttributeBooks

    model = AutoModelForImageTextToText.from_pretrained(tiny_models["qwen2_vl"])
    for name, param in model.named_parameters():
        param.requires_grad_(".layers." in name and "visual" not in name)
    layers = {n for n, p in model.named_parameters() if p.requires_grad}
    callback = MatchedControlCallback([5, 9], gamma=0.1, seed=3)
    callback.on_init_end(None, None, None, model=model)
    control = callback.control
    dim, k = model.get_input_embeddings().weight.shape[1], 2
    attok_forward = sum(p.numel() for p in ACCAdapter(dim, 0.1).parameters()) + sum(
        p.numel() for p in AttributeBooks(torch.zeros(k, dim), 0.99).parameters())
    assert trainable_elements(control) == attok_forward == 4 * dim * dim + k * dim
    assert sum(p.numel() for p in ACMProjection(dim).parameters()) == dim * dim + dim  # θ: not matched, reported
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    added = {n for n in trainable - layers if "matched_control" in n}
    assert layers < trainable and len(trainable - layers - added) == 2  # and the two row deltas
    assert added == {f"matched_control.acc.attok_{x}.weight" for x in "qkvo"} | {"matched_control.entries"}
    features = torch.randn(6, dim)
    entries = control.entries[:, 0]
    acc = control.acc
    weights = torch.softmax(acc.attok_q(features) @ acc.attok_k(entries).T / dim ** 0.5, dim=-1)
    expected = features + 0.1 * acc.attok_o(weights @ acc.attok_v(entries))
    torch.testing.assert_close(control(features), expected, atol=1e-5, rtol=1e-5)
    args = type("Args", (), {"output_dir": str(tmp_path / "model")})()
    callback.on_train_end(args, None, None)
    assert not hasattr(model, "matched_control") and (tmp_path / "model" / STATE_FILE).is_file()
    assert not any("matched_control" in n for n, _ in model.named_parameters())
    reloaded = AutoModelForImageTextToText.from_pretrained(tiny_models["qwen2_vl"])
    load_control(reloaded, tmp_path / "model")
    torch.testing.assert_close(reloaded.matched_control(features), expected, atol=1e-5, rtol=1e-5)


def test_balanced_comparison_against_hand_values():
    """Δ balanced accuracy per run pair and replicate by hand; a bootstrap weight counts an image that many times
    (a class without a drawn image leaves the mean); the hierarchical interval lies within what the runs allow."""
    import numpy as np

    from bench.science.stats import balanced_accuracies, balanced_comparison

    truth = [0, 0, 1, 1]
    arms = [[0, 0, 1, 0], [0, 0, 1, 1]]  # balanced accuracy (1 + 0.5) / 2 = 0.75, then 1.0
    bases = [[0, 0, 0, 0], [-1, 0, 0, 0]]  # 0.5, then (0.5 + 0) / 2 = 0.25 (unparseable is wrong)
    got = balanced_accuracies(np.array(arms), np.array(truth), 2)
    assert got.tolist() == [0.75, 1.0]
    assert balanced_accuracies(np.array(arms[:1]), np.array(truth), 2, np.array([2.0, 0, 1, 1])).tolist() == [0.75]
    assert balanced_accuracies(np.array(arms[:1]), np.array(truth), 2, np.array([0.0, 0, 1, 1])).tolist() == [0.5]
    result = balanced_comparison(arms, bases, truth, 2, [1, 2], draws=500)
    assert result["replicate_deltas"] == [0.25, 0.75] and result["mean"] == 0.5
    low, high = result["hierarchical"]
    assert -1 <= low <= 0.5 <= high <= 1 and result["replicate_test"]["n"] == 2 and result["mde"] is not None
