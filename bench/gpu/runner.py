"""The GPU check's parent: phases in order under a time budget, each a child job (:mod:`bench.gpu.jobs`) in a fresh
process, each timed and each failure recorded; ``results.json`` rewritten after every phase and one JSON line
printed per arm and stage, then a ``summary`` line."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
import traceback
from argparse import Namespace
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from llamafactory_attok.data.lf_format import read_jsonl

from .common import (
    ARMS,
    DATA,
    JIEBA_STUB,
    RATIO_GOAL,
    REPO,
    TEMPLATE,
    TEST_SET,
    VOCAB,
    error_line,
    lf_dtype,
    read_json,
    write_json,
)


def recipe(ns: Namespace, arm: str, stage: int | None, model_dir: Path, out: Path) -> dict:
    """The arm's ``examples/`` recipe on the built model, ``ns.steps`` steps, logging every step, no checkpoints."""
    name, dataset = ARMS[arm]
    args = yaml.safe_load((REPO / "examples" / name).read_text())
    pixels = ns.image_size * ns.image_size
    args.update(model_name_or_path=str(model_dir), dataset=dataset, dataset_dir=str(DATA), output_dir=str(out),
                max_steps=ns.steps, logging_steps=1, save_strategy="no", plot_loss=False, report_to="none",
                image_min_pixels=pixels, image_max_pixels=pixels, bf16=ns.dtype == "bf16",
                include_num_input_tokens_seen="non_padding", trust_remote_code=False)
    if arm == "attok":
        args["attok_vocab"] = str(VOCAB)
    if stage is None:
        args.pop("deepspeed", None)
    else:
        args["deepspeed"] = str(REPO / "examples" / "deepspeed" / f"ds_z{stage}.json")
    if not ns.device.startswith("cuda"):
        args["use_cpu"] = True  # HF refuses bf16 on a CPU-only setup without it
    if ns.dry_run:
        args.update(per_device_train_batch_size=ns.batch_size or 2, gradient_accumulation_steps=ns.grad_accum or 1,
                    preprocessing_num_workers=1, dataloader_num_workers=0, cutoff_len=1024)
    else:
        for key, value in (("per_device_train_batch_size", ns.batch_size), ("gradient_accumulation_steps",
                                                                            ns.grad_accum)):
            if value:
                args[key] = value
    if ns.max_samples:
        args["max_samples"] = ns.max_samples
    return args


