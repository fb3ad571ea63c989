"""`attok eval report`: any number of runs in one table, mean ± std across seeds, protocol stated beside it;
VQA results (`attok eval vqa`) in the layout of the paper's Table 2, both protocols."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from ..data.lf_format import read_json, write_atomic
from ..errors import AttTokError
from ..safe_paths import same_file
from .classification import arm_of, mean_std
from .vqa_report import read_vqa_results, table2_markdown

PROTOCOL = (
    "Protocol: one row per arm; `name@seed` runs of the same arm are pooled: n is the number of runs, and a "
    "value is their mean ± sample std when n ≥ 2 (one run: the value alone, no spread). "
    "Generation-based scores parse the generated text after normalisation (attribute tokens stripped, lowercase, "
    "punctuation removed; a prediction matching no class or several is wrong and counted as unparseable). "
    "One-forward scores (`attok predict`, no generation) are of the mode the column 'scored by' names: attribute "
    "(the attribute-token logits at the first answer position), answer (the likelihood of each class's whole answer "
    "as the dataset writes it: one rule for AttTok and vanilla models) or likelihood (the class name's); runs of "
    "different kinds are never pooled into one arm."
)
METRICS = ("accuracy", "macro_f1", "balanced_accuracy", "retrieval_accuracy", "unparseable")
RATES = ("accuracy", "macro_f1", "balanced_accuracy", "retrieval_accuracy")  # in [0, 1]
EXPLAINED = {
    "balanced_accuracy": "the mean of per-class recalls: a model answering one class for every image scores 1/K",
    "retrieval_accuracy": "the attribute token whose output-head row is nearest (cosine) to the hidden state that "
                          "predicts the answer's first token, against the true one (paper Table 6; `attok predict` "
                          "only)",
    "unparseable": "generations that name no class or several (counted wrong; `attok eval classify` only)",
}
PER_CLASS_KEYS = ("precision", "recall", "f1", "support")


def distinct_runs(pairs: list[tuple[str, str]], flag: str, names_repeat: bool = False) -> list[tuple[str, Path]]:
    """``(run, path)`` pairs in order; one run name given twice (unless ``names_repeat``: VQA runs name one file per
    dataset) or one file given twice would be dropped or counted twice: an error naming both."""
    kept: list[tuple[str, Path]] = []
    for run, given in pairs:
        path = Path(given)
        for seen_run, seen_path in kept:
            if run == seen_run and not names_repeat:
                raise AttTokError(f"{flag} {run} is given twice ({seen_path} and {path}); name each run once "
                                  "(arm@seed, e.g. attok@1 and attok@2)")
            if run != seen_run and same_file(path, seen_path):  # one run's repeats: read_vqa_results names them
                raise AttTokError(f"{flag} {run}={path} is the same file as {flag} {seen_run}={seen_path}; each "
                                  "result belongs to one run")
        kept.append((run, path))
    return kept


def build_report(runs: dict[str, Path], out: Path, figures: list[Path] | None = None,
                 vqa_runs: list[tuple[str, Path]] | None = None) -> str:
    """``runs``: run name (``arm@seed``) → metrics JSON (from ``attok predict`` or ``attok eval classify``);
    ``vqa_runs``: ``(arm@seed, result JSON of attok eval vqa)``, any number of datasets per run (Table 2)."""
    lines = ["# AttTok evaluation report", ""]
    if runs:
        lines += _classification_lines(runs, out)
    if vqa_runs:
        lines += ([""] if runs else []) + [table2_markdown(read_vqa_results(vqa_runs)).rstrip("\n")]
    for figure in figures or []:
        lines += ["", f"![{figure.stem}]({figure.name})"]
    text = "\n".join(lines) + "\n"
    write_atomic(out, text)
    return text


def _cell(values: list[float], digits: int = 3) -> str:
    """One run: the value; several: mean ± sample std."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def read_metrics(path: Path, run: str) -> dict:
    """A run's metrics file, checked: every known metric a number of its range (rates in [0, 1], ``unparseable`` a
    count), per-class entries numbers too; a wrong type or range is an error naming the file and the key."""
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise AttTokError(f"{path}: expected a JSON object of metrics, got {type(metrics).__name__}")
    found = [key for key in METRICS if key in metrics]
    if not found:
        raise AttTokError(f"{path}: no metrics ({', '.join(METRICS)}) in run {run}; expected the "
                          "<out>.metrics.json of `attok predict` or the --out of `attok eval classify`")
    for key in found:
        value = metrics[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise AttTokError(f"{path}: {key} is {value!r}, not a number (run {run})")
        if key in RATES and not 0 <= value <= 1:
            raise AttTokError(f"{path}: {key} {value} is outside [0, 1] (run {run}); not a metrics file of attok?")
        if key == "unparseable" and (value < 0 or value != int(value)):
            raise AttTokError(f"{path}: unparseable {value} is not a count (run {run})")
    confusion = metrics.get("confusion")
    if "accuracy" in metrics and isinstance(confusion, list) and confusion and all(
            isinstance(row, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in row)
            for row in confusion):
        total = sum(map(sum, confusion))
        diagonal = sum(row[i] for i, row in enumerate(confusion) if i < len(row))
        if total and abs(diagonal / total - metrics["accuracy"]) > 1e-6:
            raise AttTokError(f"{path}: accuracy {metrics['accuracy']} but its own confusion matrix gives "
                              f"{diagonal / total:.6f} (run {run}); the file was edited or mixed up")
    for name, entry in (metrics.get("per_class") or {}).items():
        support = entry.get("support") if isinstance(entry, dict) else None
        if support is not None and (isinstance(support, bool) or not isinstance(support, int) or support < 0):
            raise AttTokError(f"{path}: per_class[{name!r}] support {support!r} is not a count (run {run})")
        if not isinstance(entry, dict) or any(isinstance(entry.get(k), bool) or not isinstance(entry.get(k, 0),
                                                                                              (int, float))
                                              for k in PER_CLASS_KEYS):
            raise AttTokError(f"{path}: per_class[{name!r}] must map {', '.join(PER_CLASS_KEYS)} to numbers "
                              f"(run {run})")
    return metrics


def scoring_kind(metrics: dict) -> str:
    """How a run was scored: `attok predict`'s mode (one forward), or generated text (`attok eval classify`)."""
    mode = metrics.get("mode")
    return f"one forward ({mode})" if isinstance(mode, str) else "generation (eval classify)"


def _per_class(metrics: dict) -> dict[str, dict[str, float]]:
    """Per-class precision / recall / F1 / support of one run (``per_class``); older files: F1 only."""
    if isinstance(metrics.get("per_class"), dict):
        return {name: {k: float(v[k]) for k in PER_CLASS_KEYS if k in v} for name, v in metrics["per_class"].items()}
    if isinstance(metrics.get("per_class_f1"), dict):
        return {name: {"f1": float(v)} for name, v in metrics["per_class_f1"].items()}
    return {}


def _majority_row(supports: set[tuple[tuple[str, int], ...]], present: list[str]) -> list[str]:
    """The always-the-largest-class baseline, from the runs' per-class support (one test set)."""
    if len(supports) != 1:
        return []
    support = dict(next(iter(supports)))
    total, k = sum(support.values()), len(support)
    if not total or not k:
        return []
    name, count = max(support.items(), key=lambda kv: kv[1])
    share = count / total
    values = {"accuracy": share, "macro_f1": 2 * share / (1 + share) / k, "balanced_accuracy": 1 / k}
    cells = [f"{values[key]:.3f}" if key in values else "—" for key in present]
    return [f"| *majority class ({name!r}, baseline)* | — | — | " + " | ".join(cells) + " |"]


def _confusion_links(runs: dict[str, Path], out: Path) -> list[str]:
    """Links to each run's confusion-matrix figure (written next to its metrics file), where it exists."""
    links = []
    for run, path in runs.items():
        stem = path.name.removesuffix(".metrics.json").removesuffix(".json")
        figure = path.with_name(f"{stem}.confusion.png")
        if figure.is_file():
            links.append(f"- {run}: [{figure.name}]({os.path.relpath(figure, out.resolve().parent)})")
    return ["Confusion matrices (rows = truth, columns = prediction):", "", *links] if links else []


def _classification_lines(runs: dict[str, Path], out: Path) -> list[str]:
    by_arm: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    per_class: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    seeds: dict[str, int] = defaultdict(int)
    supports: set[tuple[tuple[str, int], ...]] = set()
    reference: tuple[str, frozenset[str]] | None = None  # the first run with per-class scores, and its classes
    kinds: dict[str, tuple[str, str]] = {}  # arm -> (its first run, how that run was scored)
    for run, path in runs.items():
        metrics = read_metrics(path, run)
        arm = arm_of(run)
        kind = scoring_kind(metrics)
        first = kinds.setdefault(arm, (run, kind))
        if first[1] != kind:
            raise AttTokError(f"--run {first[0]} ({first[1]}) and {run} ({kind}, {path}) are scored differently: "
                              "one arm pools runs of one kind; give them different arm names (e.g. "
                              f"{arm}_{kind.split()[-1].strip('()')}@…)")
        seeds[arm] += 1
        classes = _per_class(metrics)
        if classes:
            reference = reference or (run, frozenset(classes))
            if frozenset(classes) != reference[1]:
                only = ", ".join(sorted(frozenset(classes) ^ reference[1]))
                raise AttTokError(f"runs {reference[0]} and {run} ({path}) were scored on different classes ({only} "
                                  "in one only): a report pools runs of one test set; report them separately")
        for name, entry in classes.items():
            for key, value in entry.items():
                per_class[arm][name][key].append(value)
        if classes and all("support" in entry for entry in classes.values()):
            supports.add(tuple((name, int(entry["support"])) for name, entry in classes.items()))
        for key in METRICS:
            if key in metrics:
                by_arm[arm][key].append(float(metrics[key]))
    present = [m for m in METRICS if any(m in v for v in by_arm.values())]
    lines = [PROTOCOL, "", "| arm | scored by | n | " + " | ".join(present) + " |",
             "|---|---|---|" + "---|" * len(present)]
    for arm, values in by_arm.items():
        cells = [_cell(values[key], 0 if key == "unparseable" else 3) + ("" if len(values[key]) == seeds[arm] else
                                                                      f" (n={len(values[key])})")
                 if key in values else "—" for key in present]
        lines.append(f"| {arm} | {kinds[arm][1]} | {seeds[arm]} | " + " | ".join(cells) + " |")
    lines += _majority_row(supports, present)
    notes = [f"- `{key}`: {EXPLAINED[key]}." for key in present if key in EXPLAINED]
    if notes:
        lines += ["", *notes]
    if per_class:
        lines += ["", *_per_class_lines(per_class, seeds)]
    confusion = _confusion_links(runs, out)
    if confusion:
        lines += ["", *confusion]
    return lines


def _per_class_lines(per_class: dict[str, dict[str, dict[str, list[float]]]], seeds: dict[str, int]) -> list[str]:
    """Per-class support, precision, recall and F1 (paper Table 7): one row per arm and class (n as above)."""
    keys = [k for k in ("support", "precision", "recall", "f1")
            if any(k in entry for classes in per_class.values() for entry in classes.values())]
    lines = ["Per class (support = test images of the class; n runs as above):", "",
             "| arm | n | class | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for arm, classes in per_class.items():
        for name, entry in classes.items():
            cells = [(_cell(entry[k], 0 if k == "support" else 3) if entry.get(k) else "—") for k in keys]
            lines.append(f"| {arm} | {seeds[arm]} | {name} | " + " | ".join(cells) + " |")
    return lines
