"""The ACM weight λ(t) of L = L_NTP + λ(t)·L_ACM (paper §4.3): starts at ``attok_acm_weight``, reaches 0 at the
last optimizer step (linear or cosine), or stays constant."""

from __future__ import annotations

import math


def acm_weight(initial: float, schedule: str, step: int, total_steps: int) -> float:
    """λ at optimizer step ``step`` (0-based) of ``total_steps``."""
    if schedule == "constant":
        return initial
    progress = min(1.0, step / max(1, total_steps - 1))
    if schedule == "linear":
        return initial * (1.0 - progress)
    if schedule == "cosine":
        return initial * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown ACM schedule {schedule!r}")
