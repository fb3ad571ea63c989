"""Run LLaMA-Factory training in this process (the installed startup hook has patched it) with probes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import torch
from transformers import TrainerCallback

from llamafactory_attok.attach import base_model_of, module_of


def effective_rows(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, d) rows the model really uses for the input embedding and the output head (through PEFT wrappers)."""
    base = base_model_of(model)
    embed, head = base.get_input_embeddings(), base.get_output_embeddings()
    weight = getattr(embed, "weight", None)
    rows = (weight if weight is not None else embed.base_layer.weight).shape[0]
    device = next(base.parameters()).device
    with torch.no_grad():
        embed_rows = embed(torch.arange(rows, device=device).unsqueeze(0))[0].float().cpu()
        dim = embed_rows.shape[1]
        head_rows = head(torch.eye(dim, device=device, dtype=embed_rows.dtype)).T.float().cpu()
    return embed_rows, head_rows


def row_hashes(matrix: torch.Tensor) -> list[str]:
    return [hashlib.sha256(row.detach().contiguous().numpy().tobytes()).hexdigest() for row in matrix]


class Probe(TrainerCallback):
    """Records row hashes at start/end, AttTok-parameter gradients, and the trainer's model."""

    def __init__(self, keep_start_rows: bool = False) -> None:
        self.keep_start_rows = keep_start_rows
        self.start_rows = None
        self.start = self.end = None
        self.grads: list[dict[str, float]] = []
        self.model = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model
        rows = effective_rows(model)
        self.start = [row_hashes(m) for m in rows]
        if self.keep_start_rows:
            self.start_rows = rows

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        module = module_of(model)
        if module is not None:
            self.grads.append({n: (p.grad.abs().sum().item() if p.grad is not None else 0.0)
                               for n, p in module.named_parameters()})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.end = [row_hashes(m) for m in effective_rows(model)]


def run_sft(args: dict, keep_start_rows: bool = False) -> Probe:
    from llamafactory.train.tuner import run_exp

    probe = Probe(keep_start_rows)
    run_exp(dict(args), callbacks=[probe])
    return probe


@torch.no_grad()
def last_logits(model, inputs) -> torch.Tensor:
    """Logits at the last position of the first row, in eval mode."""
    model.eval()
    return model(**inputs).logits[0, -1].float()


def embeds_seen_by_llm(model, inputs, plan=None) -> torch.Tensor:
    """The ``inputs_embeds`` the language model receives (visual tokens after ACC), first row; ``plan`` is handed
    to the AttTok module for the forward (None: no batch plan, as at inference)."""
    base = base_model_of(model)
    seen = {}

    def capture(module, args, kwargs):
        seen.setdefault("embeds", kwargs["inputs_embeds"].detach().clone())

    handle = base.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    module_of(model).plan = plan
    try:
        last_logits(model, inputs)
    finally:
        handle.remove()
        module_of(model).plan = None
    return seen["embeds"][0]


def run_predict(args: dict) -> None:
    """LF's ``do_predict`` in this process (the SFT workflow's prediction path); no training keys needed."""
    from llamafactory.train.tuner import run_exp

    args = {k: v for k, v in args.items() if k not in ("dataset", "max_steps", "learning_rate", "lr_scheduler_type",
                                                       "save_steps", "per_device_train_batch_size")}
    run_exp(args)


_DISABLED_LOADS = """
import sys, traceback
model, adapter, marker = sys.argv[1:4]
print(marker + "chat", file=sys.stderr, flush=True)
try:
    from llamafactory.chat import ChatModel
    ChatModel({"model_name_or_path": model, "adapter_name_or_path": adapter, "template": "qwen2_vl",
               "infer_dtype": "float32"})
except Exception:
    traceback.print_exc()
print(marker + "load", file=sys.stderr, flush=True)
from llamafactory_attok.eval.attribute_classifier import load_model_for_inference
load_model_for_inference(model, adapter=adapter)
"""


_DISABLED_LOADS_DONE: dict[tuple[str, str], dict] = {}


