"""Figures (matplotlib, headless): training curves (NTP / ACM) and confusion matrices (Fig. 7)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def training_curves(runs: dict[str, Path], out: Path) -> Path:
    """NTP and ACM loss per step for each run's ``trainer_log.jsonl``."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, folder in runs.items():
        log = [json.loads(line) for line in (Path(folder) / "trainer_log.jsonl").read_text().splitlines()]
        steps = [e for e in log if "loss_ntp" in e]
        for axis, key in zip(axes, ("loss_ntp", "loss_acm"), strict=True):
            axis.plot([e["current_steps"] for e in steps], [e[key] for e in steps], label=name)
    for axis, title in zip(axes, ("NTP loss", "ACM loss"), strict=True):
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


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
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
