"""`python -m bench.cost.memory`: peak memory of one AttTok and one vanilla LoRA training run at Qwen2.5-VL-7B's
vocabulary and width (152,064 × 3,584, bf16), on CPU, each arm in a fresh process (BENCHMARKS §6b).

The model keeps the published config's embedding, head and layer dimensions but only ``--layers`` LLM layers and a
two-block vision tower: AttTok's overhead (attribute rows of embed and head, ACC, θ, books) does not grow with the
number of LLM layers, so it is measured here and added to the vanilla peak of the 7B GPU run (§6a, 24.40 GiB).
Each arm runs ``examples/attok_lora.yaml`` / ``vanilla_lora.yaml`` (LoRA r16 on every LLM linear, tower frozen,
AdamW) through LLaMA-Factory's own ``run_exp`` for ``--steps`` optimizer steps, batch 1, one 56² RetinaMNIST image;
memory is the peak of allocated tensor bytes over training (:mod:`bench.cost.memory_tracker`). Arms:

- ``vanilla``: LF as shipped;
- ``attok``: AttTok with the row-sparse trainable-token forward (``llamafactory_attok.sparse_rows``);
- ``attok-dense``: AttTok with PEFT 0.18's own forward (before the row-sparse forward).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "bench" / "gpu" / "configs" / "qwen2_5_vl_7b_config.json"
GPU_VANILLA_PEAK_GIB = 24.40  # BENCHMARKS §6a: vanilla LoRA r16, ZeRO-2, H200, Qwen2.5-VL-7B dimensions
GPU_ATTOK_PEAK_GIB = 27.34  # the same run, AttTok, before the row-sparse forward
ARMS = ("vanilla", "attok-dense", "attok")
GIB = 2**30


def build(model_dir: Path, layers: int) -> dict:
    """Random bf16 weights at the 7B config's dims with ``layers`` LLM layers and a two-block vision tower."""
    import torch
    from transformers import AutoModelForImageTextToText

    from bench.gpu.model import build_processor, model_config
    from llamafactory_attok.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(family="qwen2_vl")
    config = model_config(CONFIG, tokenizer, tiny=False, dtype="bf16")
    config.text_config.num_hidden_layers = layers
    config.text_config.max_window_layers = layers
    if getattr(config.text_config, "layer_types", None):
        config.text_config.layer_types = config.text_config.layer_types[:layers]
    config.vision_config.depth = 2
    config.vision_config.fullatt_block_indexes = [1]
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(model_dir)
    build_processor(config.model_type, tokenizer, 56).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    text = config.text_config
    return {"vocab_rows": text.vocab_size, "hidden_size": text.hidden_size, "layers": layers,
            "parameters": sum(p.numel() for p in model.parameters())}


def recipe(arm: str, model_dir: Path, out: Path, steps: int) -> dict:
    name = "vanilla_lora.yaml" if arm == "vanilla" else "attok_lora.yaml"
    args = yaml.safe_load((REPO / "examples" / name).read_text())
    args.pop("deepspeed", None)
    args.update(model_name_or_path=str(model_dir), dataset_dir=str(REPO / "data"), output_dir=str(out),
                dataset="retina_vanilla_train" if arm == "vanilla" else "retina_attok_train", max_samples=steps,
                max_steps=steps, per_device_train_batch_size=1, gradient_accumulation_steps=1, logging_steps=1,
                save_strategy="no", plot_loss=False, report_to="none", bf16=True, use_cpu=True,
                preprocessing_num_workers=1, dataloader_num_workers=0, cutoff_len=512, overwrite_output_dir=True,
                image_min_pixels=56 * 56, image_max_pixels=56 * 56, gradient_checkpointing=False,
                disable_gradient_checkpointing=True)
    if arm != "vanilla":
        args["attok_vocab"] = str(REPO / "data" / "retina_vocab.yaml")
    return args


