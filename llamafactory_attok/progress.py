"""Progress that a person can read both in a terminal and in a log file.

On a terminal: one tqdm bar. Anywhere else (output redirected to a file, a cluster job's log): a line on stderr
every :data:`LOG_EVERY_S` seconds and a last line with the count and rate, so a long build never runs silently.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_EVERY_S = 30.0


def _is_terminal() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "img",
             every_s: float = LOG_EVERY_S) -> Iterator[T]:
    """Yield ``items``, showing progress as a bar (terminal) or as periodic log lines ("attok: images: 300/1510
    (20 %), 41.2 img/s") plus a final line (elsewhere)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if _is_terminal():
        yield from tqdm(items, desc=desc, total=total, unit=unit)
        return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            _line(desc, done, total, unit, now - start)
    _line(desc, done, total, unit, time.monotonic() - start, final=True)


def _line(desc: str, done: int, total: int | None, unit: str, elapsed: float, final: bool = False) -> None:
    of = f"/{total} ({100 * done / total:.0f} %)" if total else ""
    rate = f", {done / elapsed:.1f} {unit}/s" if elapsed > 0 else ""
    end = f" in {elapsed:.1f} s" if final else ""
    print(f"attok: {desc}: {done}{of}{rate}{end}", file=sys.stderr, flush=True)
