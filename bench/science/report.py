"""Markdown report of `bench.science` v2 results (BENCHMARKS.md §4): the tower's probe, the inclusion rule (val
only), every arm per dataset, and the paired comparisons with their tests over images and over replicates.

Every arm is shown with **balanced accuracy and macro-F1** beside accuracy (computed from the stored per-image
predictions; an unparseable answer counts for no class), with an "always the majority class" row and a chance row: on
imbalanced test sets a constant answer "wins" on accuracy. An arm that puts ≥ 90 % of the test images into one class
in a run is flagged (⚑). A dataset outside the inclusion rule gets no comparison and no p-value — only why it is
excluded."""

from __future__ import annotations

import statistics

import numpy as np

from bench.science.stats import (
    INCLUSION_MARGIN,
    INCLUSION_RULE,
    balanced_comparison,
    bootstrap_interval,
    hierarchical_interval,
    included,
    mcnemar,
    minimum_detectable_effect,
    replicate_test,
)

PRIMARY = ("attok", "matched", "generative")  # the primary endpoint: Δ generative balanced accuracy, attok − matched
PRIMARY_TEXT = ("**Primary endpoint** (fixed in the protocol before any v3 run): generative balanced accuracy, "
                "attok − matched (the capacity-matched control), on the datasets that pass the inclusion rule; its "
                "interval resamples replicates, then images. Everything else is secondary.")
COMPARISONS = (("attok", "matched"), ("attok", "vanilla"), ("attok", "class_rows"), ("matched", "class_rows"),
               ("class_rows", "vanilla"), ("tokens", "class_rows"), ("tokens", "vanilla"), ("+ACC", "vanilla"),
               ("+ACM", "vanilla"), ("attok", "tokens"))
SCORERS = (("generative", "generative"), ("one_forward", "one forward (answer rule)"))
ONE_CLASS_SHARE = 0.9  # an arm answering one class for this share of the test images is flagged
# the arm rows of a dataset's table, in this order
COMPARISON_ORDER = ("vanilla", "class_rows", "matched", "tokens", "+ACC", "+ACM", "attok")


def _ms(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values) + 0.0:.3f} ± {statistics.stdev(values):.3f}"


def _replicates(test: dict) -> str:
    if test.get("note"):
        return f"{test['note']} (every Δ {test['mean']:+.4f})"
    if test["p"] is None:
        return "p=—"
    return f"p={_p(test['p'])}, [{test['low']:+.4f}, {test['high']:+.4f}]"


