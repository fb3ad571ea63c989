"""The GPU check's child jobs, one fresh process each: ``python -m bench.gpu.jobs JOB.json``.

The job file is a JSON object whose ``kind`` picks the job; its other keys are that job's arguments:

- ``train`` (``config``, ``probe``, ``model_dir``, ``device``, ``warmup``): LLaMA-Factory training of the recipe
  ``config`` (a YAML file) through ``run_exp``, the function ``llamafactory-cli train`` runs on one device, with a
  :class:`~bench.gpu.probes.StepProbe` passed in its ``callbacks``; the probe's figures go to ``probe``;
- ``lf`` (``config``): LF's batch generation, ``llamafactory-cli train config``;
- ``check`` (``model_dir``, ``arms``, ``result``, ``dtype``, ``device``, ``throughput``): reload checks per arm;
- ``predict`` (``model_dir``, ``adapter``, ``dataset``, ``out``, ``result``, ``device``, ``batch_size``): ``attok
  predict`` timed, its model loading timed apart.

Each function can also be called in-process (the tests do, where a separate process is not what they test).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import (
    JIEBA_STUB,
    REPO,
    TEMPLATE,
    lf_dtype,
    peak_cuda_bytes,
    peak_rss_mib,
    read_json,
    sha256,
    sync,
    write_json,
)


def train(config: str, probe: str, model_dir: str, device: str, warmup: int) -> None:
    """LF training of ``config`` with the step probe in its callbacks (the AttTok / SFT trainer LF builds): what
    ``llamafactory-cli train config`` runs on one device, ``run_exp`` reading the YAML from ``sys.argv``."""
    from llamafactory.train.tuner import run_exp

    from .probes import StepProbe, final_logits

    sys.argv = ["llamafactory-cli", config]  # as LF's launcher leaves it after taking the command
    run_exp(callbacks=[StepProbe(device, warmup, Path(probe), at_end=final_logits(Path(model_dir)))])


def lf(config: str) -> None:
    """LF's batch generation through its CLI. Its text metrics (computed inside ``predict``) segment with jieba, a
    19 MB package the device lacks and that the wheelhouse leaves out; the timing does not depend on the split."""
    import importlib.util
    import types

    if importlib.util.find_spec("jieba") is None:
        stub = types.ModuleType("jieba")
        stub.cut = lambda text, *args, **kwargs: iter(text.split())  # type: ignore[attr-defined]
        sys.modules["jieba"] = stub
        print(JIEBA_STUB, flush=True)
    sys.argv = ["llamafactory-cli", "train", config]  # exactly what the console script runs
    from llamafactory.cli import main

    main()


# ---- reload checks -------------------------------------------------------------------------------------------

def load_for_inference(model_dir: Path, adapter: Path | None, dtype: str) -> tuple[Any, Any]:
    """LF's public loaders (the path of chat/api/predict) at the run's dtype; ``attribute_classifier``'s
    ``load_model_for_inference`` is the same at a fixed ``float32`` (attok predict), which a bf16 run must not use."""
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_model, load_tokenizer

    args = {"model_name_or_path": str(model_dir), "template": TEMPLATE, "infer_dtype": lf_dtype(dtype)}
    if adapter is not None:
        args.update(adapter_name_or_path=str(adapter), finetuning_type="lora")
    model_args, _, finetuning_args, _ = get_infer_args(args)
    modules = load_tokenizer(model_args)
    return load_model(modules["tokenizer"], model_args, finetuning_args, is_trainable=False), modules["processor"]


def base_rows(model_dir: Path) -> tuple[Any, Any]:
    """(embed, head) weights of the saved base model, read straight from its safetensors."""
    from safetensors import safe_open

    embed = head = None
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                if key.endswith("embed_tokens.weight") and "visual" not in key:
                    embed = handle.get_tensor(key)
                elif key.endswith("lm_head.weight"):
                    head = handle.get_tensor(key)
    return embed, (head if head is not None else embed)


def row_checks(model: Any, model_dir: Path, attribute: list[int]) -> dict:
    """Every non-attribute row of embed and head (as the model uses them, through PEFT's wrappers) bit-identical to
    the saved base weights (SHA-256 of both sides); with attribute rows, each of them changed."""
    import torch

    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    from lf_inprocess import effective_rows  # the tests' reading of the rows a PEFT model really uses (as fp32)

    base = base_rows(model_dir)
    now = effective_rows(model)
    keep = torch.ones(now[0].shape[0], dtype=torch.bool)
    keep[attribute] = False
    res: dict[str, Any] = {"rows_checked": int(keep.sum()), "attribute_rows": len(attribute)}
    hashes = {}
    for name, trained, before in zip(("embed", "head"), now, base, strict=True):
        before = before.to(trained.dtype)
        hashes[name] = {"base": sha256(before[keep]), "trained": sha256(trained[keep])}
        if attribute:
            res[f"attribute_rows_changed_{name}"] = all(not torch.equal(trained[i], before[i]) for i in attribute)
    res.update(row_hashes=hashes, rows_unchanged=all(h["base"] == h["trained"] for h in hashes.values()))
    return res


def reload_checks(model: Any, model_dir: Path, probe: dict, attribute: list[int], dtype: str, device: str) -> dict:
    """Answer-position logits of the reloaded model against those recorded at the end of training."""
    import torch

    from .probes import answer_logits

    if "answer_logits" not in probe:
        return {"reload_logits_ok": False,
                "reload_error": probe.get("answer_logits_error", "no logits recorded at the end of training")}
    res: dict[str, Any] = {}
    ids = probe["answer_token_ids"]
    if attribute and ids != attribute:
        res["reload_error"] = f"token ids at training {ids} != saved {attribute}"
    logits, _ = answer_logits(model, model_dir, device, ids)
    trained = torch.tensor(probe["answer_logits"])
    diff = (logits - trained).abs().max().item()
    scale = trained.abs().max().item()
    tolerance = (0.02 if dtype == "bf16" else 1e-4) * max(scale, 1.0)
    res.update(reload_logits_max_abs_diff=diff, reload_logits_scale=scale, reload_tolerance=tolerance,
               reload_rel_diff=round(diff / max(scale, 1e-12), 5),
               reload_argmax_agree=float((logits.argmax(-1) == trained.argmax(-1)).float().mean()),
               reload_logits_ok=bool(math.isfinite(diff) and diff <= tolerance and "reload_error" not in res))
    return res


def one_forward_throughput(model: Any, processor: Any, ids: list[int], dataset: str, batch_size: int,
                           device: str) -> dict:
    """The one-forward classifier alone, timed after a one-batch warm-up."""
    from llamafactory_attok.eval.attribute_classifier import first_answer_outputs, read_samples

    samples = read_samples(dataset)
    first_answer_outputs(model, processor, samples[:batch_size], ids, batch_size, device)  # warm-up
    sync(device)
    start = time.perf_counter()
    first_answer_outputs(model, processor, samples, ids, batch_size, device)
    sync(device)
    seconds = time.perf_counter() - start
    return {"samples": len(samples), "batch_size": batch_size, "seconds": round(seconds, 3),
            "samples_per_s": round(len(samples) / seconds, 2)}


def check_arm(model_dir: Path, arm: dict, dtype: str, device: str, throughput: dict | None) -> dict:
    """Reload one trained arm through LF's loader; its row and reload checks (and, for AttTok with
    ``throughput``, the one-forward classifier's speed at the run's dtype)."""
    from llamafactory_attok.state import find_saved

    start = time.perf_counter()
    model, processor = load_for_inference(model_dir, Path(arm["out"]), dtype)
    model.to(device).eval()
    res: dict[str, Any] = {"reload_s": round(time.perf_counter() - start, 2)}
    saved = find_saved([Path(arm["out"])])
    attribute = list(saved.token_ids) if saved is not None else []
    res.update(row_checks(model, model_dir, attribute))
    probe = read_json(Path(arm["probe"]), {}) if arm.get("probe") else {}
    res.update(reload_checks(model, model_dir, probe, attribute, dtype, device))
    res["check_s"] = round(time.perf_counter() - start, 2)
    if throughput and arm["arm"] == "attok" and attribute:
        res["one_forward"] = one_forward_throughput(model, processor, attribute, throughput["dataset"],
                                                    throughput["batch_size"], device)
    return res


def check(model_dir: str, arms: list[dict], result: str, dtype: str, device: str,
          throughput: dict | None = None) -> None:
    """Reload checks for each trained arm (``{arm, stage, out, probe}``), one model at a time; one arm's failure is
    recorded under its key (``attok@2``) and the next arm still runs. Results rewritten after each arm."""
    import torch

    results: dict[str, dict] = {}
    for arm in arms:
        try:
            res = check_arm(Path(model_dir), arm, dtype, device, throughput)
        except Exception as err:  # noqa: BLE001 - one arm's failure is recorded, the next arm still runs
            res = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
        results[f"{arm['arm']}@{arm['stage']}"] = res
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        write_json(Path(result), results)


# ---- attok predict -------------------------------------------------------------------------------------------

@contextlib.contextmanager
def timed_loading(timing: dict) -> Iterator[None]:
    """Time ``predict.load_model_for_inference`` while ``run_predict`` (the CLI's body) runs. Replacing the module
    attribute is the only way in: ``run_predict`` loads its model itself and offers no hook; restored on exit."""
    from llamafactory_attok.eval import predict

    loader = predict.load_model_for_inference

    def timed_loader(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            loaded = loader(*args, **kwargs)
        finally:
            timing["load_s"] = time.perf_counter() - start
        timing["dtype"] = str(next(loaded[0].parameters()).dtype)  # LF loads a checkpoint in its saved dtype
        return loaded

    predict.load_model_for_inference = timed_loader
    try:
        yield
    finally:
        predict.load_model_for_inference = loader


def predict(model_dir: str, adapter: str, dataset: str, out: str, result: str, device: str, batch_size: int) -> None:
    """``attok predict`` (``run_predict``, as shipped: fp32) timed, with its model loading timed apart."""
    from llamafactory_attok.eval.predict import run_predict

    timing: dict[str, Any] = {}
    start = time.perf_counter()
    with timed_loading(timing):
        metrics = run_predict(model_dir, dataset, out, adapter=adapter, device=device, batch_size=batch_size)
    sync(device)
    total = time.perf_counter() - start
    load = timing.get("load_s", 0.0)
    write_json(Path(result), {"samples": metrics["samples"], "batch_size": batch_size, "total_s": round(total, 2),
                              "load_s": round(load, 2), "inference_s": round(total - load, 3),
                              "samples_per_s": round(metrics["samples"] / (total - load), 2),
                              "model_dtype": timing.get("dtype"), "accuracy": metrics.get("accuracy"),
                              "peak_memory_bytes": peak_cuda_bytes(device), "peak_rss_mib": round(peak_rss_mib(), 1)})


JOBS = {"train": train, "lf": lf, "check": check, "predict": predict}


def run(job: dict) -> None:
    """Run one job (a job file's contents) in this process."""
    args = dict(job)
    kind = args.pop("kind", None)
    if kind not in JOBS:
        raise ValueError(f"unknown job kind {kind!r}; one of {', '.join(JOBS)}")
    JOBS[kind](**args)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.gpu.jobs JOB.json``: run the job; a failure propagates (traceback, exit code 1)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m bench.gpu.jobs JOB.json", file=sys.stderr)
        return 2
    run(json.loads(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
