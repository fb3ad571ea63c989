"""One prepared GPU check of the whole CUDA path at real dimensions (issue 15; BENCHMARKS.md §6).

Builds a randomly initialised model from a published config (default: Qwen2.5-VL-7B-Instruct,
``bench/configs/qwen2_5_vl_7b_config.json``) directly on the GPU in bf16 and saves it; then, for each DeepSpeed
ZeRO stage (2, then 3) trains AttTok and vanilla LoRA r16 (the ``examples/attok_lora.yaml`` /
``examples/vanilla_lora.yaml`` recipes, one GPU) for ``--steps`` optimizer steps on the RetinaMNIST sample in
``data/`` at 448² through LLaMA-Factory's ``llamafactory-cli train`` entry point, and measures per arm:

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

No weights are downloaded: the tokenizer is the offline stand-in of ``llamafactory_attok.testing`` (a ~400-token
byte-level BPE with Qwen's special tokens), its ids written into the config; the embedding keeps the config's
``vocab_size`` rows (152064 for the 7B), so the attribute tokens fit in spare rows as with the real tokenizer
(151665 tokens). The image processor is pinned to exactly 448² (min = max pixels), so LF training, LF generation
and the one-forward classifier all see 256 visual tokens per image.

    bash bench/gpu_check.sh                        # on the device: install wheelhouse/, then this script
    python bench/gpu_check.py --out outputs/gpu_check [--config bench/configs/qwen2_vl_2b_config.json]
    python bench/gpu_check.py --dry-run --out /tmp/gpu_check_dry
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "bench" / "configs"
DEFAULT_CONFIG = CONFIGS / "qwen2_5_vl_7b_config.json"
DATA = REPO / "data"
VOCAB = DATA / "retina_vocab.yaml"
TEST_SET = DATA / "retina_attok_test.json"
ARMS = {"attok": ("attok_lora.yaml", "retina_attok_train"), "vanilla": ("vanilla_lora.yaml", "retina_vanilla_train")}
RATIO_GOAL = 1.05
PROBE_SAMPLES = 8  # images whose answer-position logits are compared after save -> reload

# LLM width 64, two layers, a two-block vision tower whose merger reaches width 64 (as the repo's tiny Qwen models)
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_window_layers": 2, "vocab_size": 1024,
             "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}
TINY_VISION = {
    "qwen2_5_vl": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                   "fullatt_block_indexes": [1]},
    "qwen2_vl": {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2},
}
PROCESSORS = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen2_vl": "Qwen2VLProcessor"}


# ---- small helpers ---------------------------------------------------------------------------------------------

def write_json(path: Path, payload) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


def lf_dtype(name: str) -> str:
    return {"bf16": "bfloat16", "fp32": "float32"}[name]


def sha256(tensor) -> str:
    """SHA-256 of a tensor's bytes (bf16 viewed as int16, so any dtype hashes)."""
    import torch

    flat = tensor.detach().contiguous().cpu()
    if flat.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment(device: str) -> dict:
    import importlib.metadata as md

    info = {"python": platform.python_version(), "machine": platform.node(), "device": device,
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    for dist in ("torch", "transformers", "peft", "accelerate", "deepspeed", "trl", "datasets", "llamafactory",
                 "llamafactory-attok", "tokenizers", "safetensors"):
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            info[dist] = None
    import torch

    info["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    nccl=".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None)
    return info


# ---- the model ---------------------------------------------------------------------------------------------------

def model_config(config_path: Path, tokenizer, tiny: bool, dtype: str):
    """The published config (dims kept, or scaled down with ``tiny``), token ids of the stand-in tokenizer."""
    from transformers import AutoConfig

    raw = json.loads(config_path.read_text())
    model_type = raw.pop("model_type")
    for key in ("architectures", "transformers_version", "torch_dtype"):
        raw.pop(key, None)
    if tiny:
        raw.update(copy.deepcopy(TINY_TEXT))
        raw["vision_config"].update(TINY_VISION[model_type])
    ids = {key: tokenizer.convert_tokens_to_ids(tok) for key, tok in (
        ("bos_token_id", "<|endoftext|>"), ("eos_token_id", "<|im_end|>"), ("pad_token_id", "<|endoftext|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
        ("vision_token_id", "<|vision_pad|>"), ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"))}
    raw.update(ids)
    if raw["vocab_size"] < len(tokenizer) + 64:
        raise SystemExit(f"{config_path}: vocab_size {raw['vocab_size']} leaves no room for the tokenizer")
    config = AutoConfig.for_model(model_type, **raw)
    config.dtype = lf_dtype(dtype)
    return config


def build_processor(model_type: str, tokenizer, image_size: int):
    import transformers
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    pixels = {"min_pixels": image_size * image_size, "max_pixels": image_size * image_size}
    image_processor = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2, **pixels)
    video_processor = Qwen2VLVideoProcessor(**pixels)
    cls = getattr(transformers, PROCESSORS[model_type])
    return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
               chat_template=tokenizer.chat_template)


def build_model(ns, model_dir: Path) -> dict:
    """Random weights at the config's dims, created directly on the device in the run's dtype, saved to disk."""
    import torch
    from transformers import AutoModelForImageTextToText

    from llamafactory_attok.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(family="qwen2_vl")
    config = model_config(ns.config, tokenizer, ns.dry_run, ns.dtype)
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device(ns.device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch_dtype(ns.dtype))
    sync(ns.device)
    built = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    devices = sorted({str(p.device) for p in model.parameters()})
    start = time.perf_counter()
    model.save_pretrained(model_dir)
    build_processor(config.model_type, tokenizer, ns.image_size).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    saved = time.perf_counter() - start
    del model
    if ns.device.startswith("cuda"):
        torch.cuda.empty_cache()
    size = sum(f.stat().st_size for f in model_dir.iterdir() if f.is_file())
    return {"model_type": config.model_type, "parameters": params, "param_dtypes": dtypes, "built_on": devices,
            "hidden_size": config.text_config.hidden_size, "layers": config.text_config.num_hidden_layers,
            "vocab_rows": config.text_config.vocab_size, "tokenizer_size": len(tokenizer),
            "tied": bool(config.tie_word_embeddings), "build_s": round(built, 2), "save_s": round(saved, 2),
            "disk_gib": round(size / 2**30, 3)}


# ---- LF recipes --------------------------------------------------------------------------------------------------

def recipe(ns, arm: str, stage: int | None, model_dir: Path, out: Path) -> dict:
    import yaml

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
    return args


def child_env(ns, deepspeed: bool) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("ATTOK_DISABLE", None)
    env.pop("FORCE_TORCHRUN", None)
    if ns.dry_run:  # LF's own version check stays on: the installed stack must be the one LF 0.9.5 pins
        env["CUDA_VISIBLE_DEVICES"] = ""
    if deepspeed:  # one rank, as torchrun --nproc_per_node 1 would set it up (NCCL on CUDA, gloo on CPU)
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(free_port()))
    return env


def run_child(ns, args: list[str], log: Path, timeout: float, deepspeed: bool = False) -> tuple[int, float, str]:
    """Run this script's child mode in a fresh process; output to ``log``; (exit code, seconds, tail)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    start = time.perf_counter()
    with open(log, "w") as handle:
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=child_env(ns, deepspeed), stdout=handle, stderr=subprocess.STDOUT,
                                  timeout=max(timeout, 1))
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = 124
    seconds = time.perf_counter() - start
    tail = log.read_text(errors="replace")[-3000:]
    return code, seconds, tail


def error_line(tail: str) -> str:
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln or "Exception" in ln:
            return ln.strip()[-500:]
    return (lines[-1].strip() if lines else "no output")[-500:]


# ---- child: training with a probe ------------------------------------------------------------------------------

def install_probe(probe_path: Path, model_dir: Path, device: str, warmup: int) -> None:
    """Add a callback to every HF Trainer this process builds (LF's AttTok / SFT trainer included)."""
    import torch
    import transformers
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self) -> None:
            self.compute, self.wall, self.tokens = [], [], []
            self.t0 = self.last = None
            self.tokens_last = 0
            self.result = {}

        def on_train_begin(self, args, state, control, **kwargs):
            sync(device)
            if device.startswith("cuda"):
                self.result["memory_at_train_begin_bytes"] = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            self.last = time.perf_counter()
            self.tokens_last = state.num_input_tokens_seen

        def on_step_begin(self, args, state, control, **kwargs):
            sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            now = time.perf_counter()
            self.compute.append(now - self.t0)
            self.wall.append(now - self.last)
            self.tokens.append(state.num_input_tokens_seen - self.tokens_last)
            self.tokens_last = state.num_input_tokens_seen
            self.last = now
            self.record(finished=False)  # a run cut short (budget) still leaves its step times and memory

        def record(self, finished: bool) -> None:
            res = self.result
            if device.startswith("cuda"):
                res["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
            res.update(peak_rss_mib=round(peak_rss_mib(), 1), compute_s=self.compute, wall_s=self.wall,
                       tokens=self.tokens, warmup_steps=min(warmup, max(len(self.compute) - 1, 0)),
                       finished=finished)
            write_json(probe_path, res)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            sync(device)
            self.record(finished=True)
            res = self.result
            try:  # the trained model's answer-position logits, compared after save -> reload
                logits, ids = answer_logits(model, model_dir, str(args.device))
                res.update(answer_token_ids=ids, answer_logits=logits.tolist())
            except Exception as err:  # noqa: BLE001 - recorded, the check then fails with this reason
                res["answer_logits_error"] = f"{type(err).__name__}: {err}"
            write_json(probe_path, res)

    original = transformers.Trainer.__init__

    def patched(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(Probe())

    transformers.Trainer.__init__ = patched


def answer_ids(model, tokenizer) -> list[int]:
    """AttTok: the attribute-token ids; vanilla: the first token of each class keyword."""
    from llamafactory_attok.attach import module_of
    from llamafactory_attok.vocab import load_vocab

    module = module_of(model)
    if module is not None:
        return list(module.token_ids)
    return [tokenizer(text, add_special_tokens=False)["input_ids"][0] for text in load_vocab(VOCAB).keywords]


def probe_processor(model, model_dir: Path):
    """The base folder's processor plus, for an AttTok model, the attribute tokens (the training tokenizer's
    additions, in the same order: the same ids). Both sides of the save -> reload comparison use this one, so the
    inputs are identical and only the model path differs."""
    from transformers import AutoProcessor

    from llamafactory_attok.attach import module_of
    from llamafactory_attok.rows import add_attribute_tokens
    from llamafactory_attok.vocab import load_vocab

    processor = AutoProcessor.from_pretrained(model_dir)
    if module_of(model) is not None:
        added, _ = add_attribute_tokens(processor.tokenizer, load_vocab(VOCAB))
        if list(added) != list(module_of(model).token_ids):
            raise RuntimeError(f"attribute token ids {added} != the model's {module_of(model).token_ids}")
    return processor


def answer_logits(model, model_dir: Path, device: str):
    """(PROBE_SAMPLES, K) logits at the first answer position, through the one-forward classifier's code."""
    from llamafactory_attok.eval.attribute_classifier import first_answer_outputs, read_samples

    processor = probe_processor(model, model_dir)
    ids = answer_ids(model, processor.tokenizer)
    samples = read_samples(TEST_SET)[:PROBE_SAMPLES]
    was_training = model.training
    try:
        logits, _ = first_answer_outputs(model, processor, samples, ids, batch_size=PROBE_SAMPLES, device=device)
    finally:
        model.train(was_training)
    return logits, ids


def child_train(config: Path, probe: Path, model_dir: Path, device: str, warmup: int) -> None:
    install_probe(probe, model_dir, device, warmup)
    sys.argv = ["llamafactory-cli", "train", str(config)]  # exactly what the console script runs
    from llamafactory.cli import main

    main()


JIEBA_STUB = "gpu_check: jieba missing, LF's BLEU/ROUGE after generation use a whitespace splitter"


def child_lf(config: Path) -> None:
    """LF's batch generation. Its text metrics (computed inside ``predict``) segment with jieba, a 19 MB package
    the device lacks and that the wheelhouse leaves out; the timing does not depend on how the metric splits."""
    import importlib.util
    import types

    if importlib.util.find_spec("jieba") is None:
        stub = types.ModuleType("jieba")
        stub.cut = lambda text, *args, **kwargs: iter(text.split())
        sys.modules["jieba"] = stub
        print(JIEBA_STUB, flush=True)
    sys.argv = ["llamafactory-cli", "train", str(config)]
    from llamafactory.cli import main

    main()


# ---- child: reload checks ----------------------------------------------------------------------------------------

def load_for_inference(model_dir: Path, adapter: Path | None, dtype: str):
    """LF's public loaders (the path of chat/api/predict), at the run's dtype (attok predict forces fp32)."""
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_model, load_tokenizer

    args = {"model_name_or_path": str(model_dir), "template": "qwen2_vl", "infer_dtype": lf_dtype(dtype)}
    if adapter is not None:
        args.update(adapter_name_or_path=str(adapter), finetuning_type="lora")
    model_args, _, finetuning_args, _ = get_infer_args(args)
    modules = load_tokenizer(model_args)
    model = load_model(modules["tokenizer"], model_args, finetuning_args, is_trainable=False)
    return model, modules["processor"]


def base_rows(model_dir: Path):
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


def effective_rows(model, device: str):
    """(V, d) rows the model really uses for its input embedding and output head (through PEFT's wrappers)."""
    import torch

    from llamafactory_attok.attach import base_model_of

    base = base_model_of(model)
    embed, head = base.get_input_embeddings(), base.get_output_embeddings()
    weight = getattr(embed, "weight", None)
    rows = (weight if weight is not None else embed.base_layer.weight).shape[0]
    with torch.no_grad():
        embed_rows = embed(torch.arange(rows, device=device).unsqueeze(0))[0]
        eye = torch.eye(embed_rows.shape[1], device=device, dtype=embed_rows.dtype)
        head_rows = head(eye).T
    return embed_rows.cpu(), head_rows.cpu()


def check_arm(model_dir: Path, out: Path, probe: dict, dtype: str, device: str) -> dict:
    import torch

    from llamafactory_attok.eval.attribute_classifier import first_answer_outputs, read_samples
    from llamafactory_attok.state import find_saved

    res: dict = {}
    start = time.perf_counter()
    model, processor = load_for_inference(model_dir, out, dtype)
    model.to(device).eval()
    res["reload_s"] = round(time.perf_counter() - start, 2)
    saved = find_saved([out])
    attribute = list(saved.token_ids) if saved is not None else []
    # rows: every non-attribute row bit-identical to the saved base weights
    base_embed, base_head = base_rows(model_dir)
    embed, head = effective_rows(model, device)
    keep = torch.ones(embed.shape[0], dtype=torch.bool)
    keep[attribute] = False
    res["rows_checked"] = int(keep.sum())
    res["attribute_rows"] = len(attribute)
    hashes = {}
    for name, now, before in (("embed", embed, base_embed), ("head", head, base_head)):
        before = before.to(now.dtype)
        hashes[name] = {"base": sha256(before[keep]), "trained": sha256(now[keep])}
        if attribute:
            res[f"attribute_rows_changed_{name}"] = bool(
                all(not torch.equal(now[i], before[i]) for i in attribute))
    res["row_hashes"] = hashes
    res["rows_unchanged"] = all(h["base"] == h["trained"] for h in hashes.values())
    del embed, head, base_embed, base_head
    # save -> reload: answer-position logits equal those of the trained model at the end of training
    if "answer_logits" in probe:
        ids = probe["answer_token_ids"]
        if attribute and ids != attribute:
            res["reload_error"] = f"token ids at training {ids} != saved {attribute}"
        samples = read_samples(TEST_SET)[:PROBE_SAMPLES]
        logits, _ = first_answer_outputs(model, probe_processor(model, model_dir), samples, ids,
                                         batch_size=PROBE_SAMPLES, device=device)
        trained = torch.tensor(probe["answer_logits"])
        diff = (logits - trained).abs().max().item()
        scale = trained.abs().max().item()
        tolerance = (0.02 * max(scale, 1.0)) if dtype == "bf16" else 1e-4 * max(scale, 1.0)
        res.update(reload_logits_max_abs_diff=diff, reload_logits_scale=scale, reload_tolerance=tolerance,
                   reload_rel_diff=round(diff / max(scale, 1e-12), 5),
                   reload_argmax_agree=float((logits.argmax(-1) == trained.argmax(-1)).float().mean()),
                   reload_logits_ok=bool(math.isfinite(diff) and diff <= tolerance and "reload_error" not in res))
    else:
        res.update(reload_logits_ok=False,
                   reload_error=probe.get("answer_logits_error", "no logits recorded at the end of training"))
    res["check_s"] = round(time.perf_counter() - start, 2)
    return res, model, processor, attribute


def one_forward_throughput(model, processor, ids, samples, batch_size: int, device: str) -> dict:
    from llamafactory_attok.eval.attribute_classifier import first_answer_outputs

    first_answer_outputs(model, processor, samples[:batch_size], ids, batch_size, device)  # warm-up
    sync(device)
    start = time.perf_counter()
    first_answer_outputs(model, processor, samples, ids, batch_size, device)
    sync(device)
    seconds = time.perf_counter() - start
    return {"samples": len(samples), "batch_size": batch_size, "seconds": round(seconds, 3),
            "samples_per_s": round(len(samples) / seconds, 2)}


def child_check(model_dir: Path, jobs: Path, result_path: Path, dtype: str, device: str,
                throughput: dict | None) -> None:
    """Reload checks for each trained arm in ``jobs`` (list of {arm, out, probe}); one process, one model at a
    time. With ``throughput``, also the one-forward classifier's speed at the run's dtype on the AttTok arm."""
    import gc

    import torch

    from llamafactory_attok.eval.attribute_classifier import read_samples

    results = {}
    for job in json.loads(jobs.read_text()):
        arm = f"{job['arm']}@{job['stage']}"
        try:
            probe = json.loads(Path(job["probe"]).read_text()) if Path(job["probe"]).is_file() else {}
            res, model, processor, attribute = check_arm(model_dir, Path(job["out"]), probe, dtype, device)
            if throughput and job["arm"] == "attok" and attribute:
                samples = read_samples(throughput["dataset"])
                res["one_forward"] = one_forward_throughput(model, processor, attribute, samples,
                                                            throughput["batch_size"], device)
            del model
        except Exception as err:  # noqa: BLE001 - one arm's failure is recorded, the next arm still runs
            res = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
        results[arm] = res
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        write_json(result_path, results)


def child_predict(model_dir: Path, adapter: Path, dataset: Path, out: Path, result_path: Path, device: str,
                  batch_size: int) -> None:
    """``attok predict`` (its CLI body, ``run_predict``) timed, with its model loading timed apart."""
    from llamafactory_attok.eval import predict

    timing = {}
    loader = predict.load_model_for_inference

    def timed_loader(*args, **kwargs):
        start = time.perf_counter()
        try:
            loaded = loader(*args, **kwargs)
        finally:
            timing["load_s"] = time.perf_counter() - start
        timing["dtype"] = str(next(loaded[0].parameters()).dtype)  # LF loads a checkpoint in its saved dtype
        return loaded

    predict.load_model_for_inference = timed_loader
    start = time.perf_counter()
    metrics = predict.run_predict(str(model_dir), str(dataset), str(out), adapter=str(adapter), device=device,
                                  batch_size=batch_size)
    sync(device)
    total = time.perf_counter() - start
    infer = total - timing.get("load_s", 0.0)
    write_json(result_path, {"samples": metrics["samples"], "batch_size": batch_size, "total_s": round(total, 2),
                             "load_s": round(timing.get("load_s", 0.0), 2), "inference_s": round(infer, 3),
                             "samples_per_s": round(metrics["samples"] / infer, 2), "model_dtype": timing.get("dtype"),
                             "accuracy": metrics.get("accuracy"),
                             "peak_memory_bytes": _peak_cuda(device), "peak_rss_mib": round(peak_rss_mib(), 1)})


def _peak_cuda(device: str):
    import torch

    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else None


# ---- parent: one arm ---------------------------------------------------------------------------------------------

def summarise_training(out: Path, probe: dict, arm: str) -> dict:
    entries = []
    log = out / "trainer_log.jsonl"
    if log.is_file():
        entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    losses = [(k, v) for e in entries for k, v in e.items() if k.startswith("loss")]
    res = {"steps_logged": sum(1 for e in entries if "loss" in e),
           "losses_finite": bool(losses) and all(isinstance(v, (int, float)) and math.isfinite(v) for _, v in losses),
           "loss_acm_logged": (sum(1 for e in entries if "loss_acm" in e) == sum(1 for e in entries if "loss" in e)
                               and any("loss_acm" in e for e in entries)) if arm == "attok" else None,
           "first_loss": next((e["loss"] for e in entries if "loss" in e), None),
           "last_loss": next((e["loss"] for e in reversed(entries) if "loss" in e), None)}
    if arm == "attok":
        res["first_loss_acm"] = next((e["loss_acm"] for e in entries if "loss_acm" in e), None)
        res["last_loss_acm"] = next((e["loss_acm"] for e in reversed(entries) if "loss_acm" in e), None)
    if probe.get("compute_s"):
        skip = probe.get("warmup_steps", 0)
        compute, wall, tokens = probe["compute_s"][skip:], probe["wall_s"][skip:], probe["tokens"][skip:]
        res.update(steps_timed=len(compute), warmup_steps_excluded=skip,
                   median_step_s=round(statistics.median(compute), 4),
                   median_step_wall_s=round(statistics.median(wall), 4),
                   tokens_per_step=round(sum(tokens) / len(tokens), 1),
                   tokens_per_s=round(sum(tokens) / sum(compute), 1) if sum(compute) > 0 else None)
    res["train_finished"] = probe.get("finished")  # False: cut short (budget); the figures cover the steps run
    res["peak_memory_bytes"] = probe.get("peak_memory_bytes")
    res["peak_memory_gib"] = round(probe["peak_memory_bytes"] / 2**30, 3) if probe.get("peak_memory_bytes") else None
    res["memory_at_train_begin_bytes"] = probe.get("memory_at_train_begin_bytes")
    res["peak_rss_mib"] = probe.get("peak_rss_mib")
    res["saved_adapter"] = (out / "adapter_model.safetensors").is_file()
    if arm == "attok":
        res["saved_attok_state"] = (out / "attok_state.safetensors").is_file()
    return res


class Run:
    """The parent: phases in order, each timed, each failure recorded; results.json rewritten after each."""

    def __init__(self, ns) -> None:
        self.ns = ns
        self.start = time.monotonic()
        self.out = ns.out
        self.results: dict = {"mode": "dry-run" if ns.dry_run else "gpu", "config": str(ns.config),
                              "dtype": ns.dtype, "device": ns.device, "steps": ns.steps, "stages": ns.stages,
                              "image_size": ns.image_size, "budget_s": ns.budget_s, "phases": [], "arms": []}
        self.durations: dict[str, float] = {}

    def left(self) -> float:
        return self.ns.budget_s - (time.monotonic() - self.start)

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - self.start, 1)
        write_json(self.out / "results.json", self.results)
        if self.ns.mirror is not None:  # e.g. the device runner's $OUT: only small files come back from there
            self.ns.mirror.mkdir(parents=True, exist_ok=True)
            write_json(self.ns.mirror / "results.json", self.results)

    def fits(self, name: str, kind: str, default: float) -> bool:
        need = self.durations.get(kind, default)
        if self.left() < need:
            self.results["phases"].append({"phase": name, "status": "skipped", "reason":
                                           f"budget: {self.left():.0f} s left, ~{need:.0f} s needed"})
            self.save()
            return False
        return True

    @contextlib.contextmanager
    def phase(self, name: str, kind: str | None = None):
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

    def train(self, arm: str, stage: int | None, model_dir: Path) -> dict:
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
        import yaml

        with self.phase(f"train {tag}", kind) as record:
            config = self.out / f"{tag}.yaml"
            config.write_text(yaml.safe_dump(recipe(ns, arm, stage, model_dir, out), sort_keys=False))
            probe = self.out / f"{tag}.probe.json"
            probe.unlink(missing_ok=True)
            code, seconds, tail = run_child(ns, ["_train", str(config), str(probe), str(model_dir), ns.device,
                                                 str(ns.warmup_steps)], self.out / f"{tag}.log",
                                            timeout=self.left() - 5, deepspeed=stage is not None)
            line.update(train_s=round(seconds, 1), exit_code=code)
            probe_data = json.loads(probe.read_text()) if probe.is_file() else {}
            line.update(summarise_training(out, probe_data, arm))
            line["probe"] = str(probe)
            if code != 0:
                line.update(status="failed", error=("timeout (budget)" if code == 124 else error_line(tail)))
                record.update(status="failed", error=line["error"])
            else:
                line["status"] = "ok"
        return line

    def check(self, lines: list[dict], model_dir: Path, throughput: dict | None) -> None:
        ns = self.ns
        jobs = [{"arm": ln["arm"], "stage": ln["zero_stage"], "out": ln["output_dir"], "probe": ln.get("probe", "")}
                for ln in lines if ln["status"] == "ok"]
        if not jobs:
            return
        name = "check " + ", ".join(f"{j['arm']}_z{j['stage']}" for j in jobs)
        if not self.fits(name, "check", 60 if ns.dry_run else 150):
            for ln in lines:
                ln.setdefault("check_error", "skipped: time budget")
            return
        with self.phase(name, "check") as record:
            jobs_file = self.out / f"check_{len(self.results['phases'])}.jobs.json"
            result_file = jobs_file.with_suffix("").with_suffix(".result.json")
            write_json(jobs_file, jobs)
            args = ["_check", str(model_dir), str(jobs_file), str(result_file), ns.dtype, ns.device]
            if throughput:
                args += ["--throughput", json.dumps(throughput)]
            code, seconds, tail = run_child(ns, args, self.out / f"{jobs_file.stem}.log", timeout=self.left() - 5)
            results = json.loads(result_file.read_text()) if result_file.is_file() else {}
            for ln in lines:
                res = results.get(f"{ln['arm']}@{ln['zero_stage']}")
                if res is None:
                    if ln["status"] == "ok":
                        ln["check_error"] = "timeout (budget)" if code == 124 else error_line(tail)
                    continue
                res.pop("traceback", None)
                if "error" in res:
                    ln["check_error"] = res.pop("error")
                ln.update(res)
            if code != 0:
                record.update(status="failed", error="timeout (budget)" if code == 124 else error_line(tail))

    def predict(self, attok_line: dict, model_dir: Path) -> dict:
        """attok predict (as shipped: fp32) and LF generation on the same test samples."""
        ns = self.ns
        res: dict = {}
        adapter = Path(attok_line["output_dir"])
        subset = predict_subset(ns)
        if self.fits("attok predict", "predict", 60 if ns.dry_run else 150):
            with self.phase("attok predict", "predict") as record:
                result = self.out / "attok_predict.result.json"
                code, seconds, tail = run_child(
                    ns, ["_predict", str(model_dir), str(adapter), str(subset), str(self.out / "attok_predict.jsonl"),
                         str(result), ns.device, str(ns.predict_batch_size)],
                    self.out / "attok_predict.log", timeout=self.left() - 5)
                if result.is_file():
                    res["attok_predict"] = json.loads(result.read_text())
                    res["attok_predict"]["wall_s"] = round(seconds, 1)
                else:
                    res["attok_predict_error"] = "timeout (budget)" if code == 124 else error_line(tail)
                    record.update(status="failed", error=res["attok_predict_error"])
        if self.fits("LF generation", "predict", 60 if ns.dry_run else 150):
            with self.phase("LF generation", "predict") as record:
                import yaml

                gen_out = self.out / "lf_generation"
                args = {"model_name_or_path": str(model_dir), "adapter_name_or_path": str(adapter),
                        "finetuning_type": "lora", "template": "qwen2_vl", "stage": "sft", "do_predict": True,
                        "predict_with_generate": True, "dataset_dir": str(DATA), "eval_dataset": "retina_attok_test",
                        "max_samples": ns.predict_samples, "cutoff_len": 1024, "max_new_tokens": ns.max_new_tokens,
                        "per_device_eval_batch_size": ns.predict_batch_size, "output_dir": str(gen_out),
                        "overwrite_output_dir": True, "overwrite_cache": True, "report_to": "none",
                        "preprocessing_num_workers": 1 if ns.dry_run else 16, "dataloader_num_workers": 0,
                        "image_min_pixels": ns.image_size ** 2, "image_max_pixels": ns.image_size ** 2,
                        "bf16": ns.dtype == "bf16", "do_sample": False}
                if not ns.device.startswith("cuda"):
                    args["use_cpu"] = True
                config = self.out / "lf_generation.yaml"
                config.write_text(yaml.safe_dump(args, sort_keys=False))
                log = self.out / "lf_generation.log"
                code, seconds, tail = run_child(ns, ["_lf", str(config)], log, timeout=self.left() - 5)
                metrics_file = gen_out / "predict_results.json"
                if code == 0 and metrics_file.is_file():
                    metrics = json.loads(metrics_file.read_text())
                    res["lf_generation"] = {"samples": ns.predict_samples, "batch_size": ns.predict_batch_size,
                                            "max_new_tokens": ns.max_new_tokens, "wall_s": round(seconds, 1),
                                            "dtype": lf_dtype(ns.dtype),
                                            "jieba_stubbed": JIEBA_STUB in log.read_text(errors="replace"),
                                            "predict_runtime_s": metrics.get("predict_runtime"),
                                            "samples_per_s": metrics.get("predict_samples_per_second")}
                else:
                    res["lf_generation_error"] = "timeout (budget)" if code == 124 else error_line(tail)
                    record.update(status="failed", error=res["lf_generation_error"])
        gen = res.get("lf_generation", {}).get("samples_per_s")
        if gen:
            if res.get("attok_predict", {}).get("samples_per_s"):
                res["attok_predict_over_generation"] = round(res["attok_predict"]["samples_per_s"] / gen, 2)
            one = attok_line.get("one_forward", {}).get("samples_per_s")
            if one:
                res["one_forward_same_dtype_over_generation"] = round(one / gen, 2)
        return res

    def finish_stage(self, lines: list[dict]) -> None:
        by_arm = {ln["arm"]: ln for ln in lines}
        attok, vanilla = by_arm.get("attok"), by_arm.get("vanilla")
        for ln in lines:
            ln["checks_passed"] = passed(ln)
        if attok and vanilla:
            for key, ratio_key in (("median_step_s", "step_time_ratio"), ("peak_memory_bytes", "peak_memory_ratio"),
                                   ("median_step_wall_s", "step_wall_ratio")):
                a, v = attok.get(key), vanilla.get(key)
                attok[ratio_key] = round(a / v, 4) if a and v else None
            a, v = attok.get("reload_rel_diff"), vanilla.get("reload_rel_diff")
            attok["reload_rel_diff_over_vanilla"] = round(a / v, 3) if a is not None and v else None
            for key in ("step_time_ratio", "peak_memory_ratio"):
                goal = attok[key] is not None and attok[key] <= RATIO_GOAL
                attok[key.replace("ratio", "goal_met")] = goal if attok[key] is not None else None
        for ln in lines:
            self.results["arms"].append(ln)
            print(json.dumps(ln, default=str), flush=True)
        self.save()


def predict_subset(ns) -> Path:
    """The first ``--predict-samples`` test samples, image paths absolute (for attok predict)."""
    subset = ns.out / "predict_subset.json"
    rows = json.loads(TEST_SET.read_text())[:ns.predict_samples]
    for row in rows:
        row["images"] = [str(DATA / img) for img in row["images"]]
    subset.write_text(json.dumps(rows))
    return subset


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


def parent(ns) -> int:
    ns.out.mkdir(parents=True, exist_ok=True)
    run = Run(ns)
    with run.phase("environment") as record:
        run.results["environment"] = environment(ns.device)
        if ns.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise SystemExit("no CUDA device: run with --dry-run on a CPU machine")
        record["status"] = "ok"
    model_dir = ns.model_dir or (ns.out / "model")
    if ns.model_dir is None or not (model_dir / "config.json").is_file():
        with run.phase("build model") as record:
            model_dir.mkdir(parents=True, exist_ok=True)
            run.results["model"] = build_model(ns, model_dir)
    if not (model_dir / "config.json").is_file():
        print(json.dumps({"summary": True, "error": "no model was built", "results": str(ns.out / "results.json")}))
        return 1
    first_attok = None
    for stage in ns.stages:  # ZeRO-2, then ZeRO-3: both arms, then their reload checks
        lines = [run.train(arm, stage, model_dir) for arm in ns.arms]
        attok = next((ln for ln in lines if ln["arm"] == "attok" and ln["status"] == "ok"), None)
        throughput = None
        if attok is not None and first_attok is None:  # the one-forward classifier's speed, once, at the run's dtype
            throughput = {"dataset": str(predict_subset(ns)), "batch_size": ns.predict_batch_size}
            first_attok = (stage, attok)
        run.check(lines, model_dir, throughput)
        run.finish_stage(lines)
    if first_attok is not None and not ns.skip_predict:  # last: the training checks come first in the budget
        stage, attok = first_attok
        run.results["predict"] = {"stage": stage, **run.predict(attok, model_dir)}
        run.save()
    summary = {"summary": True, "mode": run.results["mode"], "arms_ok": sum(ln["status"] == "ok" for ln in
                                                                            run.results["arms"]),
               "arms_total": len(run.results["arms"]),
               "checks_passed": all(ln.get("checks_passed") for ln in run.results["arms"]) and bool(
                   run.results["arms"]),
               "predict": run.results.get("predict"), "elapsed_s": round(time.monotonic() - run.start, 1),
               "skipped": [p["phase"] for p in run.results["phases"] if p["status"] == "skipped"],
               "results": str(ns.out / "results.json")}
    run.results["summary"] = summary
    run.save()
    print(json.dumps(summary, default=str), flush=True)
    return 0 if summary["checks_passed"] else 1


def parse(argv: list[str] | None = None):
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
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_train":
        child_train(Path(argv[1]), Path(argv[2]), Path(argv[3]), argv[4], int(argv[5]))
        return 0
    if argv and argv[0] == "_lf":
        child_lf(Path(argv[1]))
        return 0
    if argv and argv[0] == "_check":
        throughput = json.loads(argv[7]) if len(argv) > 7 and argv[6] == "--throughput" else None
        child_check(Path(argv[1]), Path(argv[2]), Path(argv[3]), argv[4], argv[5], throughput)
        return 0
    if argv and argv[0] == "_predict":
        child_predict(Path(argv[1]), Path(argv[2]), Path(argv[3]), Path(argv[4]), Path(argv[5]), argv[6],
                      int(argv[7]))
        return 0
    return parent(parse(argv))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