def _mde(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def runs_of(results: dict, dataset: str, arm: str) -> list[dict]:
    return sorted((r for r in results["runs"] if r["dataset"] == dataset and r["arm"] == arm),
                  key=lambda r: (r["replicate"], r["seed"]))


def correct(run: dict, scorer: str, truth: list[int]) -> list[int]:
    predicted = run[scorer]["test"]["predicted"]
    if len(predicted) != len(truth):
        raise ValueError(f"{run['dataset']} {run['arm']} r{run['replicate']} s{run['seed']}: {len(predicted)} "
                         f"predictions for {len(truth)} test images")
    return [int(p == t) for p, t in zip(predicted, truth, strict=True)]


def paired_runs(results: dict, dataset: str, arm: str, base: str) -> list[tuple[dict, dict]]:
    """(arm run, base run) of every (replicate, seed) both arms have, in replicate / seed order."""
    by_key = {(r["replicate"], r["seed"]): r for r in runs_of(results, dataset, base)}
    return [(r, by_key[(r["replicate"], r["seed"])]) for r in runs_of(results, dataset, arm)
            if (r["replicate"], r["seed"]) in by_key]


def compare(results: dict, dataset: str, arm: str, base: str, scorer: str) -> dict | None:
    """The paired comparison ``arm`` − ``base`` on the (replicate, seed) pairs both have."""
    truth = results["datasets"][dataset]["truth"]["test"]
    pairs = paired_runs(results, dataset, arm, base)
    if not pairs:
        return None
    a = [correct(r, scorer, truth) for r, _ in pairs]
    z = [correct(b, scorer, truth) for _, b in pairs]
    tests = [mcnemar(x, y) for x, y in zip(a, z, strict=True)]
    replicates = sorted({r["replicate"] for r, _ in pairs})
    per_replicate = [float(np.mean([t["delta"] for (r, _), t in zip(pairs, tests, strict=True)
                                    if r["replicate"] == rep])) for rep in replicates]
    mean, low, high = bootstrap_interval(a, z)
    both = hierarchical_interval(a, z, [r["replicate"] for r, _ in pairs])
    return {"pairs": len(pairs), "mean": mean, "low": low, "high": high, "replicate_deltas": per_replicate,
            "replicate_test": replicate_test(per_replicate), "mcnemar": tests, "hierarchical": both,
            "mde": minimum_detectable_effect(per_replicate)}


def inclusion(results: dict, dataset: str) -> dict | None:
    vanilla = [r["one_forward"]["val"]["accuracy"] for r in runs_of(results, dataset, "vanilla")
               if "val" in r["one_forward"]]
    if not vanilla:
        return None
    return included(vanilla, results["datasets"][dataset]["val_labels"])


def balanced_scores(predicted: list[int], truth: list[int], classes: int) -> tuple[float, float]:
    """(balanced accuracy, macro-F1) over ``classes`` classes; a prediction outside them (−1: unparseable) is wrong
    and counts for no class; a class never predicted has precision 0 (F1 0)."""
    recalls, f1s = [], []
    for c in range(classes):
        tp = sum(p == c and t == c for p, t in zip(predicted, truth, strict=True))
        support, chosen = truth.count(c), predicted.count(c)
        recall = tp / support if support else 0.0
        precision = tp / chosen if chosen else 0.0
        recalls.append(recall)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return float(np.mean(recalls)), float(np.mean(f1s))


def one_class_share(predicted: list[int]) -> float:
    """The largest share of the images given one single class."""
    return max(predicted.count(c) for c in set(predicted)) / len(predicted)


def _arm_scores(runs: list[dict], scorer: str, truth: list[int], classes: int) -> str:
    """``accuracy | balanced accuracy | macro-F1`` cells (mean ± std over runs), ⚑ when runs answer one class."""
    accuracy, balanced, macro = [], [], []
    flagged = 0
    for run in runs:
        predicted = run[scorer]["test"]["predicted"]
        accuracy.append(run[scorer]["test"]["accuracy"])
        b, f = balanced_scores(predicted, truth, classes)
        balanced.append(b)
        macro.append(f)
        flagged += one_class_share(predicted) >= ONE_CLASS_SHARE
    flag = f" ⚑ {flagged}/{len(runs)}" if flagged else ""
    return f"{_ms(accuracy)}{flag} | {_ms(balanced)} | {_ms(macro)}"


def _reference_rows(truth: list[int], classes: int) -> list[str]:
    """The scores of always answering the majority class, and of guessing uniformly at random (expected)."""
    majority = max(range(classes), key=truth.count)
    b, f = balanced_scores([majority] * len(truth), truth, classes)
    cells = f"{truth.count(majority) / len(truth):.3f} ⚑ | {b:.3f} | {f:.3f}"
    chance = f"{1 / classes:.3f} | {1 / classes:.3f} | —"
    return [f"| always the majority class | — | {cells} | {cells} | — | — | — | — | — | — |",
            f"| chance (uniform guess, expected) | — | {chance} | {chance} | — | — | — | — | — | — |"]


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}–{max(values)}"


def _changed(runs: list[dict]) -> str:
    """Per group, the elements changed against the warm model: min–max over the arm's runs."""
    def per_run(run: dict) -> tuple[int, int, int, int, int, int]:
        groups = run.get("changed") or {}
        layers = groups.get("LLM layers", [0, 0])
        return (layers[0], layers[1],
                sum(v[0] for k, v in groups.items() if k.endswith("warm-model rows") and v[0] > 0),
                sum(v[1] for k, v in groups.items() if "attribute rows" in k),
                sum(v[1] for k, v in groups.items() if k.startswith(("AttTok modules", "matched control"))),
                groups.get("vision tower + merger", [0, 0])[0])

    columns = list(zip(*(per_run(r) for r in runs), strict=True))
    return (f"{_span(list(columns[0]))} / {columns[1][0]} | {_span(list(columns[2]))} | {_span(list(columns[3]))} | "
            f"{_span(list(columns[4]))} | {_span(list(columns[5]))}")


def primary(results: dict, dataset: str) -> dict | None:
    """The primary endpoint on ``dataset`` (:data:`PRIMARY`): :func:`~bench.science.stats.balanced_comparison`."""
    arm, base, scorer = PRIMARY
    pairs = paired_runs(results, dataset, arm, base)
    if not pairs:
        return None
    info = results["datasets"][dataset]
    return balanced_comparison([r[scorer]["test"]["predicted"] for r, _ in pairs],
                               [b[scorer]["test"]["predicted"] for _, b in pairs], info["truth"]["test"],
                               len(info["classes"]), [r["replicate"] for r, _ in pairs])


