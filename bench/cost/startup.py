"""Interpreter start-up cost of the installed hook: `python -c pass` with the hook installed vs with its
`llamafactory_attok.pth` / `.start` files moved aside (restored afterwards), alternated so both arms see the same
machine load.

    python -m bench.cost.startup [--runs 60]
"""

from __future__ import annotations

import argparse
import contextlib
import site
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def _time_once() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


def hook_files() -> list[Path]:
    found = [p for d in site.getsitepackages() for p in Path(d).glob("llamafactory_attok.*")]
    return [p for p in found if p.suffix in (".pth", ".start")]


@contextlib.contextmanager
def hook_moved_aside() -> Iterator[None]:
    files = hook_files()
    for path in files:
        path.rename(path.with_name(path.name + ".bench-off"))
    try:
        yield
    finally:
        for path in files:
            path.with_name(path.name + ".bench-off").rename(path)


def measure(runs: int) -> dict[str, float]:
    if not hook_files():
        raise SystemExit("llamafactory_attok.pth is not installed in this interpreter's site-packages")
    with_hook, without = [], []
    for _ in range(runs):
        with_hook.append(_time_once())
        with hook_moved_aside():
            without.append(_time_once())
    return {
        "median_with_hook_ms": statistics.median(with_hook) * 1e3,
        "median_without_hook_ms": statistics.median(without) * 1e3,
        "added_ms": (statistics.median(with_hook) - statistics.median(without)) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=60)
    result = measure(parser.parse_args().runs)
    for key, value in result.items():
        print(f"{key}: {value:.2f}")


if __name__ == "__main__":
    main()
