"""Statistics of the science experiment (§4): tests over images and over independent replicates.

Every function takes per-image correctness vectors (1 = right, 0 = wrong or unparseable) of the **same test images in
the same order**, so every comparison is paired by image.

- :func:`mcnemar` — exact McNemar test of one pair of runs (same replicate, same training seed): two-sided binomial
  test on the discordant images (b = only the arm right, c = only the baseline right).
- :func:`replicate_test` — paired t-test over replicates: one Δ per replicate (the mean over its training seeds),
  H0: mean Δ = 0; with 3 replicates it has 2 degrees of freedom, so only a large, consistent Δ reaches p < 0.05.
- :func:`bootstrap_interval` — 95 % percentile interval of the mean Δ (over every replicate and seed) when the
  *images* are resampled with replacement (the same draw for every run: the pairing is kept).
- :func:`hierarchical_interval` — one 95 % interval over replicates *and* images: replicates are resampled with
  replacement, then the images (one draw shared by a draw's replicates: the test set is one sample), so neither the
  training runs nor the test images are held fixed.
- :func:`balanced_comparison` — the same for Δ *balanced accuracy* (the primary endpoint of v3): the hierarchical
  interval recomputes balanced accuracy on every draw of replicates and images.
- :func:`minimum_detectable_effect` — the smallest true Δ the replicate-level paired t-test detects with 80 % power
  at α = 0.05 (two-sided), from the observed spread of the replicate Δs: ``(t₀.₉₇₅ + t₀.₈) · sd / √n`` with n − 1
  degrees of freedom.
- :func:`included` — the inclusion rule, fixed before any v2 test number was read (v1 had already
  shown BreastMNIST stuck at the majority with the same recipes) and computed from val only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INCLUSION_MARGIN = 0.03
INCLUSION_RULE = ("a dataset enters the headline when the vanilla arm's mean one-forward **val** accuracy (over all "
                  f"its runs) beats the val majority rate by at least {INCLUSION_MARGIN:.0%} points; decided from "
                  "val only, before any test number is read")


def mcnemar(arm: Sequence[int], base: Sequence[int]) -> dict:
    """Exact two-sided McNemar test; ``b`` images only ``arm`` gets right, ``c`` only ``base``."""
    from scipy.stats import binomtest

    a, z = np.asarray(arm, dtype=bool), np.asarray(base, dtype=bool)
    if a.shape != z.shape:
        raise ValueError(f"paired vectors differ in length: {a.shape} vs {z.shape}")
    b, c = int((a & ~z).sum()), int((~a & z).sum())
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"b": b, "c": c, "delta": (b - c) / len(a), "p": p}


def replicate_test(deltas: Sequence[float]) -> dict:
    """One-sample t-test of the replicate-level Δs against 0 (two-sided), with the 95 % t interval of their mean —
    the interval that counts the training runs as random (the bootstrap over images holds them fixed)."""
    from scipy.stats import t as student
    from scipy.stats import ttest_1samp

    values = np.asarray(deltas, dtype=float)
    if len(values) < 2:
        return {"n": len(values), "mean": float(values.mean()) if len(values) else None, "t": None, "p": None,
                "low": None, "high": None}
    mean = float(values.mean())
    if np.all(values == values[0]):  # no spread: t is 0/0 or ±inf, and 3 equal values prove little; say so
        return {"n": len(values), "mean": mean, "t": None, "p": None, "low": mean, "high": mean,
                "note": "no spread"}
    result = ttest_1samp(values, 0.0)
    half = float(student.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return {"n": len(values), "mean": mean, "sd": float(values.std(ddof=1)), "t": float(result.statistic),
            "p": float(result.pvalue), "low": mean - half, "high": mean + half}


def bootstrap_interval(arms: Sequence[Sequence[int]], bases: Sequence[Sequence[int]], *, draws: int = 2000,
                       seed: int = 0) -> tuple[float, float, float]:
    """Mean Δ accuracy over the run pairs and its 95 % bootstrap interval over images (pairing kept)."""
    a = np.asarray(arms, dtype=float)
    z = np.asarray(bases, dtype=float)
    if a.shape != z.shape or a.ndim != 2:
        raise ValueError(f"need (runs, images) arrays of one shape, got {a.shape} and {z.shape}")
    per_image = (a - z).mean(0)  # mean Δ over runs, per image
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, per_image.size, size=(draws, per_image.size))
    means = per_image[samples].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(per_image.mean()), float(low), float(high)


def hierarchical_interval(arms: Sequence[Sequence[int]], bases: Sequence[Sequence[int]],
                          replicates: Sequence[int], *, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the mean Δ accuracy, resampling replicates (with their runs) and then images.

    ``arms`` / ``bases``: per run pair, per-image correctness (paired); ``replicates``: the replicate of each pair."""
    a = np.asarray(arms, dtype=float)
    z = np.asarray(bases, dtype=float)
    if a.shape != z.shape or a.ndim != 2 or len(replicates) != a.shape[0]:
        raise ValueError(f"need (runs, images) arrays of one shape and a replicate per run, got {a.shape}, "
                         f"{z.shape}, {len(replicates)}")
    ids = sorted(set(replicates))
    per_replicate = np.stack([(a - z)[[r == i for r in replicates]].mean(0) for i in ids])  # (replicates, images)
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, len(ids), size=(draws, len(ids)))
    images = rng.integers(0, a.shape[1], size=(draws, a.shape[1]))
    means = np.array([per_replicate[chosen[d]][:, images[d]].mean() for d in range(draws)])
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def balanced_accuracies(predicted: np.ndarray, truth: np.ndarray, classes: int,
                        weights: np.ndarray | None = None) -> np.ndarray:
    """Balanced accuracy (mean per-class recall) of each row of ``predicted`` (runs, images); ``weights``: how many
    times each image counts (a bootstrap draw); a class with no (drawn) image is left out of the mean; an
    unparseable answer (−1) is wrong."""
    w = np.ones(truth.shape[0]) if weights is None else weights
    right = (predicted == truth[None, :]).astype(float) * w[None, :]
    recalls = []
    for c in range(classes):
        in_class = truth == c
        support = w[in_class].sum()
        if support:
            recalls.append(right[:, in_class].sum(1) / support)
    return np.mean(recalls, axis=0)


