"""Narrow workarounds for PEFT 0.18.x's trainable-token layers under DeepSpeed ZeRO-3 (applied by lf_patches.loader).

PEFT's ZeRO-3 initialisation of ``trainable_token_indices`` (``TrainableTokensLayer._collect_token_weights``)
hard-codes a CUDA device for the broadcast buffer, so it cannot run on CPU ranks (gloo). The replacement below
is the same algorithm with the buffer on the device the process group's backend needs.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist


def _broadcast_device() -> torch.device:
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collect_token_weights(self, weight: torch.Tensor, rows: torch.Tensor, embed_dim: int) -> torch.Tensor:
    """Rank 0 reads the rows of the gathered weight, then broadcasts them (PEFT's algorithm, any device)."""
    from peft.utils.integrations import gather_params_ctx

    device = _broadcast_device()
    with gather_params_ctx([weight], modifier_rank=None):
        if dist.get_rank() == 0:
            token_weights = weight[rows].clone().to(device)
        else:
            token_weights = torch.empty((len(rows), embed_dim), dtype=weight.dtype, device=device)
    dist.broadcast(token_weights, src=0)
    return token_weights.to(weight.device)


@contextmanager
def zero3_trainable_tokens_on_any_device():
    """Swap in the device-agnostic collector while PEFT builds the trainable-token layers."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    original = TrainableTokensLayer._collect_token_weights
    TrainableTokensLayer._collect_token_weights = _collect_token_weights
    try:
        yield
    finally:
        TrainableTokensLayer._collect_token_weights = original
