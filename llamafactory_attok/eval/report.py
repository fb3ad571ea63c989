"""`attok eval report`: any number of runs in one table, mean ± std across seeds, protocol stated beside it;
VQA results (`attok eval vqa`) in the layout of the paper's Table 2, both protocols."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..data.lf_format import read_json, write_atomic
from ..errors import AttTokError
from ..safe_paths import same_file
from .classification import arm_of, mean_std
from .vqa_report import read_vqa_results, table2_markdown

PROTOCOL = (
    "Protocol: one row per arm; `name@seed` runs of the same arm are pooled as mean ± sample std (n = seeds). "
    "Generation-based scores parse the generated text after normalisation (attribute tokens stripped, lowercase, "
    "punctuation removed; a prediction matching no class or several is wrong and counted as unparseable). "
    "One-forward scores read the attribute-token logits at the first answer position (no generation); vanilla "
    "models are scored by class-name likelihood."
)
METRICS = ("accuracy", "macro_f1", "retrieval_accuracy", "unparseable")


def distinct_runs(pairs: list[tuple[str, str]], flag: str, names_repeat: bool = False) -> list[tuple[str, Path]]:
    """``(run, path)`` pairs in order; one run name given twice (unless ``names_repeat``: VQA runs name one file per
    dataset) or one file given twice would be dropped or counted twice: an error naming both."""
    kept: list[tuple[str, Path]] = []
    for run, path in pairs:
        path = Path(path)
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
        lines += _classification_lines(runs)
    if vqa_runs:
        lines += ([""] if runs else []) + [table2_markdown(read_vqa_results(vqa_runs)).rstrip("\n")]
    for figure in figures or []:
        lines += ["", f"![{figure.stem}]({figure.name})"]
    text = "\n".join(lines) + "\n"
    write_atomic(out, text)
    return text


def _classification_lines(runs: dict[str, Path]) -> list[str]:
    by_arm: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    per_class: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    seeds: dict[str, int] = defaultdict(int)
    for run, path in runs.items():
        metrics = read_json(path)
        if not isinstance(metrics, dict):
            raise AttTokError(f"{path}: expected a JSON object of metrics, got {type(metrics).__name__}")
        if not any(isinstance(metrics.get(key), (int, float)) for key in METRICS):
            raise AttTokError(f"{path}: no metrics ({', '.join(METRICS)}) in run {run}; expected the "
                              "<out>.metrics.json of `attok predict` or the --out of `attok eval classify`")
        seeds[arm_of(run)] += 1
        for name, f1 in _class_f1(metrics).items():
            per_class[arm_of(run)][name].append(f1)
        for key in METRICS:
            if isinstance(metrics.get(key), (int, float)):
                by_arm[arm_of(run)][key].append(float(metrics[key]))
    present = [m for m in METRICS if any(m in v for v in by_arm.values())]
    lines = [PROTOCOL, "", "| arm | seeds | " + " | ".join(present) + " |", "|---|---|" + "---|" * len(present)]
    for arm, values in by_arm.items():
        cells = []
        for key in present:
            if key in values:
                mean, std = mean_std(values[key])
                cells.append(f"{mean:.3f} ± {std:.3f}")
            else:
                cells.append("—")
        lines.append(f"| {arm} | {seeds[arm]} | " + " | ".join(cells) + " |")
    if per_class:
        lines += ["", *_per_class_lines(per_class, seeds)]
    return lines


def _class_f1(metrics: dict) -> dict[str, float]:
    """Per-class F1 of one run: ``per_class`` (attok predict) or ``per_class_f1`` (attok eval classify)."""
    if isinstance(metrics.get("per_class"), dict):
        return {name: float(v["f1"]) for name, v in metrics["per_class"].items() if isinstance(v, dict) and "f1" in v}
    if isinstance(metrics.get("per_class_f1"), dict):
        return {name: float(v) for name, v in metrics["per_class_f1"].items()}
    return {}


def _per_class_lines(per_class: dict[str, dict[str, list[float]]], seeds: dict[str, int]) -> list[str]:
    """Per-class F1 (paper Table 7): one row per arm, one column per class, mean ± std over seeds."""
    classes = list(dict.fromkeys(name for values in per_class.values() for name in values))
    lines = ["Per-class F1 (mean ± std over seeds):", "", "| arm | seeds | " + " | ".join(classes) + " |",
             "|---|---|" + "---|" * len(classes)]
    for arm, values in per_class.items():
        cells = []
        for name in classes:
            if values.get(name):
                mean, std = mean_std(values[name])
                cells.append(f"{mean:.3f} ± {std:.3f}")
            else:
                cells.append("—")
        lines.append(f"| {arm} | {seeds[arm]} | " + " | ".join(cells) + " |")
    return lines
