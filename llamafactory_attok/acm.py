"""ACM: attribute-conditioned contrastive matching of the hidden state that predicts an attribute (Eq. 8–9).

    s(a, b) = cos(θ(a), θ(b))                                                     (Eq. 8)
    L_ACM(f^a) = −log  Σ_{p∈B_k} e^{s(f^a,p)/τ} / Σ_{b∈B_1..B_K} e^{s(f^a,b)/τ}   (Eq. 9)

The denominator of Eq. 9 (positives + entries of every other book) is the sum over all valid entries.
"""

from __future__ import annotations

import torch
from torch import nn


def acm_loss(
    anchors: torch.Tensor,
    anchor_classes: torch.Tensor,
    books: torch.Tensor,
    books_valid: torch.Tensor,
    theta: nn.Module,
    tau: float,
) -> torch.Tensor:
    """Mean of Eq. 9 over the M anchors.

    anchors: (M, d) f^a, one per attribute occurrence; anchor_classes: (M,) long in [0, K);
    books: (K, 3, d); books_valid: (K, 3) bool (an unseen prototype is neither positive nor negative);
    theta: the shared projection of Eq. 8. With M = 0 the result is a zero that still depends on θ and
    the books, so every rank's graph uses the same parameters (ZeRO-3 / DDP never wait on a skipped one).
    """
    num_attributes, per_book, dim = books.shape
    flat = books.reshape(-1, dim)
    # θ runs exactly once per call, on books and anchors together: under ZeRO-3 every rank must run the same
    # module sequence, whether or not its micro-batch has anchors.
    projected = nn.functional.normalize(theta(torch.cat([flat, anchors.to(flat.dtype)])), dim=-1)
    entries, queries = projected[: flat.shape[0]], projected[flat.shape[0]:]
    if anchors.shape[0] == 0:
        return entries.sum() * 0.0
    scores = (queries @ entries.T / tau).masked_fill(~books_valid.reshape(1, -1), float("-inf"))
    positive = torch.zeros(anchors.shape[0], num_attributes, per_book, dtype=torch.bool, device=scores.device)
    positive[torch.arange(anchors.shape[0], device=scores.device), anchor_classes] = True
    positive = positive.reshape(anchors.shape[0], -1) & books_valid.reshape(1, -1)
    log_positive = torch.logsumexp(scores.masked_fill(~positive, float("-inf")), dim=-1)
    log_all = torch.logsumexp(scores, dim=-1)
    return (log_all - log_positive).mean()


class ACMProjection(nn.Module):
    """θ of Eq. 8: one Linear d→d shared by anchors and book entries, initialised to the identity; ``tau``: the
    temperature of Eq. 9, held here as ACC holds γ and the books hold μ (each module carries its own constants)."""

    def __init__(self, dim: int, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = tau
        self.attok_theta = nn.Linear(dim, dim)
        with torch.no_grad():
            self.attok_theta.weight.copy_(torch.eye(dim))
            self.attok_theta.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attok_theta(x)
