"""Interpreter start-up cost of the installed hook: `python -c pass` with the hook vs with ATTOK_DISABLE=1
(which skips the .pth import entirely), alternated so both see the same machine load.

    python -m bench.startup [--runs 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def _time_once(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    return time.perf_counter() - start


def measure(runs: int) -> dict[str, float]:
    hooked = {k: v for k, v in os.environ.items() if k != "ATTOK_DISABLE"}
    disabled = {**hooked, "ATTOK_DISABLE": "1"}
    with_hook, without = [], []
    for _ in range(runs):
        with_hook.append(_time_once(hooked))
        without.append(_time_once(disabled))
    return {
        "median_with_hook_ms": statistics.median(with_hook) * 1e3,
        "median_disabled_ms": statistics.median(without) * 1e3,
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
