"""Row-sparse forward for PEFT's trainable-token layers (the attribute rows of embed and head under LoRA, §4.1).

Why: PEFT 0.18's ``TrainableTokensLayer.forward`` builds the full merged weight (``index_copy``, V×d) on every
forward; ``F.linear`` keeps the head's copy for backward, and the backward computes a dense V×d gradient before
keeping K rows — about 2 GB extra at Qwen2.5-VL-7B's 152,064 × 3,584 in bf16. Here:

- embedding: the base lookup, then the K attribute rows written at the positions that hold them;
- head: the base logits, then the K attribute columns overwritten in place with ``h · Δᵀ`` (the linear's backward
  needs its input and weight, not its output, so autograd allows it and no second logits tensor exists);
- gradients reach only Δ (K×d). The values equal PEFT's: Δ is cast to the base weight's dtype as PEFT's
  ``index_copy`` does, and the embedding scale (Gemma-3) is applied to the written rows as PEFT applies it.

A narrow, version-checked override on *instances* (installed by ``lf_patches.loader``): the saved format
(``trainable_token_indices``, ``trainable_tokens_delta``), merge and unmerge stay PEFT's; merged layers, disabled
adapters and several active adapters take PEFT's own path.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from .errors import AttTokError

_MARK = "__attok_sparse_rows__"
_PEFT_SERIES = "0.18."


def _single_adapter(layer) -> str | None:
    """The one active, unmerged adapter of ``layer`` (None: PEFT's own path applies)."""
    active = layer.active_adapters
    if layer.disable_adapters or layer.merged or len(active) != 1 or active[0] not in layer.token_indices:
        return None
    return active[0]


# Under ZeRO-3 every rank must issue the same collectives: after ``base_layer(x)`` DeepSpeed releases the base
# weight, and reading ``base_layer.weight`` again (even for its dtype) would gather it on one rank only. So the base
# weight is touched only through the module call, and Δ's dtype is taken from the base output (the weight's dtype,
# or autocast's), which is what PEFT's ``delta.to(W)`` gives too.


def _embedding_forward(layer, x: torch.Tensor, delta: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    result = layer.base_layer(x)  # base lookup (and the layer's own embedding scale)
    scale = layer._get_embed_scale()  # a buffer (Gemma-3), never partitioned
    hits = torch.isin(x, indices)
    if not bool(hits.any()):
        return result + 0.0 * delta.sum().to(result.dtype)  # Δ takes part in every step (ZeRO-3, DDP)
    values = delta.to(result.dtype)[torch.searchsorted(indices, x[hits])]
    if scale is not None:
        values = values * scale.to(values.dtype)
    return result.index_put((hits,), values)


def _head_forward(layer, x: torch.Tensor, delta: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    logits = layer.base_layer(x)  # the attribute heads have no bias (LM heads), see use_sparse_rows
    columns = x.to(logits.dtype) @ delta.to(logits.dtype).T
    return logits.index_copy_(-1, indices, columns)


def _sparse_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    adapter = _single_adapter(self)
    if adapter is None:
        return type(self).forward(self, x, *args, **kwargs)
    order = sorted(range(len(self.token_indices[adapter])), key=self.token_indices[adapter].__getitem__)
    indices = torch.tensor([self.token_indices[adapter][i] for i in order], device=x.device)
    delta = self.trainable_tokens_delta[adapter]
    delta = delta[torch.tensor(order, device=delta.device)] if order != list(range(len(order))) else delta
    if isinstance(self.base_layer, nn.Embedding):
        return _embedding_forward(self, x, delta, indices)
    if isinstance(self.base_layer, nn.Linear):
        return _head_forward(self, x, delta, indices)
    return type(self).forward(self, x, *args, **kwargs)


def _check_peft() -> None:
    import peft
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    needed = ("active_adapters", "disable_adapters", "merged", "_get_embed_scale", "forward")
    if not peft.__version__.startswith(_PEFT_SERIES) or not all(hasattr(TrainableTokensLayer, n) for n in needed):
        raise AttTokError(
            f"llamafactory-attok's row-sparse trainable-token forward was written for PEFT {_PEFT_SERIES}x, found "
            f"{peft.__version__}; install peft>=0.18.1,<0.19.")


def use_sparse_rows(model) -> int:
    """Give every PEFT trainable-token layer of ``model`` the row-sparse forward; returns how many got it."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    layers = [m for m in model.modules() if isinstance(m, TrainableTokensLayer)]
    if layers:
        _check_peft()
    for layer in layers:
        if isinstance(layer.base_layer, nn.Linear) and layer.base_layer.bias is not None:
            continue  # a head with a bias keeps PEFT's forward (no LM head of a supported family has one)
        if not getattr(layer, _MARK, False):
            # an instance attribute, as nn.Module.__setattr__ stores any value that is no parameter, buffer or
            # module (spelled out: a plain assignment to a method is refused by the type checker)
            object.__setattr__(layer, "forward", types.MethodType(_sparse_forward, layer))
            setattr(layer, _MARK, True)
    return len(layers)
