"""Run LLaMA-Factory training in this process (the installed startup hook has patched it) with probes."""

from __future__ import annotations

import hashlib

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