def child(job: dict) -> None:
    """One arm in this (fresh) process: LF training with the tracker around the training loop."""
    from llamafactory.train.tuner import run_exp
    from transformers import TrainerCallback

    from bench.cost.memory_tracker import LiveTensorBytes

    if job["arm"] == "attok-dense":  # PEFT's own forward: the "before"
        import llamafactory_attok.lf_patches.loader as loader

        loader.use_sparse_rows = lambda model: 0

    meter = LiveTensorBytes()
    found: dict = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            meter.start(model)
            found["at_start"] = meter.current
            from llamafactory_attok.attach import module_of

            module = module_of(model)
            found["attok_parameters"] = 0 if module is None else sum(p.numel() for p in module.parameters())
            found["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            meter.__enter__()

        def on_train_end(self, args, state, control, **kwargs):
            meter.__exit__(None, None, None)
            found["peak"] = meter.peak

    start = time.perf_counter()
    run_exp(job["args"], callbacks=[Probe()])
    found["wall_s"] = round(time.perf_counter() - start, 1)
    Path(job["result"]).write_text(json.dumps(found))


def run_arm(arm: str, model_dir: Path, work: Path, steps: int) -> dict:
    job = {"arm": arm, "args": recipe(arm, model_dir, work / arm, steps), "result": str(work / f"{arm}.json")}
    path = work / f"{arm}.job.json"
    path.write_text(json.dumps(job))
    env_cmd = [sys.executable, "-m", "bench.cost.memory", "--child", str(path)]
    done = subprocess.run(env_cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"arm {arm} failed:\n{done.stderr[-4000:]}")
    return json.loads((work / f"{arm}.json").read_text())


def formula(k: int, d: int, v: int) -> dict:
    """Expected overhead (bytes): ACC's four d×d projections + θ (d×d + d) + books' keyword embeddings (K×d), fp32
    with AdamW (param + grad + two moments = 16 B/param, LF upcasts trainable parameters); the attribute rows of
    embed and head (2K×d, same 16 B); before the fix, PEFT's merged V×d copies in bf16 (embed's transient, head's
    kept for backward, and the dense V×d gradient of the head copy)."""
    acc_theta = (5 * d * d + d + k * d) * 16
    rows = 2 * k * d * 16
    dense = 3 * v * d * 2
    return {"acc_theta_bytes": acc_theta, "rows_bytes": rows, "peft_dense_copies_bytes": dense}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, default=1, help="LLM layers (the overhead does not depend on it)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--work", default=str(REPO / "outputs" / "bench_memory"))
    parser.add_argument("--out", default=str(REPO / "bench_results" / "memory.json"))
    ns = parser.parse_args(argv)
    if ns.child:
        child(json.loads(Path(ns.child).read_text()))
        return 0
    work = Path(ns.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / f"qwen2_5_vl_7b_dims_{ns.layers}l"
    model = json.loads((model_dir / "built.json").read_text()) if (model_dir / "built.json").is_file() else None
    if model is None:
        model = build(model_dir, ns.layers)
        (model_dir / "built.json").write_text(json.dumps(model))
    results = {arm: run_arm(arm, model_dir, work, ns.steps) for arm in ns.arms.split(",")}
    k = len([ln for ln in (REPO / "data" / "retina_vocab.yaml").read_text().splitlines() if ln.startswith('"')])
    expected = formula(k, model["hidden_size"], model["vocab_rows"])
    report = {"command": "python -m bench.cost.memory " + " ".join(argv or sys.argv[1:]), "model": model,
              "steps": ns.steps, "arms": results, "formula": expected}
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(report, indent=2) + "\n")
    vanilla = results.get("vanilla", {}).get("peak")
    print(f"model: {model}")
    for arm, found in results.items():
        extra = f", overhead {(found['peak'] - vanilla) / GIB:+.3f} GiB" if vanilla and arm != "vanilla" else ""
        print(f"{arm:12s} peak {found['peak'] / GIB:.3f} GiB (at train begin {found['at_start'] / GIB:.3f} GiB, "
              f"AttTok parameters {found['attok_parameters']:,}, trainable {found['trainable_parameters']:,}"
              f"{extra}); {found['wall_s']} s")
    print(f"formula (K={k}, d={model['hidden_size']}, V={model['vocab_rows']}): ACC+θ+books "
          f"{expected['acc_theta_bytes'] / GIB:.3f} GiB, attribute rows {expected['rows_bytes'] / GIB:.4f} GiB, "
          f"PEFT's dense V×d copies (before) {expected['peft_dense_copies_bytes'] / GIB:.3f} GiB; "
          f"§6a GPU difference (before) {GPU_ATTOK_PEAK_GIB - GPU_VANILLA_PEAK_GIB:.2f} GiB")
    if vanilla and "attok-dense" in results:
        before = (GPU_VANILLA_PEAK_GIB + (results["attok-dense"]["peak"] - vanilla) / GIB) / GPU_VANILLA_PEAK_GIB
        print(f"before (PEFT's forward): peak memory ratio attok/vanilla {before:.3f}")
    if vanilla and "attok" in results:
        overhead = (results["attok"]["peak"] - vanilla) / GIB
        print(f"R = ({GPU_VANILLA_PEAK_GIB} GiB, the vanilla peak of §6a's 7B GPU run, + {overhead:.3f} GiB measured "
              f"here) / {GPU_VANILLA_PEAK_GIB} GiB")
        print(f"peak memory ratio attok/vanilla {(GPU_VANILLA_PEAK_GIB + overhead) / GPU_VANILLA_PEAK_GIB:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
