"""The table every dataset builder prints at the end: how many samples of each class (or kind) went into each split.

Read back from the dataset files just written, so the table shows what LF will load, not what the builder meant.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from .lf_format import iter_json_array, read_json


def count_table(rows_by_column: dict[str, list[dict]], key: Callable[[dict], str], key_title: str) -> str:
    """An aligned text table: one line per key (class, answer type, attribute token), one column per split, and a
    total line. ``rows_by_column``: column title -> the rows of that column."""
    return counts_table({column: Counter(key(row) for row in rows) for column, rows in rows_by_column.items()},
                        key_title)


def counts_table(counts: dict[str, Counter[str]], key_title: str) -> str:
    """:func:`count_table` from the counts themselves: column title -> key -> count."""
    keys = sorted({k for c in counts.values() for k in c})
    columns = list(counts)
    width = max([len(key_title), len("total"), *(len(k) for k in keys)])
    widths = [max(len(c), 5) for c in columns]
    lines = ["  ".join([key_title.ljust(width), *(c.rjust(w) for c, w in zip(columns, widths, strict=True))])]
    for k in keys:
        cells = [str(counts[c][k]).rjust(w) for c, w in zip(columns, widths, strict=True)]
        lines.append("  ".join([k.ljust(width), *cells]))
    totals = [str(sum(counts[c].values())).rjust(w) for c, w in zip(columns, widths, strict=True)]
    lines.append("  ".join(["total".ljust(width), *totals]))
    return "\n".join(lines)


def read_rows(out: str | Path, dataset_files: dict[str, str]) -> dict[str, list[dict]]:
    """Dataset name -> its rows, for the files a build wrote into ``out``."""
    return {name: read_json(Path(out) / file) for name, file in dataset_files.items()}


def classification_table(out: str | Path, prefix: str) -> str:
    """Per class: training originals, augmented copies, val and test images (the open-ended datasets; the
    close-ended ones hold the same images), counted row by row (:func:`.lf_format.iter_json_array`: a build of any
    size is never held in memory to be counted)."""
    counts: dict[str, Counter[str]] = {"train": Counter(), "train +augmented": Counter(), "val": Counter(),
                                       "test": Counter()}
    for split in ("train", "val", "test"):
        path = Path(out) / f"{prefix}_open_{split}.json"
        for row in iter_json_array(path) if path.is_file() else ():
            column = "train +augmented" if split == "train" and row.get("source") == "augmented" else split
            counts[column][str(row.get("label"))] += 1
    return counts_table(counts, "class")
