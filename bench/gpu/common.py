"""Paths, constants and small helpers shared by the GPU check's parent and its child jobs (no heavy imports)."""

from __future__ import annotations

import hashlib
import json
import platform
import resource
import time
from pathlib import Path
from typing import Any

from llamafactory_attok.state import atomic_write_bytes

REPO = Path(__file__).resolve().parent.parent.parent
CONFIGS = REPO / "bench" / "gpu" / "configs"
DEFAULT_CONFIG = CONFIGS / "qwen2_5_vl_7b_config.json"
DATA = REPO / "data"
VOCAB = DATA / "retina_vocab.yaml"
TEST_SET = DATA / "retina_attok_test.json"
# arm -> (recipe in examples/, training dataset in data/)
ARMS = {"attok": ("attok_lora.yaml", "retina_attok_train"), "vanilla": ("vanilla_lora.yaml", "retina_vanilla_train")}
RATIO_GOAL = 1.05
PROBE_SAMPLES = 8  # images whose answer-position logits are compared after save -> reload
TEMPLATE = "qwen2_vl"
JIEBA_STUB = "gpu_check: jieba missing, LF's BLEU/ROUGE after generation use a whitespace splitter"
DISTRIBUTIONS = ("torch", "transformers", "peft", "accelerate", "deepspeed", "trl", "datasets", "llamafactory",
                 "llamafactory-attok", "tokenizers", "safetensors")


def write_json(path: Path, payload: Any) -> None:
    """Atomically (a reader never sees half a file); anything JSON cannot encode is written as its ``str``."""
    atomic_write_bytes(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())


def read_json(path: Path, default: Any = None) -> Any:
    """The file's JSON, or ``default`` when it does not exist (a child that died before writing it)."""
    return json.loads(path.read_text()) if path.is_file() else default


def torch_dtype(name: str) -> Any:
    """``bf16`` / ``fp32`` as a torch dtype."""
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


def lf_dtype(name: str) -> str:
    """``bf16`` / ``fp32`` as LLaMA-Factory spells it (``infer_dtype``, ``config.dtype``)."""
    return {"bf16": "bfloat16", "fp32": "float32"}[name]


def sha256(tensor: Any) -> str:
    """SHA-256 of a tensor's bytes (bf16 viewed as int16, so any dtype hashes)."""
    import torch

    flat = tensor.detach().contiguous().cpu()
    if flat.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()


def sync(device: str) -> None:
    """Wait for the device's queued work, so that a wall-clock reading covers it."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_cuda_bytes(device: str) -> int | None:
    """``torch.cuda.max_memory_allocated`` on a CUDA run, else None (GPU-only fields are null in a dry run)."""
    import torch

    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else None


def environment(device: str) -> dict:
    """Versions of the stack, the machine and, on CUDA, the GPU."""
    import importlib.metadata as md

    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "machine": platform.node(), "device": device,
                            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    for dist in DISTRIBUTIONS:
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            info[dist] = None
    info["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    nccl=".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None)
    return info


def error_line(tail: str) -> str:
    """The last line of a log tail that names an error (else its last line), at most 500 characters."""
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln or "Exception" in ln:
            return ln.strip()[-500:]
    return (lines[-1].strip() if lines else "no output")[-500:]
