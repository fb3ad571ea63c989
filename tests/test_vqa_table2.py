"""The paper's Table 2 set-up end to end on the tiny model: the SLAKE release (real question files, stand-in
images) -> `attok data slake` -> offline attribute tokens (`--from-fields`) -> `llamafactory-cli train` with AttTok
-> `do_predict` -> `attok eval vqa` under both protocols (judge: the scripted OpenAI-compatible server) ->
`attok eval report` in the Table 2 layout."""

import json

import pytest
from conftest import assert_ok, base_args, run_cli
from lf_inprocess import run_predict, run_sft
from scripted_openai import ScriptedServer, any_judge_reply
from vqa_sources import english_subset, slake_release

from llamafactory_attok.vocab import load_vocab

pytestmark = pytest.mark.slow


def test_slake_build_attributes_train_predict_and_score(tiny_models, tmp_path):
    test = english_subset("test", 100, per_image=2)
    entries = {"train": english_subset("train", 24, per_image=3), "val": english_subset("val", 4),
               "test": [e for e in test if e["answer_type"] == "CLOSED"][:6] +
                       [e for e in test if e["answer_type"] == "OPEN"][:6]}
    source = slake_release(tmp_path / "Slake1.0", entries, size=56)
    data = tmp_path / "data"
    assert_ok(run_cli(["attok", "data", "slake", str(source), "--out", str(data)], cwd=tmp_path))
    assert_ok(run_cli(["attok", "data", "vqa-attributes", str(data / "slake_train.json"), "--out", str(data),
                       "--name", "slake_attok_train", "--from-fields", "modality,location"], cwd=tmp_path))
    vocab = load_vocab(data / "slake_attok_train_vocab.yaml")
    assert len(vocab) >= 2

    model = tiny_models["qwen2_vl"]
    adapter = tmp_path / "attok"
    run_sft(base_args(model, data, adapter, attok=True, attok_vocab=str(data / "slake_attok_train_vocab.yaml"),
                      dataset="slake_attok_train", max_steps=6))  # LF in this process (the CLI is tested elsewhere)
    assert (adapter / "attok_config.json").is_file()

    predict = base_args(model, data, tmp_path / "pred", do_train=False, do_predict=True, predict_with_generate=True,
                        adapter_name_or_path=str(adapter), eval_dataset="slake_test", max_new_tokens=8,
                        do_sample=False, per_device_eval_batch_size=4)
    for key in ("lora_target", "lora_rank"):
        predict.pop(key)
    run_predict(predict)
    predictions = tmp_path / "pred" / "generated_predictions.jsonl"
    assert len(predictions.read_text().splitlines()) == 12

    with ScriptedServer(responder=any_judge_reply) as server:
        scored = run_cli(["attok", "eval", "vqa", "--predictions", str(predictions), "--dataset",
                          str(data / "slake_test.json"), "--out", str(tmp_path / "slake.json"), "--name", "SLAKE",
                          "--judge-base-url", server.url, "--judge-model", "scripted"], cwd=tmp_path)
    assert_ok(scored)
    result = json.loads((tmp_path / "slake.json").read_text())
    test_rows = json.loads((data / "slake_test.json").read_text())
    n_open = sum(r["answer_type"] == "open" for r in test_rows)
    assert result["samples"] == 12 and set(result["protocols"]) == {"paper", "medevalkit"}
    for scores in result["protocols"].values():
        assert scores["counts"]["closed"]["n"] + scores["counts"]["open"]["n"] == 12
        assert 0.0 <= scores["accuracy"] <= 1.0 and scores["judge"] == "scripted" and scores["judge_failures"] == []
        assert sum(v["n"] for v in scores["by_content_type"].values()) == 12
    assert n_open == 6 and result["protocols"]["medevalkit"]["decided_by_judge"] == n_open  # every open one judged
    assert "| paper |" in scored.stdout and "| medevalkit |" in scored.stdout

    assert_ok(run_cli(["attok", "eval", "report", "--vqa", f"attok@1={tmp_path / 'slake.json'}", "--out",
                       str(tmp_path / "report.md")], cwd=tmp_path))
    report = (tmp_path / "report.md").read_text()
    assert "| arm | seeds | SLAKE closed | SLAKE open | SLAKE overall |" in report
    assert "### SLAKE by content_type (overall accuracy %)" in report
