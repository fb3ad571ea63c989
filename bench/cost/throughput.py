"""Classification throughput: the one-forward attribute classifier vs `generate` on the same test set
(BENCHMARKS.md §5). Tiny Qwen2-VL with attribute tokens and ACC (untrained: speed does not depend on the weights),
CPU, batch 8, greedy generation of `--max-new-tokens` (enough for "<|token|> class name").

    python -m bench.cost.throughput [--max-new-tokens 12]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from llamafactory_attok.eval.attribute_classifier import first_answer_outputs, read_samples
from llamafactory_attok.tiny import chat_text

REPO = Path(__file__).resolve().parents[2]


def build(workdir: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from llamafactory_attok.args import AttTokArguments
    from llamafactory_attok.attach import attach
    from llamafactory_attok.rows import add_attribute_tokens, init_attribute_rows, keyword_token_ids, resize_if_needed
    from llamafactory_attok.tiny import build_tiny_model
    from llamafactory_attok.vocab import load_vocab

    model_dir = build_tiny_model(workdir / "tiny", "qwen2_vl")
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    vocab = load_vocab(REPO / "data" / "retina_vocab.yaml")
    token_ids, _ = add_attribute_tokens(processor.tokenizer, vocab)
    keyword_ids = keyword_token_ids(processor.tokenizer, vocab, token_ids)
    resize_if_needed(model, processor.tokenizer)
    init_attribute_rows(model, token_ids, keyword_ids)
    attach(model, AttTokArguments(attok=True), token_ids, keyword_ids, seed=0)
    return model, processor, token_ids


@torch.no_grad()
def generate_all(model, processor, samples, batch_size: int, max_new_tokens: int) -> None:
    processor.tokenizer.padding_side = "left"
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        inputs = processor(text=[chat_text(s.question) for s in batch],
                           images=[Image.open(s.image).convert("RGB") for s in batch], padding=True,
                           return_tensors="pt")
        model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, min_new_tokens=max_new_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    ns = parser.parse_args()
    samples = read_samples(REPO / "data" / "retina_attok_test.json")
    with tempfile.TemporaryDirectory() as tmp:
        model, processor, token_ids = build(Path(tmp))
        first_answer_outputs(model, processor, samples[:8], token_ids, ns.batch_size)  # warm-up
        start = time.perf_counter()
        first_answer_outputs(model, processor, samples, token_ids, ns.batch_size)
        one_forward = len(samples) / (time.perf_counter() - start)
        start = time.perf_counter()
        generate_all(model, processor, samples, ns.batch_size, ns.max_new_tokens)
        generation = len(samples) / (time.perf_counter() - start)
    print(json.dumps({"samples": len(samples), "one_forward_samples_per_s": one_forward,
                      "generate_samples_per_s": generation, "ratio": one_forward / generation,
                      "max_new_tokens": ns.max_new_tokens, "batch_size": ns.batch_size}, indent=2))


if __name__ == "__main__":
    main()
