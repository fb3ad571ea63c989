"""`python -m bench.data.build`: how fast `attok data classify` builds a real-size image set (BENCHMARKS.md §9).

For each N (default 2,000 and 8,000), a seeded synthetic CSV of N JPEG photos at 600×450 (smooth colour fields
with grain, quality 90, decoding about as slowly as a real dermoscopy photo; four classes at 40 / 30 / 20 / 10 %),
then, in this one run:

- the **decode floor**: PIL decodes every image once, in one process (what reading the set costs at least);
- the build with ``--no-augment`` and the build with class balancing (the default: every class up to the largest,
  i.e. 60 % of N augmented images), each as its own `attok data classify` process with ``--workers`` (default: all
  cores), ``--image-size 112`` (no upscaling: the photos are larger) and no ``--max-size``.

It prints, per N: seconds, images per second, ``build / decode floor`` and the build's peak RSS (the largest of the
build process and its workers). Goals on 2 cores: ``--no-augment`` ≤ 1.5 × the floor, balanced ≤ 3 ×, peak RSS at
8,000 within 10 % of 2,000. Nothing is downloaded; the images live in a temp folder, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = {"nevus": 0.4, "melanoma": 0.3, "keratosis": 0.2, "vascular": 0.1}
_RSS = """
import resource, sys
from llamafactory_attok.cli import main
code = main(sys.argv[1:])
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print("PEAK_RSS_KB", max(own, workers), file=sys.stderr)
sys.exit(code)
"""


def make_source(folder: Path, n: int, seed: int) -> Path:
    """N seeded 600×450 JPEGs (a smooth field: a small random image upscaled) and labels.csv."""
    rng = np.random.default_rng(seed)
    picker = random.Random(seed)
    names, weights = list(CLASSES), list(CLASSES.values())
    (folder / "imgs").mkdir(parents=True)
    rows = ["path,diagnosis"]
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 255, (9, 12, 3), dtype=np.uint8)).resize((600, 450), Image.BICUBIC)
        texture = rng.normal(0, 12, (450, 600, 3))  # skin-like grain: decodes like a photo, not a flat field
        pixels = np.clip(np.asarray(small, dtype=np.float64) + texture, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "imgs" / f"{i:06d}.jpg", quality=90)
        rows.append(f"imgs/{i:06d}.jpg,{picker.choices(names, weights)[0]}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


def decode_floor(folder: Path) -> float:
    start = time.perf_counter()
    for path in sorted((folder / "imgs").glob("*.jpg")):
        with Image.open(path) as image:
            image.load()
    return time.perf_counter() - start


def build(csv: Path, out: Path, augment: bool, workers: int | None) -> tuple[float, int, int]:
    """(seconds, peak RSS in KiB, images written) of one `attok data classify` process."""
    argv = [sys.executable, "-c", _RSS, "data", "classify", str(csv), "--format", "csv", "--image-col", "path",
            "--label-col", "diagnosis", "--modality", "derm", "--out", str(out), "--name", "bench",
            "--image-size", "112", *([] if augment else ["--no-augment"]),
            *(["--workers", str(workers)] if workers else [])]
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"build failed:\n{result.stderr[-3000:]}")
    peak = int(next(line.split()[1] for line in result.stderr.splitlines() if line.startswith("PEAK_RSS_KB")))
    manifest = json.loads((out / "bench_build.json").read_text())
    return seconds, peak, len(manifest["images"])  # originals and augmented images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000], help="N images per synthetic set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic images and labels")
    parser.add_argument("--workers", type=int, default=None, help="--workers of the builds (default: all cores)")
    ns = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="attok-data-build-") as tmp:
        for n in ns.sizes:
            folder = Path(tmp) / f"n{n}"
            csv = make_source(folder, n, ns.seed)
            floor = decode_floor(folder)
            plain = build(csv, folder / "plain", False, ns.workers)
            balanced = build(csv, folder / "balanced", True, ns.workers)
            results.append((n, floor, plain, balanced))
            print(f"N={n}: decode floor {floor:.1f} s ({n / floor:.0f} img/s, one process)", flush=True)
            for name, (seconds, peak, written) in (("--no-augment", plain), ("balanced", balanced)):
                print(f"  {name:12s} {seconds:6.1f} s  {written / seconds:6.0f} img/s written ({written} images)  "
                      f"build / decode floor {seconds / floor:.2f}  peak RSS {peak / 1024:.0f} MiB", flush=True)
    if len(results) > 1:
        (n0, _, p0, b0), (n1, _, p1, b1) = results[0], results[-1]
        print(f"peak RSS N={n1} / N={n0}: --no-augment {p1[1] / p0[1]:.3f}, balanced {b1[1] / b0[1]:.3f}")


if __name__ == "__main__":
    main()
