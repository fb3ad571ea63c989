"""bench/gpu/check.py, the prepared GPU check, dry-run on the CPU so that it cannot rot unnoticed.

The real run needs a CUDA machine (BENCHMARKS.md §6); here the same runner runs end to end at tiny dims (the
published config scaled down), DeepSpeed on one gloo rank, and every check it makes must pass. One dry run (ZeRO-2
and ZeRO-3, both arms, the throughput phase) at the smallest sizes is shared by the tests that read it; its child
jobs run in this process (``in_process``), since what they test is the jobs' code, not the process boundary: the
command line as a script and a job in a fresh process are each run for real, once, by the two cheap tests."""

from __future__ import annotations

import gc
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from argparse import Namespace

import pytest
import torch
from conftest import REPO

import bench.gpu.check as gpu_check
from bench.gpu import jobs
from bench.gpu.common import CONFIGS, error_line
from bench.gpu.model import model_config
from bench.gpu.runner import child_env, run_job

pytestmark = pytest.mark.second_stack  # bench code kept from rotting: run by `make test-compat` (CI's second stage)

# The smallest run that still shows every field: 56² images (4 visual tokens), 2 steps of which 1 is timed, the
# 4 training samples those steps read, 2 test images in one batch.
SMALL = ["--image-size", "56", "--steps", "2", "--warmup-steps", "1", "--max-samples", "4", "--predict-samples", "2",
         "--predict-batch-size", "2"]


def in_process(ns: Namespace, name: str, job: dict, timeout: float, deepspeed: bool = False) -> tuple[int, float, str]:
    """``runner.run_job`` without the fresh process: the job runs here, under the environment its child would get
    (one DeepSpeed rank), its traceback (if any) in ``<name>.log``; no timeout but pytest's. What a child's exit
    would discard is discarded: the environment (Accelerate leaves ``ACCELERATE_USE_DEEPSPEED`` set), ``sys.argv``,
    the process group and DeepSpeed's references to it, transformers' DeepSpeed config."""
    from deepspeed.utils import groups
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    saved_env, text, code = dict(os.environ), "", 0
    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", list(sys.argv))  # the training and generation jobs set it, as LF reads it there
        # DeepSpeed JIT-compiles a CPU shared-memory collective at every init (a minute on 2 cores, and again whenever
        # a checkout with other flags shares ~/.cache/torch_extensions); one gloo rank never uses it
        patch.setattr(importlib.import_module("deepspeed.comm.torch"), "build_shm_op", lambda: None)
        try:
            os.environ.clear()
            os.environ.update(child_env(ns, deepspeed))
            jobs.run(job)
        except Exception:  # noqa: BLE001 - a failed job is an exit code and a log, as from a child
            text, code = traceback.format_exc(), 1
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            if torch.distributed.is_initialized():  # LF tears it down itself after a training that ends normally
                torch.distributed.destroy_process_group()
            groups._release_process_group_references()  # as deepspeed.comm.destroy_process_group does after it
            unset_hf_deepspeed_config()
            gc.collect()
    (ns.out / f"{name}.log").write_text(text)
    return code, time.perf_counter() - start, text[-3000:]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[int, dict, dict]:
    """(exit code, {(arm, stage): line}, results.json) of one dry run: ZeRO-2 then ZeRO-3, both arms, throughput."""
    out = tmp_path_factory.mktemp("gpu_check")
    code = gpu_check.run(gpu_check.parse(["--dry-run", "--out", str(out), "--stages", "2,3", *SMALL]), in_process)
    results = json.loads((out / "results.json").read_text())
    return code, {(ln["arm"], ln["zero_stage"]): ln for ln in results["arms"]}, results


def test_published_configs_have_the_published_sizes():
    """The JSON configs in bench/gpu/configs build exactly the published models (meta device: no memory)."""
    from transformers import AutoModelForImageTextToText

    from llamafactory_attok.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(family="qwen2_vl")
    expected = {"qwen2_5_vl_7b_config.json": (8_292_166_656, 3584, 152064, False),  # Qwen2.5-VL-7B-Instruct
                "qwen2_vl_2b_config.json": (2_208_985_600, 1536, 151936, True)}  # Qwen2-VL-2B-Instruct
    for name, (params, width, rows, tied) in expected.items():
        config = model_config(CONFIGS / name, tokenizer, tiny=False, dtype="bf16")
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
        assert sum(p.numel() for p in model.parameters()) == params
        assert (config.text_config.hidden_size, config.text_config.vocab_size, config.tie_word_embeddings) == (
            width, rows, tied)
        assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
        tiny = model_config(CONFIGS / name, tokenizer, tiny=True, dtype="fp32")
        assert tiny.model_type == config.model_type and tiny.text_config.hidden_size == 64