def generation_recipe(ns: Namespace, model_dir: Path, adapter: Path, out: Path) -> dict:
    """LF's batch generation (``do_predict`` + ``predict_with_generate``) on the first test samples."""
    args = {"model_name_or_path": str(model_dir), "adapter_name_or_path": str(adapter), "finetuning_type": "lora",
            "template": TEMPLATE, "stage": "sft", "do_predict": True, "predict_with_generate": True,
            "dataset_dir": str(DATA), "eval_dataset": "retina_attok_test", "max_samples": ns.predict_samples,
            "cutoff_len": 1024, "max_new_tokens": ns.max_new_tokens,
            "per_device_eval_batch_size": ns.predict_batch_size, "output_dir": str(out), "overwrite_output_dir": True,
            "overwrite_cache": True, "report_to": "none", "preprocessing_num_workers": 1 if ns.dry_run else 16,
            "dataloader_num_workers": 0, "image_min_pixels": ns.image_size ** 2,
            "image_max_pixels": ns.image_size ** 2, "bf16": ns.dtype == "bf16", "do_sample": False}
    if not ns.device.startswith("cuda"):
        args["use_cpu"] = True
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(ns: Namespace, deepspeed: bool) -> dict:
    """Offline, the plugin on, no torchrun relaunch; one DeepSpeed rank (NCCL on CUDA, gloo on CPU) if asked."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("ATTOK_DISABLE", None)
    env.pop("FORCE_TORCHRUN", None)
    if ns.dry_run:  # LF's own version check stays on: the installed stack must be the one LF 0.9.5 pins
        env["CUDA_VISIBLE_DEVICES"] = ""
    if deepspeed:  # one rank, as torchrun --nproc_per_node 1 would set it up
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(free_port()))
    return env


def run_job(ns: Namespace, name: str, job: dict, timeout: float, deepspeed: bool = False) -> tuple[int, float, str]:
    """Write ``<out>/<name>.job.json`` and run it (``python -m bench.gpu.jobs``) in a fresh process, output to
    ``<out>/<name>.log``; (exit code, 124 on timeout; seconds; the log's tail)."""
    job_file = ns.out / f"{name}.job.json"
    write_json(job_file, job)
    log = ns.out / f"{name}.log"
    cmd = [sys.executable, "-m", "bench.gpu.jobs", str(job_file)]
    start = time.perf_counter()
    with open(log, "w") as handle:
        try:
            code = subprocess.run(cmd, cwd=REPO, env=child_env(ns, deepspeed), stdout=handle,
                                  stderr=subprocess.STDOUT, timeout=max(timeout, 1)).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.perf_counter() - start, log.read_text(errors="replace")[-3000:]


# (ns, name, job, timeout, deepspeed) -> (exit code, seconds, log tail): how a child job is run
Executor = Callable[[Namespace, str, dict, float, bool], tuple[int, float, str]]


def failure(code: int, tail: str) -> str:
    return "timeout (budget)" if code == 124 else error_line(tail)


def summarise_training(out: Path, probe: dict, arm: str) -> dict:
    """The arm's line from LF's ``trainer_log.jsonl`` and the step probe: losses, step times, tokens, memory."""
    log = out / "trainer_log.jsonl"
    entries = [row for _, row in read_jsonl(log)] if log.is_file() else []
    steps = [e for e in entries if "loss" in e]
    losses = [v for e in entries for k, v in e.items() if k.startswith("loss")]
    res = {"steps_logged": len(steps),
           "losses_finite": bool(losses) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses),
           "loss_acm_logged": (sum("loss_acm" in e for e in entries) == len(steps)
                               and any("loss_acm" in e for e in entries)) if arm == "attok" else None,
           "first_loss": steps[0]["loss"] if steps else None, "last_loss": steps[-1]["loss"] if steps else None}
    if arm == "attok":
        acm = [e["loss_acm"] for e in entries if "loss_acm" in e]
        res.update(first_loss_acm=acm[0] if acm else None, last_loss_acm=acm[-1] if acm else None)
    if probe.get("compute_s"):
        skip = probe.get("warmup_steps", 0)
        compute, wall, tokens = probe["compute_s"][skip:], probe["wall_s"][skip:], probe["tokens"][skip:]
        res.update(steps_timed=len(compute), warmup_steps_excluded=skip,
                   median_step_s=round(statistics.median(compute), 4),
                   median_step_wall_s=round(statistics.median(wall), 4),
                   tokens_per_step=round(sum(tokens) / len(tokens), 1),
                   tokens_per_s=round(sum(tokens) / sum(compute), 1) if sum(compute) > 0 else None)
    res["train_finished"] = probe.get("finished")  # False: cut short (budget); the figures cover the steps run
    peak = probe.get("peak_memory_bytes")
    res.update(peak_memory_bytes=peak, peak_memory_gib=round(peak / 2**30, 3) if peak else None,
               memory_at_train_begin_bytes=probe.get("memory_at_train_begin_bytes"),
               peak_rss_mib=probe.get("peak_rss_mib"), saved_adapter=(out / "adapter_model.safetensors").is_file())
    if arm == "attok":
        res["saved_attok_state"] = (out / "attok_state.safetensors").is_file()
    return res


def passed(line: dict) -> bool:
    """Every check that applies to the arm passed (speed/memory goals are reported, not part of this)."""
    if line.get("status") != "ok" or "check_error" in line:
        return False
    checks = [line.get("losses_finite"), line.get("rows_unchanged"), line.get("reload_logits_ok"),
              line.get("saved_adapter")]
    if line["arm"] == "attok":
        checks += [line.get("loss_acm_logged"), line.get("saved_attok_state"),
                   line.get("attribute_rows_changed_embed"), line.get("attribute_rows_changed_head")]
    return all(c is True for c in checks)


def compare_arms(lines: list[dict]) -> None:
    """``checks_passed`` per arm; on the AttTok line, its ratios to vanilla and whether the ratio goals are met."""
    by_arm = {ln["arm"]: ln for ln in lines}
    for ln in lines:
        ln["checks_passed"] = passed(ln)
    attok, vanilla = by_arm.get("attok"), by_arm.get("vanilla")
    if not (attok and vanilla):
        return
    for key, ratio_key in (("median_step_s", "step_time_ratio"), ("peak_memory_bytes", "peak_memory_ratio"),
                           ("median_step_wall_s", "step_wall_ratio")):
        a, v = attok.get(key), vanilla.get(key)
        attok[ratio_key] = round(a / v, 4) if a and v else None
    a, v = attok.get("reload_rel_diff"), vanilla.get("reload_rel_diff")
    attok["reload_rel_diff_over_vanilla"] = round(a / v, 3) if a is not None and v else None
    for key in ("step_time_ratio", "peak_memory_ratio"):
        attok[key.replace("ratio", "goal_met")] = attok[key] <= RATIO_GOAL if attok[key] is not None else None


