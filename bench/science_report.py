"""Markdown tables of `bench.science` results (BENCHMARKS.md §4): mean ± sample std over seeds, and the paired
per-seed difference AttTok − vanilla (same seed = same data order; both arms start from the same warm-started
model, so the spread covers data order and AttTok's own initialisation, not the base model's)."""

from __future__ import annotations

import statistics
from collections import defaultdict

from llamafactory_attok.eval.classification import mean_std

DATASET_ORDER = ("pneumonia", "breast", "retina")


def _ms(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f} (n=1)"
    mean, std = mean_std(values)
    return f"{round(mean, 3) + 0.0:.3f} ± {std:.3f}"  # + 0.0: no "-0.000"


def _get(record: dict, *path: str):
    value = record
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _rows(results: list[dict], part: str, dataset: str, arm: str) -> list[dict]:
    return sorted((r for r in results if r["part"] == part and r["dataset"] == dataset and r["arm"] == arm),
                  key=lambda r: r["seed"])


def _arm_line(label: str, rows: list[dict]) -> str:
    one = [_get(r, "test", "one_forward", "accuracy") for r in rows]
    one_f1 = [_get(r, "test", "one_forward", "macro_f1") for r in rows]
    retrieval = [_get(r, "test", "one_forward", "retrieval_accuracy") for r in rows]
    gen = [_get(r, "test", "generative", "accuracy") for r in rows]
    by_token = [_get(r, "test", "generative", "by_token", "accuracy") for r in rows]
    gen_f1 = [_get(r, "test", "generative", "macro_f1") for r in rows]
    unparseable = [_get(r, "test", "generative", "unparseable") for r in rows]
    total = _get(rows[0], "test", "generative", "total") if rows else None
    known = [u for u in unparseable if u is not None]
    unp = "—" if total is None or not known else f"{statistics.mean(known):.1f} / {total}"
    return (f"| {label} | {_ms(one)} | {_ms(one_f1)} | {_ms(retrieval)} | {_ms(gen)} | {_ms(gen_f1)} | {unp} | "
            f"{_ms(by_token)} | {len(rows)} |")


def _paired(attok: list[dict], vanilla: list[dict], *path: str) -> tuple[str, str]:
    """Mean ± std of AttTok − vanilla over seeds, and the per-seed list; both arms must have the same seeds."""
    if sorted(r["seed"] for r in attok) != sorted(r["seed"] for r in vanilla):
        seeds = {"AttTok": [r["seed"] for r in attok], "vanilla": [r["seed"] for r in vanilla]}
        raise ValueError(f"unpaired seeds: {seeds}")
    by_seed = {r["seed"]: r for r in vanilla}
    diffs = [_get(a, *path) - _get(by_seed[a["seed"]], *path) for a in attok
             if a["seed"] in by_seed and _get(a, *path) is not None and _get(by_seed[a["seed"]], *path) is not None]
    return _ms(diffs), ", ".join(f"{d:+.3f}" for d in diffs)


