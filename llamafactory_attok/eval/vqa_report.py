"""VQA results as markdown: one `attok eval vqa` result (both protocols, per-type breakdowns), and the paper's
Table 2 across runs (``arm@seed``) and datasets — closed / open / overall accuracy per dataset, one table per
protocol, mean ± sample std over seeds, the protocol stated beside every table."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..data.lf_format import read_json
from ..errors import AttTokError
from .classification import arm_of, mean_std
from .vqa_protocols import BREAKDOWN_FIELDS, DESCRIPTION, PROTOCOLS

COLUMNS = (("closed", "closed_accuracy"), ("open", "open_accuracy"), ("overall", "accuracy"))


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _judge_note(scores: dict) -> str:
    failures = len(scores.get("judge_failures", []))
    return f"judge: {scores['judge']}" + (f", {failures} judge failures" if failures else "")


def result_markdown(result: dict) -> str:
    """One dataset: a row per protocol (closed / open / overall, %), then each breakdown field per protocol."""
    lines = [f"### {result['name']} ({result['samples']} questions)", "",
             "| protocol | closed | open | overall | decided by rules / judge | judge |", "|---|---|---|---|---|---|"]
    for protocol, scores in result["protocols"].items():
        cells = [_pct(scores[key]) for _, key in COLUMNS]
        lines.append(f"| {protocol} | " + " | ".join(cells) + f" | {scores['decided_by_rules']} / "
                     f"{scores['decided_by_judge']} | {_judge_note(scores)} |")
    lines += [""] + [f"- {DESCRIPTION[p]}" for p in result["protocols"]]
    text = result["protocols"].get("medevalkit", {}).get("open_text")
    if text and text["f1"] is not None:
        lines.append(f"- open answers without a judge: token F1 {_pct(text['f1'])}, BLEU-1 {_pct(text['bleu1'])}, "
                     f"exact match {_pct(text['exact_match'])}")
    for name in BREAKDOWN_FIELDS:
        tables = {p: s[f"by_{name}"] for p, s in result["protocols"].items() if f"by_{name}" in s}
        if not tables:
            continue
        first = next(iter(tables.values()))
        lines += ["", f"| {name} | n | " + " | ".join(f"{p} overall" for p in tables) + " |",
                  "|---|---|" + "---|" * len(tables)]
        for value, counts in first.items():
            cells = [_pct(t[value]["accuracy"]) for t in tables.values()]
            lines.append(f"| {value} | {counts['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_vqa_results(runs: list[tuple[str, Path]]) -> list[tuple[str, dict]]:
    """``(arm@seed, path)`` -> the JSON `attok eval vqa` wrote; a non-result, or a run scored twice on the same
    dataset, is an error naming the file."""
    results: list[tuple[str, dict]] = []
    seen: dict[tuple[str, object], Path] = {}  # (run, dataset name) -> its result file
    for run, path in runs:
        result = read_json(path)
        if not isinstance(result, dict) or not isinstance(result.get("protocols"), dict) or "name" not in result:
            raise AttTokError(f"{path}: not an `attok eval vqa` result (no `name` and `protocols`)")
        if (run, result["name"]) in seen:
            raise AttTokError(f"{path}: run {run} already has a {result['name']} result ({seen[run, result['name']]})")
        seen[run, result["name"]] = path
        results.append((run, result))
    return results


def _mean_std(seen: list[float] | None) -> str:
    return "—" if not seen else "{:.1f} ± {:.1f}".format(*mean_std(seen))


def table2_markdown(results: list[tuple[str, dict]]) -> str:
    """Per protocol: a row per arm, closed / open / overall (%) per dataset, mean ± std over the arm's seeds."""
    datasets = list(dict.fromkeys(r["name"] for _, r in results))
    values: dict = defaultdict(list)  # (protocol, arm, dataset, column) -> values over seeds
    seeds: dict[str, set] = defaultdict(set)
    for run, result in results:
        seeds[arm_of(run)].add(run)
        for protocol, scores in result["protocols"].items():
            for column, key in COLUMNS:
                if scores.get(key) is not None:
                    values[protocol, arm_of(run), result["name"], column].append(100 * scores[key])
    lines = ["## VQA (Table 2 layout): accuracy %, mean ± std over seeds"]
    for protocol in PROTOCOLS:
        if not any(key[0] == protocol for key in values):
            continue
        header = " | ".join(f"{d} {column}" for d in datasets for column, _ in COLUMNS)
        lines += ["", f"Protocol — {DESCRIPTION[protocol]}.", "", f"| arm | seeds | {header} |",
                  "|---|---|" + "---|" * (3 * len(datasets))]
        for arm, runs in seeds.items():
            cells = [_mean_std(values.get((protocol, arm, d, c))) for d in datasets for c, _ in COLUMNS]
            lines.append(f"| {arm} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines + breakdown_lines(results)) + "\n"


def breakdown_lines(results: list[tuple[str, dict]]) -> list[str]:
    """Per dataset and breakdown field (SLAKE content_type, VQA-RAD question_type): overall accuracy (%) per
    value, one column per arm and protocol, mean ± std over seeds."""
    values: dict = defaultdict(list)  # (dataset, field, value, arm, protocol) -> values over seeds
    sizes: dict = {}
    columns: dict = defaultdict(dict)  # (dataset, field) -> ordered {(arm, protocol): None}
    for run, result in results:
        for protocol, scores in result["protocols"].items():
            for name in BREAKDOWN_FIELDS:
                for value, counts in scores.get(f"by_{name}", {}).items():
                    key = (result["name"], name)
                    columns[key][arm_of(run), protocol] = None
                    sizes[key + (value,)] = counts["n"]
                    if counts["accuracy"] is not None:
                        values[key + (value, arm_of(run), protocol)].append(100 * counts["accuracy"])
    lines = []
    for (dataset, name), cols in columns.items():
        lines += ["", f"### {dataset} by {name} (overall accuracy %)", "",
                  f"| {name} | n | " + " | ".join(f"{a} {p}" for a, p in cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for (d, f, value), n in sizes.items():
            if (d, f) == (dataset, name):
                cells = [_mean_std(values.get((dataset, name, value, a, p))) for a, p in cols]
                lines.append(f"| {value} | {n} | " + " | ".join(cells) + " |")
    return lines
