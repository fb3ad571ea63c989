"""The capacity-matched control arm (``matched``, BENCHMARKS §4): AttTok's trainable capacity without its attribute
semantics.

What AttTok trains beyond vanilla, and what ``matched`` puts in its place (the same places, the same shapes):

- K attribute rows of the embedding and the head → K rows of the class names' own tokens (``class_rows``'s rows);
- ACC (Eq. 6–7: W_Q, W_K, W_V, W_O, d×d each, γ) on the visual tokens after the merger → the same adapter, the same
  hook point, γ and initialisation, attending over **K free learnable vectors** instead of the 3K book entries;
- the K learnable keyword entries e_ind (K×d) → those K free vectors (K×d), drawn at random at the embedding's scale
  and tied to no attribute: no token row, no keyword text, no visual prototype, no label;
- θ of ACM (d×d + d) and the ACM loss → nothing: θ enters no forward pass (it projects hidden states for Eq. 8–9
  only), so it adds no capacity to the model that answers; the control's loss is NTP alone, since ACM needs books
  with attribute positives. Its d² + d elements are reported beside the count (``params`` of the report).

So the control differs from AttTok only in what the capacity means: answers without attribute tokens, an adapter
over vectors that are not attribute books, no alignment loss. The module is built from the plugin's public parts
(:class:`~llamafactory_attok.acc.ACCAdapter`, the family's feature hook) by a ``TrainerCallback`` — no LF internals
— and saved beside the model (``matched_control.safetensors``); scoring attaches it again.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bench.science.run import ClassRowsCallback

STATE_FILE = "matched_control.safetensors"


class FreeBookACC(nn.Module):
    """ACC (Eq. 6–7) over K free learnable vectors: F̂ = F + γ·Att(F, E)·W_O with E (K, d) trainable, tied to no
    attribute."""

    def __init__(self, dim: int, gamma: float, num_vectors: int, scale: float, seed: int) -> None:
        super().__init__()
        from llamafactory_attok.acc import ACCAdapter

        generator = torch.Generator().manual_seed(seed)
        self.acc = ACCAdapter(dim, gamma, generator)
        self.entries = nn.Parameter(torch.randn(num_vectors, 1, dim, generator=generator) * scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        valid = torch.ones(self.entries.shape[:2], dtype=torch.bool, device=features.device)
        refined, _ = self.acc(features, self.entries, valid)
        return refined


def attach_control(model: nn.Module, control: FreeBookACC) -> torch.utils.hooks.RemovableHandle:
    """Hang ``control`` on the model (``model.matched_control``: the trainer optimises it) and apply it to the
    visual tokens at ACC's own hook point (the family's feature module, e.g. Qwen2-VL's merger)."""
    from llamafactory_attok.families import family_for

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    family = family_for(base.config)
    base.matched_control = control

    def hook(module, args, kwargs, output):
        features = family.read_features(output)
        return output if features is None else family.write_features(output, control(features))

    return family.feature_module(base).register_forward_hook(hook, with_kwargs=True)


def build_control(model: nn.Module, num_classes: int, gamma: float, seed: int) -> FreeBookACC:
    """The control adapter for ``model``: LLM width, γ of AttTok, vectors at the input embedding's scale (its rows'
    standard deviation), seeded."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embedding = base.get_input_embeddings().weight
    return FreeBookACC(embedding.shape[1], gamma, num_classes, float(embedding.detach().float().std()), seed)


def trainable_elements(control: FreeBookACC) -> int:
    return sum(p.numel() for p in control.parameters())


class MatchedControlCallback(ClassRowsCallback):
    """``class_rows``'s K rows plus :class:`FreeBookACC`, trained with the model; saved to ``STATE_FILE`` in the
    output folder and taken off the model before LF saves it (a plain model, as the other arms)."""

    def __init__(self, token_ids: list[int], gamma: float, seed: int) -> None:
        super().__init__(token_ids)
        self.gamma, self.seed = gamma, seed
        self.control: FreeBookACC | None = None
        self.handle = None

    def on_init_end(self, args, state, control, model=None, **kwargs):
        super().on_init_end(args, state, control, model=model, **kwargs)
        self.control = build_control(model, len(self.token_ids), self.gamma, self.seed)
        self.handle = attach_control(model, self.control)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        from safetensors.torch import save_file

        super().on_train_end(args, state, control, model=model, **kwargs)
        self.handle.remove()
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        del base.matched_control
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.control.state_dict().items()},
                  str(Path(args.output_dir) / STATE_FILE), metadata={"gamma": repr(self.gamma)})


def load_control(model: nn.Module, folder: Path) -> None:
    """Attach the trained control adapter saved in ``folder`` to a loaded model (scoring)."""
    from safetensors import safe_open

    with safe_open(str(folder / STATE_FILE), "pt") as saved:
        state = {key: saved.get_tensor(key) for key in saved.keys()}
        gamma = float(saved.metadata()["gamma"])
    num, _, dim = state["entries"].shape
    control = FreeBookACC(dim, gamma, num, 1.0, 0)
    control.load_state_dict(state)
    attach_control(model, control.to(next(model.parameters()).device))
