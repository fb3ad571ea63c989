"""`attok predict`'s one-forward scoring vs a plain transformers loop on the same batches (BENCHMARKS.md §9b).

A tiny Qwen2-VL with attribute tokens and ACC (untrained: speed does not depend on the weights), CPU, ``--n``
synthetic 600×450 JPEGs (seeded, the size of a dermoscopy photo), batch 8. Measured in one run, in this order:

- ``forward only``: the model's forward over batches encoded beforehand (the floor no data pipeline can beat);
- ``plain transformers``: per batch, PIL decode + the processor (chat text, images) + the forward — the loop a user
  writes by hand;
- ``attok predict`` (:func:`~llamafactory_attok.eval.attribute_classifier.first_answer_outputs`, LF's template and
  mm plugin, the attribute logits and hidden state read) with 0, 1, … ``--max-workers`` DataLoader workers.

    python -m bench.cost.predict_throughput [--n 256] [--max-workers 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.cost.throughput import build
from llamafactory_attok.eval.attribute_classifier import (
    encoded_batches,
    first_answer_outputs,
    prompt_encoder,
    read_samples,
)
from llamafactory_attok.tiny import chat_text

REPO = Path(__file__).resolve().parents[2]


def make_dataset(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` noisy 600×450 JPEGs with the RetinaMNIST test sample's questions and answers, as LF sharegpt JSON."""
    rng = np.random.default_rng(seed)
    rows = json.loads((REPO / "data" / "retina_attok_test.json").read_text())
    (folder / "images").mkdir(parents=True)
    out = []
    for i in range(n):
        pixels = rng.integers(0, 255, (450, 600, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{i:05d}.jpg", quality=90)
        out.append({**rows[i % len(rows)], "images": [f"images/{i:05d}.jpg"]})
    (folder / "test.json").write_text(json.dumps(out))
    return folder / "test.json"


@torch.no_grad()
def forward_only(model, batches: list[dict]) -> float:
    start = time.perf_counter()
    for inputs in batches:
        model(**inputs)
    return time.perf_counter() - start


@torch.no_grad()
def plain_loop(model, processor, samples, batch_size: int) -> float:
    processor.tokenizer.padding_side = "left"
    start = time.perf_counter()
    for begin in range(0, len(samples), batch_size):
        batch = samples[begin:begin + batch_size]
        images = []
        for sample in batch:
            with Image.open(sample.image) as opened:
                images.append(opened.convert("RGB"))
        inputs = processor(text=[chat_text(s.question) for s in batch], images=images, padding=True,
                           return_tensors="pt")
        model(**inputs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="images (default 256)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-workers", type=int, default=2, help="largest DataLoader worker count tried")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        samples = read_samples(make_dataset(Path(tmp) / "data", ns.n))
        model, processor, token_ids = build(Path(tmp))
        first_answer_outputs(model, processor, samples[:8], token_ids, ns.batch_size, show_progress=False)  # warm
        encoder = prompt_encoder(processor, None)
        batches = [encoder.batch(b, "cpu", model)
                   for b in encoded_batches(encoder, samples, set(token_ids), ns.batch_size)]
        seconds = {"forward only": forward_only(model, batches),
                   "plain transformers": plain_loop(model, processor, samples, ns.batch_size)}
        for workers in range(ns.max_workers + 1):
            start = time.perf_counter()
            first_answer_outputs(model, processor, samples, token_ids, ns.batch_size, show_progress=False,
                                 workers=workers)
            seconds[f"attok predict, {workers} worker(s)"] = time.perf_counter() - start
    plain = seconds["plain transformers"]
    print(f"{ns.n} images of 600x450, batch {ns.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"{'loop':<30} {'images/s':>9} {'vs plain transformers':>22}")
    for name, value in seconds.items():
        print(f"{name:<30} {ns.n / value:>9.1f} {plain / value:>21.2f}x")
    print(json.dumps({"n": ns.n, "batch_size": ns.batch_size,
                      "images_per_s": {k: ns.n / v for k, v in seconds.items()}}))


if __name__ == "__main__":
    main()