def report(results: list[dict]) -> str:
    out: list[str] = []
    datasets = [d for d in DATASET_ORDER if any(r["dataset"] == d for r in results)]
    warm = {r["dataset"]: r for r in results if r["part"] == "warm"}
    header = ("| arm | one-forward acc. | one-forward macro-F1 | retrieval acc. | generative acc. (text rules) | "
              "generative macro-F1 | unparseable | generative acc. (first attribute token) | seeds |\n"
              "|---|---|---|---|---|---|---|---|---|")
    if any(r["part"] == "main" for r in results):
        out.append("### Main: vanilla vs AttTok (tokens + ACC + ACM), test split, mean ± std over seeds\n")
        for dataset in datasets:
            w = warm.get(dataset)
            if w:
                out.append(f"**{dataset}** — majority-class rate: val {w['majority']['val']:.3f}, test "
                           f"{w['majority']['test']:.3f}; warm start alone (label-free, before any image training), "
                           f"val likelihood accuracy {w['val']['one_forward']['accuracy']:.3f}\n")
            out.append(header)
            for arm in ("vanilla", "attok"):
                rows = _rows(results, "main", dataset, arm)
                if rows:
                    out.append(_arm_line(arm, rows))
            out.append("")
        out.append("### Paired difference AttTok − vanilla (per seed), test split\n")
        out.append("| dataset | one-forward acc. Δ | per seed | generative acc. Δ | per seed | "
                   "one-forward macro-F1 Δ | generative macro-F1 Δ |\n|---|---|---|---|---|---|---|")
        for dataset in datasets:
            attok, vanilla = _rows(results, "main", dataset, "attok"), _rows(results, "main", dataset, "vanilla")
            if attok and vanilla:
                one, one_seeds = _paired(attok, vanilla, "test", "one_forward", "accuracy")
                gen, gen_seeds = _paired(attok, vanilla, "test", "generative", "accuracy")
                one_f1, _ = _paired(attok, vanilla, "test", "one_forward", "macro_f1")
                gen_f1, _ = _paired(attok, vanilla, "test", "generative", "macro_f1")
                out.append(f"| {dataset} | {one} | {one_seeds} | {gen} | {gen_seeds} | {one_f1} | {gen_f1} |")
        out.append("")
    ablation = [r for r in results if r["part"] == "ablation"]
    if ablation:
        dataset = ablation[0]["dataset"]
        out.append(f"### Ablation (Fig. 3) on {dataset}, test split\n")
        out.append(header)
        for label, part, arm in (("vanilla", "main", "vanilla"), ("tokens only", "ablation", "tokens"),
                                 ("+ACC", "ablation", "+ACC"), ("+ACM", "ablation", "+ACM"),
                                 ("+ACC +ACM (main's AttTok)", "main", "attok")):
            rows = _rows(results, part, dataset, arm)
            if rows:
                out.append(_arm_line(label, rows))
        out.append("")
    balanced = [r for r in results if r["part"] == "balanced"]
    if balanced:
        out.append("### Imbalance (Table 7 analogue): PneumoniaMNIST per-class F1, test split\n")
        out.append("| training data | arm | F1 normal (one forward) | F1 pneumonia (one forward) | "
                   "F1 normal (generative) | F1 pneumonia (generative) | seeds |\n|---|---|---|---|---|---|---|")
        for label, part in (("as released (≈ 1:3)", "main"), ("offline balanced", "balanced")):
            for arm in ("vanilla", "attok"):
                rows = _rows(results, part, "pneumonia", arm)
                if not rows:
                    continue
                cells = []
                for scoring in ("one_forward", "generative"):
                    for cls in ("normal", "pneumonia"):
                        if scoring == "one_forward":
                            values = [_get(r, "test", scoring, "per_class", cls, "f1") for r in rows]
                        else:
                            values = [_get(r, "test", scoring, "per_class_f1", cls) for r in rows]
                        cells.append(_ms(values))
                out.append(f"| {label} | {arm} | {' | '.join(cells)} | {len(rows)} |")
        out.append("")
    grid = [r for r in results if r["part"] == "grid"]
    if grid:
        out.append(f"### γ and λ (Table 8 analogue) on {grid[0]['dataset']}, one seed, one-forward accuracy\n")
        out.append("| γ (ACC) | λ (initial ACM weight) | val acc. | val macro-F1 | test acc. | test macro-F1 |\n"
                   "|---|---|---|---|---|---|")
        for r in grid:
            gamma, weight = r.get("attok_acc_gamma", 0.1), r.get("attok_acm_weight", 1.0)
            out.append(f"| {gamma:g} | {weight:g} | {_get(r, 'val', 'one_forward', 'accuracy'):.3f} | "
                       f"{_get(r, 'val', 'one_forward', 'macro_f1'):.3f} | "
                       f"{_get(r, 'test', 'one_forward', 'accuracy'):.3f} | "
                       f"{_get(r, 'test', 'one_forward', 'macro_f1'):.3f} |")
        out.append("")
    changed: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in sorted((r for r in results if r["part"] == "main" and "changed" in r), key=lambda r: r["seed"]):
        changed[r["dataset"]].setdefault(r["arm"], r["changed"])  # the lowest seed of each arm
    for dataset in datasets:
        arms = {arm: changed[dataset][arm] for arm in ("vanilla", "attok") if arm in changed[dataset]}
        if not arms:
            continue
        groups = list(dict.fromkeys(g for per_arm in arms.values() for g in per_arm))
        out.append(f"### Parameters changed by training ({dataset}, lowest seed): elements that differ from the "
                   "warm-started model\n")
        out.append("| group | " + " | ".join(arms) + " |\n|---|" + "---|" * len(arms))
        for group in groups:
            cells = ["—" if group not in arms[a] else f"new, {arms[a][group][1]:,} trained" if arms[a][group][0] < 0
                     else f"{arms[a][group][0]:,} / {arms[a][group][1]:,}" for a in arms]
            out.append(f"| {group} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)
