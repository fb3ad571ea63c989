"""`make bench`: items 1–5 and 7 of BENCHMARKS.md, results into bench_results/ (≈ 10 min on an idle 2-core VM).

The accuracy grid (item 4) uses 40 training images per class and 4 epochs — a subset of the official splits, said
next to the numbers in BENCHMARKS.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench_results"

STEPS = [
    ("startup", ["-m", "bench.cost.startup", "--runs", "60"]),
    ("flops", ["-m", "bench.cost.flops"]),
    ("flops_families", ["-m", "bench.cost.flops_families"]),
    ("params_memory", ["-m", "bench.cost.params_memory"]),
    ("step_time", ["-m", "bench.cost.step_time", "--steps", "60", "--rss"]),
    ("throughput", ["-m", "bench.cost.throughput"]),
    ("accuracy", ["-m", "bench.quality.accuracy", "--out", str(OUT / "accuracy")]),
]


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, args in STEPS:
        print(f"== {name}: python {' '.join(args)}", flush=True)
        result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, check=True)
        (OUT / f"{name}.txt").write_text(result.stdout)
        print(result.stdout[-3000:], flush=True)


if __name__ == "__main__":
    main()