def test_budget_exhaustion_is_recorded_not_fatal(tmp_path):
    """Run as bench/gpu/check.sh runs it (a script): with no time left for training, every arm is recorded as
    skipped in its JSON line, the summary line and results.json say why, exit 1. (The model folder is reused: a
    config.json is all the runner looks for before the skipped phases.)"""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / "gpu_check"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu" / "check.py"), "--dry-run", "--out", str(out),
                             "--model-dir", str(model), "--budget-s", "30", "--stages", "2"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(ln["arm"], ln["status"], ln["error"]) for ln in lines if "arm" in ln] == [
        ("attok", "skipped", "skipped: time budget"), ("vanilla", "skipped", "skipped: time budget")]
    assert lines[-1]["summary"] and lines[-1]["checks_passed"] is False and lines[-1]["predict"] is None
    assert lines[-1]["skipped"] == ["train attok_z2", "train vanilla_z2"]
    results = json.loads((out / "results.json").read_text())
    assert results["summary"] == lines[-1] and results["environment"]["device"] == "cpu"
    assert all(p["reason"].startswith("budget: ") for p in results["phases"] if p["status"] == "skipped")


def test_a_child_job_runs_in_a_fresh_process(tmp_path):
    """``python -m bench.gpu.jobs JOB.json`` in a fresh process: the job file written, the output in the log, a
    failure an exit code whose error line is recorded."""
    ns = Namespace(out=tmp_path, dry_run=True)
    code, _, tail = run_job(ns, "bad", {"kind": "train_everything"}, timeout=120)
    assert code == 1 and json.loads((tmp_path / "bad.job.json").read_text()) == {"kind": "train_everything"}
    assert error_line(tail) == "ValueError: unknown job kind 'train_everything'; one of train, lf, check, predict"
    assert (tmp_path / "bad.log").read_text().endswith(tail)


def assert_arm_passed(line: dict) -> None:
    assert line["status"] == "ok", line.get("error")
    assert line["checks_passed"], line
    assert line["steps_logged"] == 2 and line["losses_finite"] and line["train_finished"] is True
    assert line["median_step_s"] > 0 and line["tokens_per_s"] > 0 and line["steps_timed"] == 1
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
def test_dry_run_zero2_both_arms_and_predict(dry_run):
    """ZeRO-2 (one gloo rank), AttTok and vanilla LoRA through LF's training entry point with the step probe in its
    callbacks, reload checks, attok predict and LF generation: every JSON field present and every check passed."""
    code, arms, results = dry_run
    assert code == 0, results
    assert [(arm, stage) for arm, stage in arms] == [("attok", 2), ("vanilla", 2), ("attok", 3), ("vanilla", 3)]
    for arm in ("attok", "vanilla"):
        assert_arm_passed(arms[arm, 2])
    assert results["model"]["parameters"] == 288_992 and results["model"]["param_dtypes"] == ["torch.float32"]
    summary = results["summary"]
    assert summary["checks_passed"] and summary["skipped"] == [] and summary["arms_ok"] == 4
    predict = summary["predict"]
    assert predict["stage"] == 2 and predict["attok_predict"]["samples"] == 2
    assert predict["attok_predict"]["samples_per_s"] > 0 and predict["attok_predict"]["load_s"] > 0
    assert predict["lf_generation"]["samples_per_s"] > 0 and predict["attok_predict_over_generation"] > 0
    assert arms["attok", 2]["one_forward"]["samples_per_s"] > 0 and "one_forward" not in arms["attok", 3]
    assert all(p["status"] == "ok" for p in results["phases"]), results["phases"]


@pytest.mark.slow
def test_dry_run_zero3_both_arms(dry_run):
    """ZeRO-3 partitions embed and head: AttTok LoRA used to stop before step 1 here (the plugin read `.weight` of
    PEFT's trainable-token wrapper, which merges the deltas into the empty partition; now `rows.stored_weight`)."""
    _, arms, _ = dry_run
    for arm in ("attok", "vanilla"):
        assert_arm_passed(arms[arm, 3])


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