def predict_subset(ns: Namespace) -> Path:
    """The first ``--predict-samples`` test samples, image paths absolute (for attok predict)."""
    subset = ns.out / "predict_subset.json"
    rows = read_json(TEST_SET)[:ns.predict_samples]
    for row in rows:
        row["images"] = [str(DATA / img) for img in row["images"]]
    write_json(subset, rows)
    return subset


class Run:
    """Phases in order, each timed, each failure recorded; results.json rewritten after each."""

    def __init__(self, ns: Namespace, execute: Executor = run_job) -> None:
        self.ns = ns
        self.execute = execute  # run_job: a fresh process per job; the tests run some in their own process
        self.start = time.monotonic()
        self.out: Path = ns.out
        self.results: dict = {"mode": "dry-run" if ns.dry_run else "gpu", "config": str(ns.config),
                              "dtype": ns.dtype, "device": ns.device, "steps": ns.steps, "stages": ns.stages,
                              "image_size": ns.image_size, "budget_s": ns.budget_s, "phases": [], "arms": []}
        self.durations: dict[str, float] = {}  # longest ok phase of each kind: what the next one is expected to take

    def left(self) -> float:
        return self.ns.budget_s - (time.monotonic() - self.start)

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - self.start, 1)
        write_json(self.out / "results.json", self.results)
        if self.ns.mirror is not None:  # e.g. the device runner's $OUT: only small files come back from there
            self.ns.mirror.mkdir(parents=True, exist_ok=True)
            write_json(self.ns.mirror / "results.json", self.results)

    def fits(self, name: str, kind: str, default: float) -> bool:
        """Whether a phase of ``kind`` still fits the budget; if not, it is recorded as skipped."""
        need = self.durations.get(kind, default)
        if self.left() < need:
            self.results["phases"].append({"phase": name, "status": "skipped", "reason":
                                           f"budget: {self.left():.0f} s left, ~{need:.0f} s needed"})
            self.save()
            return False
        return True

    @contextlib.contextmanager
    def phase(self, name: str, kind: str | None = None) -> Iterator[dict]:
        """Record a phase: ``running``, then ``ok`` unless the body set ``failed`` or raised (recorded, not fatal)."""
        record = {"phase": name, "status": "running"}
        self.results["phases"].append(record)
        self.save()
        start = time.monotonic()
        try:
            yield record
            if record["status"] == "running":
                record["status"] = "ok"
        except Exception as err:  # noqa: BLE001 - a phase failure is recorded; the run goes on
            record.update(status="failed", error=f"{type(err).__name__}: {err}",
                          traceback=traceback.format_exc()[-2000:])
        finally:
            record["seconds"] = round(time.monotonic() - start, 2)
            if kind and record["status"] == "ok":
                self.durations[kind] = max(self.durations.get(kind, 0.0), record["seconds"])
            self.save()

    def child(self, name: str, kind: str, job: dict, deepspeed: bool = False) -> tuple[int, float, str]:
        """One child job with what is left of the budget (less 5 s to record it)."""
        return self.execute(self.ns, name, {"kind": kind, **job}, self.left() - 5, deepspeed)

    def train(self, arm: str, stage: int | None, model_dir: Path) -> dict:
        """Train one arm at one ZeRO stage; its JSON line (status, training figures)."""
        ns = self.ns
        tag = f"{arm}_z{stage}" if stage is not None else f"{arm}_nods"
        out = self.out / tag
        line = {"arm": arm, "zero_stage": stage, "deepspeed": stage is not None, "status": "skipped",
                "dtype": ns.dtype, "device": ns.device, "output_dir": str(out)}
        kind = f"train_z{stage}"
        default = 120 if ns.dry_run else 240
        if stage == 3 and "train_z2" in self.durations:  # one-GPU ZeRO-3 gathers every layer: ~2x ZeRO-2 (H200, 7B)
            default = 2 * self.durations["train_z2"]
        if not self.fits(f"train {tag}", kind, default):
            line["error"] = "skipped: time budget"
            return line
        with self.phase(f"train {tag}", kind) as record:
            config = self.out / f"{tag}.yaml"
            config.write_text(yaml.safe_dump(recipe(ns, arm, stage, model_dir, out), sort_keys=False))
            probe = self.out / f"{tag}.probe.json"
            probe.unlink(missing_ok=True)
            code, seconds, tail = self.child(tag, "train", {"config": str(config), "probe": str(probe),
                                                            "model_dir": str(model_dir), "device": ns.device,
                                                            "warmup": ns.warmup_steps}, deepspeed=stage is not None)
            line.update(train_s=round(seconds, 1), exit_code=code)
            line.update(summarise_training(out, read_json(probe, {}), arm))
            line["probe"] = str(probe)
            if code != 0:
                line.update(status="failed", error=failure(code, tail))
                record.update(status="failed", error=line["error"])
            else:
                line["status"] = "ok"
        return line

    def check(self, lines: list[dict], model_dir: Path, throughput: dict | None) -> None:
        """The reload checks of a stage's trained arms, one child; their results merged into the arms' lines."""
        ns = self.ns
        arms = [{"arm": ln["arm"], "stage": ln["zero_stage"], "out": ln["output_dir"], "probe": ln.get("probe", "")}
                for ln in lines if ln["status"] == "ok"]
        if not arms:
            return
        name = "check " + ", ".join(f"{a['arm']}_z{a['stage']}" for a in arms)
        if not self.fits(name, "check", 60 if ns.dry_run else 150):
            for ln in lines:
                ln.setdefault("check_error", "skipped: time budget")
            return
        with self.phase(name, "check") as record:
            stem = f"check_{len(self.results['phases'])}"
            result = self.out / f"{stem}.result.json"
            code, _, tail = self.child(stem, "check", {"model_dir": str(model_dir), "arms": arms,
                                                       "result": str(result), "dtype": ns.dtype,
                                                       "device": ns.device, "throughput": throughput})
            results = read_json(result, {})
            for ln in lines:
                res = results.get(f"{ln['arm']}@{ln['zero_stage']}")
                if res is None:
                    if ln["status"] == "ok":
                        ln["check_error"] = failure(code, tail)
                    continue
                res.pop("traceback", None)
                if "error" in res:
                    ln["check_error"] = res.pop("error")
                ln.update(res)
            if code != 0:
                record.update(status="failed", error=failure(code, tail))

    def attok_predict(self, adapter: Path, model_dir: Path) -> dict:
        """``attok predict`` (as shipped: fp32) on the first test samples, timed."""
        ns = self.ns
        with self.phase("attok predict", "predict") as record:
            result = self.out / "attok_predict.result.json"
            code, seconds, tail = self.child("attok_predict", "predict", {
                "model_dir": str(model_dir), "adapter": str(adapter), "dataset": str(predict_subset(ns)),
                "out": str(self.out / "attok_predict.jsonl"), "result": str(result), "device": ns.device,
                "batch_size": ns.predict_batch_size})
            if result.is_file():
                return {"attok_predict": {**read_json(result), "wall_s": round(seconds, 1)}}
            record.update(status="failed", error=failure(code, tail))
            return {"attok_predict_error": record["error"]}
        return {}  # the phase itself raised: recorded there

    def lf_generation(self, adapter: Path, model_dir: Path) -> dict:
        """LF's batch generation on the same test samples, timed."""
        ns = self.ns
        with self.phase("LF generation", "predict") as record:
            gen_out = self.out / "lf_generation"
            config = self.out / "lf_generation.yaml"
            config.write_text(yaml.safe_dump(generation_recipe(ns, model_dir, adapter, gen_out), sort_keys=False))
            code, seconds, tail = self.child("lf_generation", "lf", {"config": str(config)})
            metrics = read_json(gen_out / "predict_results.json")
            if code == 0 and metrics is not None:
                return {"lf_generation": {
                    "samples": ns.predict_samples, "batch_size": ns.predict_batch_size,
                    "max_new_tokens": ns.max_new_tokens, "wall_s": round(seconds, 1), "dtype": lf_dtype(ns.dtype),
                    "jieba_stubbed": JIEBA_STUB in (self.out / "lf_generation.log").read_text(errors="replace"),
                    "predict_runtime_s": metrics.get("predict_runtime"),
                    "samples_per_s": metrics.get("predict_samples_per_second")}}
            record.update(status="failed", error=failure(code, tail))
            return {"lf_generation_error": record["error"]}
        return {}  # the phase itself raised: recorded there

    def predict(self, attok_line: dict, model_dir: Path) -> dict:
        """attok predict and LF generation on the same test samples, and their speed ratios."""
        adapter = Path(attok_line["output_dir"])
        res: dict = {}
        if self.fits("attok predict", "predict", 60 if self.ns.dry_run else 150):
            res.update(self.attok_predict(adapter, model_dir))
        if self.fits("LF generation", "predict", 60 if self.ns.dry_run else 150):
            res.update(self.lf_generation(adapter, model_dir))
        gen = res.get("lf_generation", {}).get("samples_per_s")
        if gen:
            if res.get("attok_predict", {}).get("samples_per_s"):
                res["attok_predict_over_generation"] = round(res["attok_predict"]["samples_per_s"] / gen, 2)
            one = attok_line.get("one_forward", {}).get("samples_per_s")
            if one:
                res["one_forward_same_dtype_over_generation"] = round(one / gen, 2)
        return res

    def finish_stage(self, lines: list[dict]) -> None:
        compare_arms(lines)
        for ln in lines:
            self.results["arms"].append(ln)
            print(json.dumps(ln, default=str), flush=True)
        self.save()
