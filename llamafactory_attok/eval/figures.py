"""Figures (matplotlib, headless): training curves (NTP / ACM) and confusion matrices (Fig. 7)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

from ..data.lf_format import read_jsonl
from ..state import atomic_write_bytes
from ..trainer_log import latest_per_step

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def save_figure(fig, out: str | Path, dpi: int = 100) -> Path:
    """Render ``fig`` to PNG in memory, close it, then write the file atomically (umask-honouring, durable)."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())
    return Path(out)


def training_curves(runs: dict[str, Path], out: Path) -> Path:
    """NTP and ACM loss per step for each run's ``trainer_log.jsonl`` (:func:`latest_per_step`)."""
    logs = {name: [e for _, e in read_jsonl(Path(folder) / "trainer_log.jsonl") if isinstance(e, dict)]
            for name, folder in runs.items()}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, log in logs.items():
        for axis, key in zip(axes, ("loss_ntp", "loss_acm"), strict=True):
            points = latest_per_step(log, key)
            axis.plot([step for step, _ in points], [value for _, value in points], label=name)
    for axis, title in zip(axes, ("NTP loss", "ACM loss"), strict=True):
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.legend()
    fig.tight_layout()
    return save_figure(fig, out)


def confusion_figure(classes: list[str], confusion: list[list[int]], out: Path, title: str = "") -> Path:
    fig, axis = plt.subplots(figsize=(1.2 * len(classes) + 3, 1.0 * len(classes) + 2))
    columns = [*classes, "unparseable"][: len(confusion[0])]
    image = axis.imshow(confusion, cmap="Blues")
    axis.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    for i, row in enumerate(confusion):
        for j, value in enumerate(row):
            axis.text(j, i, str(value), ha="center", va="center")
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    fig.colorbar(image)
    fig.tight_layout()
    return save_figure(fig, out)
