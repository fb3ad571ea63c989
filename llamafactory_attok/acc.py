"""ACC: attribute-conditioned cross-attention of visual tokens over all book entries (paper Eq. 6–7).

    Att(F, B) = softmax((F W_Q)(B W_K)^T / √d) (B W_V)            (Eq. 6)
    F̂ = F + γ · Att(F, B) · W_O                                    (Eq. 7)

F: visual tokens after the merger (N×d, LLM width); B: the 3K book entries. The book's keys and values do not
depend on the image, so they are projected once per forward and shared by every visual token of every image.

Projecting the books costs 2·3K·d² multiply-adds per forward, which dominates at large K. By associativity the
same attention needs no projected book at all:

    (F W_Q)(B W_K)ᵀ = ((F W_Q) W_Kᵀ) Bᵀ              softmax(·) (B W_V) = (softmax(·) B) W_V

which costs 2·N·d² instead — cheaper whenever the N visual tokens of a forward are fewer than the 3K entries
(e.g. 64 tokens of a 224² image against K = 1000). Training takes the cheaper order per forward; the result is
the same up to floating-point rounding (tested against float64). Inference reuses cached book projections.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def acc_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    key_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Att(F, B) of Eq. 6 from projected queries F W_Q (N, d), keys B W_K and values B W_V (M, d).

    key_valid: (M,) bool; False entries (unseen prototypes) are excluded from the softmax.
    Returns (Att (N, d), attention weights (N, M)).
    """
    scores = queries @ keys.T / math.sqrt(queries.shape[-1])
    if key_valid is not None:
        scores = scores.masked_fill(~key_valid, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ values, weights


class ACCAdapter(nn.Module):
    """W_Q, W_K, W_V, W_O (d×d, no bias) and γ; ``forward`` applies Eq. 7 to the selected visual tokens."""

    def __init__(self, dim: int, gamma: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.attok_q = nn.Linear(dim, dim, bias=False)
        self.attok_k = nn.Linear(dim, dim, bias=False)
        self.attok_v = nn.Linear(dim, dim, bias=False)
        self.attok_o = nn.Linear(dim, dim, bias=False)
        self._book_cache: tuple | None = None
        self.absorb_books: bool | None = None  # None: choose per forward (N < 3K); True/False force an order
        # nn.Linear's own bound U(±1/√d), drawn from an explicit generator so every rank builds the same weights
        bound = 1.0 / math.sqrt(dim)
        with torch.no_grad():
            for layer in (self.attok_q, self.attok_k, self.attok_v, self.attok_o):
                layer.weight.uniform_(-bound, bound, generator=generator)

    def _project_books(self, entries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B W_K and B W_V: once per forward in training (they change every step), and at inference once for as
        long as the books and weights stay the same — they do not depend on the image, so a served model pays
        their 2·3K·d² cost once instead of on every request."""
        if self.training or torch.is_grad_enabled():
            self._book_cache = None
            return self.attok_k(entries), self.attok_v(entries)
        versions = tuple((w.data_ptr(), w._version) for w in (self.attok_k.weight, self.attok_v.weight))
        cache = self._book_cache
        if cache is not None and cache[0] == versions and cache[1].shape == entries.shape and torch.equal(
                cache[1], entries):
            return cache[2], cache[3]
        keys, values = self.attok_k(entries), self.attok_v(entries)
        self._book_cache = (versions, entries.clone(), keys, values)
        return keys, values

    def _absorbs(self, num_tokens: int, num_entries: int) -> bool:
        if self.absorb_books is not None:
            return self.absorb_books
        training = self.training or torch.is_grad_enabled()  # inference has the book cache instead
        return training and num_tokens < num_entries

    def forward(
        self,
        visual: torch.Tensor,
        books: torch.Tensor,
        books_valid: torch.Tensor,
        token_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """F̂ for all visual tokens; rows where ``token_mask`` is False come back unchanged.

        visual: (N, d); books: (K, 3, d); books_valid: (K, 3); token_mask: (N,) bool.
        Returns (F̂ (N, d) in the dtype of ``visual``, attention weights (N, 3K) for ACC maps).
        """
        dtype = self.attok_q.weight.dtype
        entries = books.reshape(-1, books.shape[-1]).to(dtype)
        features = visual.to(dtype)
        queries = self.attok_q(features)
        if self._absorbs(features.shape[0], entries.shape[0]):
            # Q W_K against raw entries, then W_V after the weighted sum: no (3K, d) projection is formed.
            # (attok_k.weight is read outside attok_k's forward: under ZeRO-3 attach() registers it as an
            # external parameter of this module.)
            attended, weights = acc_attention(queries @ self.attok_k.weight, entries, entries,
                                              books_valid.reshape(-1))
            attended = self.attok_v(attended)
        else:
            keys, values = self._project_books(entries)
            attended, weights = acc_attention(queries, keys, values, books_valid.reshape(-1))
        delta = self.gamma * self.attok_o(attended)
        if token_mask is not None:
            delta = delta * token_mask.to(delta.dtype).unsqueeze(-1)
        return (features + delta).to(visual.dtype), weights.detach()