def _primary_line(dataset: str, result: dict) -> str:
    low, high = result["hierarchical"]
    return (f"- **{dataset}, primary endpoint** — generative balanced accuracy, attok − matched: "
            f"{result['mean']:+.4f} over {result['pairs']} run pairs; 95 % interval over replicates then images "
            f"[{low:+.4f}, {high:+.4f}]; over replicates {_replicates(result['replicate_test'])}; minimum "
            f"detectable Δ (80 % power) {_mde(result['mde'])}; Δ per replicate "
            f"{', '.join(f'{d:+.4f}' for d in result['replicate_deltas'])}")


def report(results: dict) -> str:
    rule = results.get("protocol", {}).get("inclusion_rule", INCLUSION_RULE)
    version = results.get("version", 2)
    lines = [f"# Science v{version} (`python -m bench.science run`)", ""]
    if version >= 3:
        lines += [PRIMARY_TEXT, "", f"Inclusion rule (the v2 rule, from val only; the v3 datasets are those v2 "
                  f"included): {rule}.", "", "Decision rules, the same for every arm: generative — greedy decoding "
                  "with the training positions, parsed by `attok eval classify`'s rules (unparseable = wrong); one "
                  "forward — `attok predict --mode answer`: the probability of each class's whole answer as the arm's "
                  "dataset writes it (AttTok: attribute token and name; the others: the name).", ""]
    else:
        lines += [f"Inclusion rule, fixed before any v2 test number was read (v1 had already shown BreastMNIST stuck "
                  f"at the majority with the same recipes, so the rule was not blind to the datasets): {rule}.", ""]
    datasets = list(results["datasets"])
    if results.get("towers"):
        lines += ["## The vision tower (label-free SimCLR pretraining of tower + merger, training images only)", "",
                  "| dataset | replicates | linear probe on val: random tower | pretrained tower | val majority | "
                  "NT-Xent loss first → last | seconds |", "|---|---|---|---|---|---|---|"]
        for dataset in datasets:
            towers = [t for t in results["towers"] if t["dataset"] == dataset]
            if towers:
                lines.append(
                    f"| {dataset} | {len(towers)} | {_ms([t['probe_val_random_tower'] for t in towers])} | "
                    f"{_ms([t['probe_val_pretrained_tower'] for t in towers])} | {towers[0]['val_majority']:.3f} | "
                    f"{_ms([t['pretraining_loss'][0] for t in towers])} → "
                    f"{_ms([t['pretraining_loss'][-1] for t in towers])}"
                    f" | {statistics.mean(t['seconds'] for t in towers):.0f} |")
        lines.append("")
    if results.get("warm"):
        lines += ["## Warm start (label-free, text only, both answer forms)", "",
                  "| dataset | replicates | rows | loss first → last logged | seconds |", "|---|---|---|---|---|"]
        for dataset in datasets:
            warm = [w for w in results["warm"] if w["dataset"] == dataset]
            if warm:
                seconds = statistics.mean(w["seconds"] for w in warm)
                lines.append(f"| {dataset} | {len(warm)} | {warm[0]['rows']} | {_ms([w['loss_first'] for w in warm])}"
                             f" → {_ms([w['loss_last'] for w in warm])} | {seconds:.0f} |")
        lines.append("")
    lines += ["## Inclusion (val only)", "",
              "| dataset | vanilla val accuracy | val majority | margin | in the headline |", "|---|---|---|---|---|"]
    decisions = {}
    for dataset in datasets:
        stored = results.get("inclusion", {}).get(dataset)  # fixed by the run, from val only
        decision = stored or inclusion(results, dataset)
        decisions[dataset] = decision
        if decision:
            lines.append(f"| {dataset} | {decision['vanilla_val_accuracy']:.3f} | {decision['val_majority']:.3f} | "
                         f"{decision['margin']:+.3f} | {'yes' if decision['included'] else '**no**'} |")
    lines.append("")
    headline = []
    for dataset in datasets:
        runs = [r for r in results["runs"] if r["dataset"] == dataset]
        if not runs:
            continue
        status = decisions.get(dataset)
        tag = "" if status and status["included"] else " — **not in the headline** (fails the inclusion rule)"
        test = results["datasets"][dataset]["truth"]["test"]
        classes = len(results["datasets"][dataset]["classes"])
        majority = max(test.count(c) for c in set(test)) / len(test)
        lines += [f"## {dataset}{tag}", "", f"Test images: {len(test)} (majority rate {majority:.3f}, chance "
                  f"{1 / classes:.3f}); mean ± sample std over runs (replicates × seeds); ⚑ k/n: in k of n runs the "
                  f"arm gave one class to ≥ {ONE_CLASS_SHARE:.0%} of the images.", "",
                  "| arm | runs | one forward: accuracy | balanced accuracy | macro-F1 | generative: accuracy | "
                  "balanced accuracy | macro-F1 | unparseable | LLM-layer elements changed | embed/head warm-row "
                  "elements changed | rows added | AttTok modules | tower changed |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for arm in [a for a in COMPARISON_ORDER if any(r["arm"] == a for r in runs)]:
            arm_runs = runs_of(results, dataset, arm)
            lines.append(f"| {arm} | {len(arm_runs)} | {_arm_scores(arm_runs, 'one_forward', test, classes)} | "
                         f"{_arm_scores(arm_runs, 'generative', test, classes)} | "
                         f"{statistics.mean(r['generative']['test']['unparseable'] for r in arm_runs):.1f} | "
                         f"{_changed(arm_runs)} |")
        lines += _reference_rows(test, classes)
        if not (status and status["included"]):
            why = (f"vanilla's val accuracy {status['vanilla_val_accuracy']:.3f} against the val majority "
                   f"{status['val_majority']:.3f} (margin {status['margin']:+.3f}; the rule asks at least "
                   f"{INCLUSION_MARGIN:+.3f})" if status else "no vanilla val runs yet")
            lines += ["", f"**Excluded: {why}.** No comparison is tested on this dataset (no p-values, no "
                      "intervals): an arm cannot be said to beat a baseline that has not learned the task.", ""]
            continue
        if version >= 3 and (found := primary(results, dataset)) is not None:
            lines += ["", _primary_line(dataset, found)]
            headline.append((dataset, "primary", "", "", found))
        lines += ["", "Secondary comparisons (Δ accuracy):", "",
                  "| comparison | scorer | pairs | mean Δ | 95 % CI over replicates, then images | minimum "
                  "detectable Δ (80 % power) | 95 % bootstrap CI (images; runs fixed) | Δ per replicate | t-test over "
                  "replicates: p, 95 % CI (runs random) | McNemar p < 0.05 (arm better / worse) | images only arm "
                  "right / only baseline right |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for arm, base in COMPARISONS:
            for scorer, label in SCORERS:
                result = compare(results, dataset, arm, base, scorer)
                if result is None:
                    continue
                tests = result["mcnemar"]
                better = sum(t["p"] < 0.05 and t["b"] > t["c"] for t in tests)
                worse = sum(t["p"] < 0.05 and t["b"] < t["c"] for t in tests)
                rt = result["replicate_test"]
                h_low, h_high = result["hierarchical"]
                lines.append(
                    f"| {arm} − {base} | {label} | {result['pairs']} | {result['mean']:+.4f} | "
                    f"[{h_low:+.4f}, {h_high:+.4f}] | {_mde(result['mde'])} | "
                    f"[{result['low']:+.4f}, {result['high']:+.4f}] | "
                    f"{', '.join(f'{d:+.4f}' for d in result['replicate_deltas'])} | "
                    f"n={rt['n']}, {_replicates(rt)} | {better} / {worse} of {len(tests)} | "
                    f"{sum(t['b'] for t in tests)} / {sum(t['c'] for t in tests)} |")
                if status and status["included"] and (arm, base) in (("attok", "vanilla"), ("attok", "class_rows"),
                                                                     ("attok", "matched")):
                    headline.append((dataset, arm, base, label, result))
        lines.append("")
    if headline:
        lines += ["## Headline (datasets that pass the inclusion rule)", ""]
        for dataset, arm, base, label, r in headline:
            if arm == "primary":
                lines.append(_primary_line(dataset, r))
                continue
            lines.append(f"- {dataset}, {label}: {arm} − {base} = {r['mean']:+.4f}; over replicates then images "
                         f"[{r['hierarchical'][0]:+.4f}, {r['hierarchical'][1]:+.4f}], minimum detectable Δ "
                         f"{_mde(r['mde'])}; "
                         f"over images (runs fixed) [{r['low']:+.4f}, {r['high']:+.4f}]; over replicates "
                         f"{_replicates(r['replicate_test'])}")
        lines.append("")
    if results.get("repro"):
        lines += ["## Reproducibility (the same run trained again from scratch)", "",
                  "| dataset | what was repeated | replicate | seed | identical | differences (runs: images, one "
                  "forward / generative; preparation: weights, tower / warm start) |", "|---|---|---|---|---|---|"]
        for r in results["repro"]:
            differ = " / ".join(f"{v}" for v in r["differing_images"].values())
            lines.append(f"| {r['dataset']} | {r['arm']} | {r['replicate']} | {r['seed']} | "
                         f"{'yes' if r['identical'] else '**no**'} | {differ} |")
        lines.append("")
    for wall in results.get("wall_seconds", []):
        lines.append(f"Wall time of a `run` with parts {', '.join(wall['parts'])}: {wall['seconds'] / 60:.1f} min "
                     f"({wall['workers']} workers).")
    return "\n".join(lines) + "\n"