def disabled_adapter_loads(model: str, adapter: str) -> dict:
    """One ``ATTOK_DISABLE=1`` interpreter (the variable is read at interpreter start) that loads the AttTok
    ``adapter`` on ``model`` twice: through LF's ``ChatModel`` (chat / api / WebUI) and through
    ``load_model_for_inference``. Returns each load's stderr (``chat``, ``load``) and the exit status, which is the
    second load's (a crash ends the process as it ends ``python -c``). Cached: the tests that need it share one
    launch."""
    import subprocess
    import sys
    import tempfile

    from conftest import cli_env

    if (model, adapter) in _DISABLED_LOADS_DONE:
        return _DISABLED_LOADS_DONE[model, adapter]
    marker = "==== disabled load: "
    result = subprocess.run([sys.executable, "-c", _DISABLED_LOADS, model, adapter, marker], env=cli_env(
        ATTOK_DISABLE="1"), cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=600)
    sections = dict(part.split("\n", 1) for part in result.stderr.split(marker)[1:])
    found = {"chat": sections.get("chat", ""), "load": sections.get("load", ""), "returncode": result.returncode,
             "stderr": result.stderr}
    _DISABLED_LOADS_DONE[model, adapter] = found
    return found


# DeepSpeed JIT-compiles its CPU shared-memory comm op at every distributed start, under a file lock in
# ~/.cache/torch_extensions/<python>_<cuda>/ unless TORCH_EXTENSIONS_DIR is set, which every Python environment of
# this user shares: another venv with other include paths recompiles it in turn, and a start then waits minutes on
# the lock (seen: 6.5 min). Every torchrun launch of the tests (and `make setup`'s prebuild) uses this folder of the
# checkout's own: one build per checkout.
TORCH_EXTENSIONS = Path(__file__).resolve().parent.parent / ".pytest_cache" / "torch_extensions"
# what LF's torchrun relaunch runs; found without importing LF
LF_LAUNCHER = Path(importlib.util.find_spec("llamafactory").origin).parent / "launcher.py"

# Micro-batches of 2 on 2 ranks, in sampler order (LF's ``disable_shuffling: true``; accelerate hands batch i to rank
# i % 2); each step's pair is (rank 0, rank 1). A: attribute tokens and an image; V: an image, no attribute token
# (vanilla); T: attribute tokens, no image (LF adds its dummy image). Every kind of micro-batch shows, and a rank
# without attribute tokens or without a real image while the other has them — from step 1: a rank without any
# attribute token on the *first* step while the other has them once crashed ZeRO-3 (gloo: "Received data size
# doesn't match expected size"; the row-sparse embedding read the released base weight on one rank only).
MIXED_BATCHES = ((("A", "A"), ("V", "V")), (("A", "V"), ("V", "A")), (("T", "T"), ("A", "A")),
                 (("V", "T"), ("T", "V")), (("V", "V"), ("T", "T")), (("A", "T"), ("V", "A")))


def add_mixed_batches_dataset(data: Path, name: str = "retina_mixed_batches") -> tuple[str, int]:
    """Registers ``name``: the rows of :data:`MIXED_BATCHES` (from the AttTok / vanilla training sets; T is an AttTok
    row without its image), to be read unshuffled with ``per_device_train_batch_size: 2`` on 2 ranks. Returns the
    name and how many T rows rank 0 gets (its ``attok_samples_without_image`` after the last step)."""
    attok = json.loads((data / "retina_attok_train.json").read_text())
    vanilla = json.loads((data / "retina_vanilla_train.json").read_text())
    rows, used = [], {"A": 0, "V": 0, "T": 0}
    for step in MIXED_BATCHES:
        for micro_batch in step:
            for kind in micro_batch:
                index = used[kind]
                used[kind] += 1
                if kind == "V":
                    rows.append(vanilla[index])
                    continue
                row = json.loads(json.dumps(attok[index if kind == "A" else len(attok) - 1 - index]))
                if kind == "T":
                    row["images"] = []
                    row["messages"][0]["content"] = row["messages"][0]["content"].replace("<image>", "")
                rows.append(row)
    (data / f"{name}.json").write_text(json.dumps(rows))
    info = json.loads((data / "dataset_info.json").read_text())
    info[name] = {**info["retina_attok_train"], "file_name": f"{name}.json"}
    (data / "dataset_info.json").write_text(json.dumps(info))
    return name, sum(rank0.count("T") for rank0, _ in MIXED_BATCHES)
