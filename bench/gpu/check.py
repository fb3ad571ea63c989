"""One prepared GPU check of the whole CUDA path at real dimensions (BENCHMARKS.md §6).

Builds a randomly initialised model from a published config (default: Qwen2.5-VL-7B-Instruct,
``bench/gpu/configs/qwen2_5_vl_7b_config.json``) directly on the GPU in bf16 and saves it; then, for each DeepSpeed
ZeRO stage (2, then 3) trains AttTok and vanilla LoRA r16 (the ``examples/attok_lora.yaml`` /
``examples/vanilla_lora.yaml`` recipes, one GPU) for ``--steps`` optimizer steps on the RetinaMNIST sample in
``data/`` at 448² through LLaMA-Factory's ``run_exp`` (what ``llamafactory-cli train`` runs on one device; a
step probe in its ``callbacks``), each run in a fresh process, and measures per arm:

- median step time and the AttTok / vanilla ratio (goal ≤ 1.05), tokens/s;
- peak GPU memory (``torch.cuda.max_memory_allocated`` over the training loop) and its ratio (goal ≤ 1.05);
- every logged loss finite; ``loss_acm`` logged (AttTok arm);
- every non-attribute row of the input embedding and output head unchanged (SHA-256 against the saved base
  weights, read back through LF's loader and the PEFT wrappers) and, for AttTok, every attribute row changed;
- save → reload: the answer-position logits of the trained model at the end of training equal those of the
  folder reloaded through LF's loader, within bf16 tolerance;
- once, at the end (the first stage's AttTok adapter): ``attok predict --device cuda`` throughput (its own code
  path, ``run_predict``, model loading timed apart), the one-forward classifier it uses timed alone at the run's
  dtype, and LF's batch generation (``do_predict`` + ``predict_with_generate``, ``--max-new-tokens``).

It prints one JSON line per arm and stage (and a final ``summary`` line) and writes ``results.json`` into
``--out`` after every phase, so a run cut short still leaves what it measured. One arm failing is recorded in its
line and the run goes on; ``--budget-s`` skips (and records) phases that no longer fit. Order: build, ZeRO-2 (AttTok,
vanilla, their checks), ZeRO-3 (same), then the inference throughput. One 7B run of everything takes ~17 minutes
on an H200, more than one device session: run ``--stages 2`` and ``--stages 3 --steps 10 --skip-predict`` apart.

``--dry-run`` does the same on the CPU at tiny dimensions (the same config scaled down: LLM width 64, 2 layers,
vision depth 2; vocabulary 1024 rows), fp32 unless ``--dtype bf16``, DeepSpeed on one gloo rank; GPU-only fields
(peak GPU memory and its ratio) are null there. ``tests/test_gpu_check.py`` runs it, so the script cannot rot.

No weights are downloaded: the tokenizer is the offline stand-in of ``llamafactory_attok.tiny`` (a ~400-token
byte-level BPE with Qwen's special tokens), its ids written into the config; the embedding keeps the config's
``vocab_size`` rows (152064 for the 7B), so the attribute tokens fit in spare rows as with the real tokenizer
(151665 tokens). The image processor is pinned to exactly 448² (min = max pixels), so LF training, LF generation
and the one-forward classifier all see 256 visual tokens per image.

    bash bench/gpu/check.sh                        # on the device: install wheelhouse/, then this script
    python bench/gpu/check.py --out outputs/gpu_check [--config bench/gpu/configs/qwen2_vl_2b_config.json]
    python bench/gpu/check.py --dry-run --out /tmp/gpu_check_dry      # or: python -m bench.gpu.check ...

The parts live in :mod:`bench.gpu` (runner, child jobs, probes, model); this module is the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if not __package__:  # run as a script (bench/gpu/check.sh): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gpu.common import ARMS, CONFIGS, DEFAULT_CONFIG, REPO, environment  # noqa: E402
from bench.gpu.model import build_model, model_config  # noqa: E402
from bench.gpu.runner import Executor, Run, predict_subset, run_job  # noqa: E402

__all__ = ["CONFIGS", "main", "model_config", "parse", "run"]


def run(ns: argparse.Namespace, execute: Executor = run_job) -> int:
    """Every phase in order (environment, build, per stage: both arms then their checks, then throughput), each
    child job run by ``execute``; prints the arms' lines and the summary line; 0 when every check passed."""
    ns.out.mkdir(parents=True, exist_ok=True)
    runner = Run(ns, execute)
    with runner.phase("environment") as record:
        runner.results["environment"] = environment(ns.device)
        if ns.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise SystemExit("no CUDA device: run with --dry-run on a CPU machine")
        record["status"] = "ok"
    model_dir = ns.model_dir or (ns.out / "model")
    if ns.model_dir is None or not (model_dir / "config.json").is_file():
        with runner.phase("build model"):
            model_dir.mkdir(parents=True, exist_ok=True)
            runner.results["model"] = build_model(ns.config, model_dir, tiny=ns.dry_run, dtype=ns.dtype,
                                                  device=ns.device, image_size=ns.image_size)
    if not (model_dir / "config.json").is_file():
        print(json.dumps({"summary": True, "error": "no model was built", "results": str(ns.out / "results.json")}))
        return 1
    first_attok = None
    for stage in ns.stages:  # ZeRO-2, then ZeRO-3: both arms, then their reload checks
        lines = [runner.train(arm, stage, model_dir) for arm in ns.arms]
        attok = next((ln for ln in lines if ln["arm"] == "attok" and ln["status"] == "ok"), None)
        throughput = None
        if attok is not None and first_attok is None:  # the one-forward classifier's speed, once, at the run's dtype
            throughput = {"dataset": str(predict_subset(ns)), "batch_size": ns.predict_batch_size}
            first_attok = (stage, attok)
        runner.check(lines, model_dir, throughput)
        runner.finish_stage(lines)
    if first_attok is not None and not ns.skip_predict:  # last: the training checks come first in the budget
        stage, attok = first_attok
        runner.results["predict"] = {"stage": stage, **runner.predict(attok, model_dir)}
        runner.save()
    arms = runner.results["arms"]
    summary = {"summary": True, "mode": runner.results["mode"], "arms_ok": sum(ln["status"] == "ok" for ln in arms),
               "arms_total": len(arms), "checks_passed": bool(arms) and all(ln.get("checks_passed") for ln in arms),
               "predict": runner.results.get("predict"), "elapsed_s": round(time.monotonic() - runner.start, 1),
               "skipped": [p["phase"] for p in runner.results["phases"] if p["status"] == "skipped"],
               "results": str(ns.out / "results.json")}
    runner.results["summary"] = summary
    runner.save()
    print(json.dumps(summary, default=str), flush=True)
    return 0 if summary["checks_passed"] else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the GPU / dry-run defaults filled in and paths made absolute."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny dims (the config scaled down)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="published model config (JSON)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="model folder: reused when it holds config.json, else built there (default <out>/model)")
    parser.add_argument("--mirror", type=Path, default=None, help="also write results.json here after every phase")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 (GPU), fp32 (dry run)")
    parser.add_argument("--device", default=None, help="default: cuda (GPU), cpu (dry run)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per arm (default 20; dry run 6)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="steps left out of the timings (3; dry 2)")
    parser.add_argument("--stages", default="2,3", help="DeepSpeed ZeRO stages, in order; 'none' = no DeepSpeed")
    parser.add_argument("--arms", default="attok,vanilla")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--batch-size", type=int, default=None, help="per-device batch (recipe: 4; dry run 2)")
    parser.add_argument("--grad-accum", type=int, default=None, help="accumulation (recipe: 4; dry run 1)")
    parser.add_argument("--max-samples", type=int, default=None, help="training samples read (default: all 200)")
    parser.add_argument("--predict-samples", type=int, default=None, help="test samples for throughput (64; dry 8)")
    parser.add_argument("--predict-batch-size", type=int, default=None, help="(16; dry run 4)")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="LF generation length")
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument("--budget-s", type=float, default=None, help="total time budget (default 540; dry 900)")
    ns = parser.parse_args(argv)
    dry = ns.dry_run
    ns.dtype = ns.dtype or ("fp32" if dry else "bf16")
    ns.device = ns.device or ("cpu" if dry else "cuda")
    ns.steps = ns.steps or (6 if dry else 20)
    ns.warmup_steps = ns.warmup_steps if ns.warmup_steps is not None else (2 if dry else 3)
    ns.predict_samples = ns.predict_samples or (8 if dry else 64)
    ns.predict_batch_size = ns.predict_batch_size or (4 if dry else 16)
    ns.budget_s = ns.budget_s or (900.0 if dry else 540.0)
    ns.stages = [None if s.strip() == "none" else int(s) for s in ns.stages.split(",")]
    ns.arms = [a.strip() for a in ns.arms.split(",")]
    unknown = [a for a in ns.arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
    ns.out = ns.out.resolve()
    ns.mirror = ns.mirror.resolve() if ns.mirror else None
    ns.model_dir = ns.model_dir.resolve() if ns.model_dir else None
    ns.config = ns.config.resolve()
    return ns


def main(argv: list[str] | None = None) -> int:
    return run(parse(argv))


if __name__ == "__main__":
    sys.exit(main())
