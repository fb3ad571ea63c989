"""bench/gpu_check.py, the prepared GPU check (issue 15), dry-run on the CPU so that it cannot rot unnoticed.

The real run needs a CUDA machine (BENCHMARKS.md §6); here the same script runs end to end at tiny dims (the
published config scaled down), DeepSpeed on one gloo rank, and every check it makes must pass."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"
sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402 - the script is not a package module

# Small enough for a 2-core machine: 112² images (16 visual tokens) instead of 448², 4 steps, 4 test images.
SMALL = ["--image-size", "112", "--steps", "4", "--warmup-steps", "1", "--predict-samples", "4",
         "--predict-batch-size", "2"]


def run_dry(tmp_path, *args: str, timeout: int = 1500) -> tuple[subprocess.CompletedProcess, list[dict], dict]:
    out = tmp_path / "gpu_check"
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *args], cwd=REPO,
                            capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    results = json.loads((out / "results.json").read_text())
    return result, lines, results


def test_published_configs_have_the_published_sizes():
    """The JSON configs in bench/configs build exactly the published models (meta device: no memory)."""
    from transformers import AutoModelForImageTextToText

    from llamafactory_attok.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(family="qwen2_vl")
    expected = {"qwen2_5_vl_7b_config.json": (8_292_166_656, 3584, 152064, False),  # Qwen2.5-VL-7B-Instruct
                "qwen2_vl_2b_config.json": (2_208_985_600, 1536, 151936, True)}  # Qwen2-VL-2B-Instruct
    for name, (params, width, rows, tied) in expected.items():
        config = gpu_check.model_config(gpu_check.CONFIGS / name, tokenizer, tiny=False, dtype="bf16")
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
        assert sum(p.numel() for p in model.parameters()) == params
        assert (config.text_config.hidden_size, config.text_config.vocab_size, config.tie_word_embeddings) == (
            width, rows, tied)
        assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
        tiny = gpu_check.model_config(gpu_check.CONFIGS / name, tokenizer, tiny=True, dtype="fp32")
        assert tiny.model_type == config.model_type and tiny.text_config.hidden_size == 64


def test_budget_exhaustion_is_recorded_not_fatal(tmp_path):
    """With no time left for training, every arm is recorded as skipped, results.json says why, exit 1."""
    result, lines, results = run_dry(tmp_path, "--budget-s", "30", "--stages", "2", *SMALL, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    arms = [ln for ln in lines if "arm" in ln]
    assert [(ln["arm"], ln["status"]) for ln in arms] == [("attok", "skipped"), ("vanilla", "skipped")]
    assert lines[-1]["summary"] and lines[-1]["checks_passed"] is False
    assert {"train attok_z2", "train vanilla_z2"} <= set(lines[-1]["skipped"])
    assert results["model"]["parameters"] == 288_992 and results["model"]["param_dtypes"] == ["torch.float32"]


def assert_arm_passed(line: dict) -> None:
    assert line["status"] == "ok", line.get("error")
    assert line["checks_passed"], line
    assert line["steps_logged"] == 4 and line["losses_finite"] and line["train_finished"] is True
    assert line["median_step_s"] > 0 and line["tokens_per_s"] > 0 and line["steps_timed"] == 3
    assert line["rows_unchanged"] and line["row_hashes"]["embed"]["base"] == line["row_hashes"]["embed"]["trained"]
    assert line["reload_logits_ok"] and line["reload_logits_max_abs_diff"] <= line["reload_tolerance"]
    assert line["reload_rel_diff"] < 1e-4  # fp32: the same numbers after save -> reload through LF's loader
    assert line["peak_memory_bytes"] is None  # GPU-only: null in the dry run
    if line["arm"] == "attok":
        assert line["loss_acm_logged"] and line["saved_attok_state"]
        assert line["attribute_rows"] == 5 and line["attribute_rows_changed_embed"]
        assert line["attribute_rows_changed_head"]
        assert line["step_time_ratio"] > 0 and line["peak_memory_ratio"] is None
        assert "reload_rel_diff_over_vanilla" in line  # None when vanilla's reload is exact (fp32: 0 / 0)
    else:
        assert line["loss_acm_logged"] is None and line["attribute_rows"] == 0


@pytest.mark.slow
def test_dry_run_zero2_both_arms_and_predict(tmp_path):
    """ZeRO-2 (one gloo rank), AttTok and vanilla LoRA through llamafactory-cli's entry point, reload checks,
    attok predict and LF generation: every JSON field present and every check passed."""
    result, lines, results = run_dry(tmp_path, "--stages", "2", *SMALL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    arms = {ln["arm"]: ln for ln in lines if "arm" in ln}
    assert set(arms) == {"attok", "vanilla"} and all(ln["zero_stage"] == 2 for ln in arms.values())
    for line in arms.values():
        assert_arm_passed(line)
    summary = lines[-1]
    assert summary["summary"] and summary["checks_passed"] and summary["skipped"] == []
    predict = summary["predict"]
    assert predict["attok_predict"]["samples"] == 4 and predict["attok_predict"]["samples_per_s"] > 0
    assert predict["lf_generation"]["samples_per_s"] > 0 and predict["attok_predict_over_generation"] > 0
    assert arms["attok"]["one_forward"]["samples_per_s"] > 0
    assert all(p["status"] == "ok" for p in results["phases"]), results["phases"]


@pytest.mark.slow
def test_dry_run_zero3_both_arms(tmp_path):
    """ZeRO-3 partitions embed and head: AttTok LoRA used to stop before step 1 here (the plugin read `.weight` of
    PEFT's trainable-token wrapper, which merges the deltas into the empty partition; now `rows.stored_weight`)."""
    result, lines, _ = run_dry(tmp_path, "--stages", "3", "--skip-predict", *SMALL)
    arms = {ln["arm"]: ln for ln in lines if "arm" in ln}
    for line in arms.values():
        assert_arm_passed(line)
    assert result.returncode == 0


def test_retrieval_scores_on_a_bf16_model(tmp_path):
    """Real checkpoints are bf16 and LF 0.9.5 loads them as saved (`torch_dtype="auto"`; attok predict's
    `infer_dtype: float32` does not cast them): the retrieval read-out must work on a bf16 head. Found by the
    bf16 dry run (`gpu_check.py --dry-run --dtype bf16`): `head(torch.eye(d))` mixed fp32 and bf16."""
    from transformers import AutoModelForImageTextToText

    from llamafactory_attok.eval.attribute_classifier import retrieval_scores
    from llamafactory_attok.tiny import build_tiny_model

    model = AutoModelForImageTextToText.from_pretrained(build_tiny_model(tmp_path / "m", "qwen2_5_vl"),
                                                        dtype=torch.bfloat16)
    hidden = torch.randn(3, model.config.text_config.hidden_size)
    scores = retrieval_scores(model, hidden, [5, 6, 7])
    head = model.get_output_embeddings().weight[[5, 6, 7]].float()
    expected = torch.nn.functional.normalize(hidden, dim=-1) @ torch.nn.functional.normalize(head, dim=-1).T
    assert scores.shape == (3, 3) and torch.allclose(scores, expected, atol=1e-2)
