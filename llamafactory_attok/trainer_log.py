"""Reading LF's ``trainer_log.jsonl`` for curves (the report's figures, the LlamaBoard panel)."""

from __future__ import annotations

from typing import Any


def latest_per_step(log: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """``(step, value of key)`` in step order, one per step: LF appends to ``trainer_log.jsonl``, so a run resumed
    from a checkpoint logs the steps after it again — the later entry (the run that went on) is the one kept."""
    latest = {e["current_steps"]: e[key] for e in log if key in e and "current_steps" in e}
    return sorted(latest.items())