def balanced_comparison(arms: Sequence[Sequence[int]], bases: Sequence[Sequence[int]], truth: Sequence[int],
                        classes: int, replicates: Sequence[int], *, draws: int = 2000, seed: int = 0) -> dict:
    """Δ balanced accuracy of paired runs (per-image predictions of the same test images): the mean Δ, the Δ per
    replicate (mean over its runs), the 95 % hierarchical interval (replicates resampled with their runs, then the
    images — one draw shared by the draw's replicates — and balanced accuracy recomputed on the drawn images), the
    paired t-test over replicates and the minimum detectable Δ."""
    a, z, t = np.asarray(arms), np.asarray(bases), np.asarray(truth)
    if a.shape != z.shape or a.ndim != 2 or a.shape[1] != t.shape[0] or len(replicates) != a.shape[0]:
        raise ValueError(f"need (runs, images) predictions of one shape, a truth per image and a replicate per run, "
                         f"got {a.shape}, {z.shape}, {t.shape}, {len(replicates)}")
    deltas = balanced_accuracies(a, t, classes) - balanced_accuracies(z, t, classes)
    ids = sorted(set(replicates))
    rows = [np.array([r == i for r in replicates]) for i in ids]
    per_replicate = [float(deltas[row].mean()) for row in rows]
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(draws):
        chosen = rng.integers(0, len(ids), size=len(ids))
        weights = np.bincount(rng.integers(0, t.shape[0], size=t.shape[0]), minlength=t.shape[0]).astype(float)
        drawn = np.concatenate([np.flatnonzero(rows[c]) for c in chosen])
        d = balanced_accuracies(a[drawn], t, classes, weights) - balanced_accuracies(z[drawn], t, classes, weights)
        means.append(d.mean())
    low, high = np.percentile(means, [2.5, 97.5])
    return {"pairs": a.shape[0], "mean": float(deltas.mean()), "replicate_deltas": per_replicate,
            "hierarchical": (float(low), float(high)), "replicate_test": replicate_test(per_replicate),
            "mde": minimum_detectable_effect(per_replicate)}


def minimum_detectable_effect(deltas: Sequence[float], *, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The true mean Δ the paired t-test over these replicates would detect with ``power`` (two-sided ``alpha``),
    taking their observed standard deviation as the truth; None below 2 replicates or without spread."""
    from scipy.stats import t as student

    values = np.asarray(deltas, dtype=float)
    if len(values) < 2 or np.all(values == values[0]):
        return None
    df = len(values) - 1
    return float((student.ppf(1 - alpha / 2, df) + student.ppf(power, df)) * values.std(ddof=1)
                 / np.sqrt(len(values)))


def included(vanilla_val_accuracies: Sequence[float], val_labels: Sequence[str]) -> dict:
    """The inclusion rule (:data:`INCLUSION_RULE`), from val numbers only."""
    majority = max(list(val_labels).count(c) for c in set(val_labels)) / len(val_labels)
    mean = float(np.mean(vanilla_val_accuracies))
    return {"rule": INCLUSION_RULE, "vanilla_val_accuracy": mean, "val_majority": majority,
            "margin": mean - majority, "included": bool(mean - majority >= INCLUSION_MARGIN - 1e-9)}  # 0.57 − 0.54
