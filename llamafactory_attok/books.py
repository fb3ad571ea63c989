"""Attribute embedding books (paper Eq. 5, §4.1): B_k = {a_k, e_ind(k), f̃_k}.

- a_k: the attribute token's input-embedding row (lives in the model; trained through the row mechanism).
- e_ind(k): a learnable keyword embedding, initialised as the mean of the keyword's token embeddings.
- f̃_k: the visual prototype, an EMA (μ = ``attok_ema``) of the mean over all visual tokens of this batch's images
  carrying k — token-weighted: pooled over tokens, so an image with more tokens (Qwen's dynamic resolution)
  weighs more, as Eq. 5 is written (not a mean of per-image means).

Prototypes are statistics, not parameters: they are detached, kept in fp32 as plain tensors (not buffers, so
DeepSpeed's ``module.half()/bfloat16()`` casts and HF checkpoints never touch them), and saved by us.

A prototype never seen yet is *invalid*: it is not initialised from zeros (an EMA started at the origin would
stay biased for ~1/(1-μ) = 100 updates) but set to the first batch mean of its class; until then ACC masks it
out of its keys and ACM leaves it out of both the positive and the negative sets.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


class PrototypeBank:
    """EMA visual prototypes f̃ (K×d, fp32) and which of them have been seen (Eq. 5)."""

    def __init__(self, num_attributes: int, dim: int, momentum: float) -> None:
        self.momentum = momentum
        self.prototypes = torch.zeros(num_attributes, dim, dtype=torch.float32)
        self.seen = torch.zeros(num_attributes, dtype=torch.bool)

    def to(self, device: torch.device) -> PrototypeBank:
        self.prototypes = self.prototypes.to(device)
        self.seen = self.seen.to(device)
        return self

    @staticmethod
    def class_sums(token_sums: torch.Tensor, image_labels: torch.Tensor,
                   token_counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class sums of visual tokens and token counts (Eq. 5 averages over tokens, not images).

        token_sums: (N_img, d) sum of each image's visual tokens; image_labels: (N_img, K) multi-hot {0,1};
        token_counts: (N_img,) visual tokens per image. Returns (K, d) fp32 = Σ of every token of the images
        carrying k, and (K,) fp32 = how many tokens that is. An image of 16 tokens weighs 4× one of 4 tokens
        (Qwen's dynamic resolution), exactly as if all tokens of the batch were pooled.
        """
        labels = image_labels.to(torch.float32)
        counts = token_counts.to(device=labels.device, dtype=torch.float32)
        return labels.T @ token_sums.detach().to(torch.float32), labels.T @ counts

    @torch.no_grad()
    def update(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """f̃_k ← μ f̃_k + (1−μ) · sums_k / counts_k for classes present (Eq. 5); absent classes unchanged.

        ``sums``/``counts`` are per-class token sums and token counts (:meth:`class_sums`), already all-reduced
        across ranks, so every rank applies the same update.
        """
        self.to(sums.device)
        present = counts > 0
        batch_mean = sums / counts.clamp_min(1).unsqueeze(1)
        first = present & ~self.seen
        ema = present & self.seen
        self.prototypes[first] = batch_mean[first]
        self.prototypes[ema] = self.prototypes[ema].lerp(batch_mean[ema], 1.0 - self.momentum)
        self.seen |= present

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"prototypes": self.prototypes.detach().cpu().clone(), "seen": self.seen.cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["prototypes"].shape != self.prototypes.shape:
            raise ValueError(
                f"prototype shape {tuple(state['prototypes'].shape)} does not match {tuple(self.prototypes.shape)}"
            )
        self.prototypes = state["prototypes"].to(self.prototypes.device, torch.float32).clone()
        self.seen = state["seen"].to(self.seen.device, torch.bool).clone()


def all_reduce_sums(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum per-class sums and counts over all ranks (identity when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        packed = torch.cat([sums, counts.unsqueeze(1)], dim=1)
        torch.distributed.all_reduce(packed, op=torch.distributed.ReduceOp.SUM)
        return packed[:, :-1], packed[:, -1]
    return sums, counts


def check_ranks_agree(bank: PrototypeBank) -> int:
    """Raise unless every rank holds bit-identical prototypes; return the number of ranks compared."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 1
    payload = bank.prototypes.detach().cpu().numpy().tobytes() + bank.seen.cpu().numpy().tobytes()
    digest = torch.tensor([int.from_bytes(hashlib.sha256(payload).digest()[:7], "little")], dtype=torch.int64)
    device = bank.prototypes.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    digests = [torch.zeros_like(digest, device=device) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(digests, digest.to(device))
    if len({int(d) for d in digests}) != 1:
        raise RuntimeError(f"AttTok prototypes differ across ranks (digests {[int(d) for d in digests]})")
    return len(digests)


class AttributeBooks(nn.Module):
    """Learnable keyword embeddings e_ind (K×d) plus the prototype bank; assembles B (K×3×d)."""

    def __init__(self, keyword_init: torch.Tensor, momentum: float) -> None:
        super().__init__()
        num_attributes, dim = keyword_init.shape
        self.attok_keyword_embeds = nn.Parameter(keyword_init.detach().clone().to(torch.float32))
        self.bank = PrototypeBank(num_attributes, dim, momentum)

    def forward(self, attribute_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Books B (K, 3, d) = [a_k, e_ind(k), f̃_k] and their validity (K, 3) bool.

        attribute_rows: (K, d) a_k, the current input-embedding rows of the attribute tokens.
        """
        dtype = self.attok_keyword_embeds.dtype
        prototypes = self.bank.to(attribute_rows.device).prototypes.to(dtype)
        books = torch.stack([attribute_rows.to(dtype), self.attok_keyword_embeds, prototypes], dim=1)
        valid = torch.ones(books.shape[:2], dtype=torch.bool, device=books.device)
        valid[:, 2] = self.bank.seen
        return books, valid
