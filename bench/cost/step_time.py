"""Training-step time of AttTok vs vanilla on the tiny Qwen2-VL (CPU), measured alternately in one process on the
same batches (BENCHMARKS.md §3), and peak RSS of each arm in its own subprocess.

Both arms: the same tiny model weights, full fine-tuning, AdamW, batch 8 of real RetinaMNIST samples built by
Qwen's processor with labels on the answer. The AttTok arm adds the attribute tokens, ACC, θ, books, the ACM loss
and the prototype update exactly as the trainer does (llamafactory_attok.trainer.acm_term / update_prototypes).

By default the model is the tiny one (LLM width 64, 2 layers, 56 px images = 4 visual tokens), where kernel-launch
overhead dominates; ``--width`` / ``--layers`` widen / deepen its LLM and ``--image-size`` resizes the images (Qwen2-VL
merges 2 × 2 patches of 14 px: 112 px = 16 visual tokens, the processor's pixel ceiling) for a step where compute
dominates, e.g. ``--width 256 --layers 4 --image-size 112``.

    python -m bench.cost.step_time [--steps 60] [--rss] [--width 64] [--layers 2] [--image-size 56]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from llamafactory_attok.tiny.specs import WIDTH

REPO = Path(__file__).resolve().parents[2]
IGNORE = -100
LAYERS = 2  # the tiny model's LLM depth
IMAGE_SIZE = 56  # RetinaMNIST's own size: 4 × 4 patches of 14 px, 4 visual tokens after the 2 × 2 merge


def _setup(workdir: Path, width: int = WIDTH, layers: int = LAYERS, image_size: int = IMAGE_SIZE):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from llamafactory_attok.tiny import build_tiny_model, chat_text
    from llamafactory_attok.vocab import load_vocab

    sized = {"width": None if width == WIDTH else width, "layers": None if layers == LAYERS else layers}
    model_dir = build_tiny_model(workdir / "tiny", "qwen2_vl", **sized)
    processor = AutoProcessor.from_pretrained(model_dir)
    vocab = load_vocab(REPO / "data" / "retina_vocab.yaml")
    rows = json.loads((REPO / "data" / "retina_attok_train.json").read_text())[:64]
    batches = []
    for start in range(0, len(rows), 8):
        chunk = rows[start:start + 8]
        prompts = [chat_text(r["messages"][0]["content"].replace("<image>", "")) for r in chunk]
        texts = [p + r["messages"][1]["content"] + "<|im_end|>" for p, r in zip(prompts, chunk, strict=True)]
        images = [Image.open(REPO / "data" / r["images"][0]).convert("RGB") for r in chunk]
        images = [im if im.size == (image_size, image_size)
                  else im.resize((image_size, image_size), Image.Resampling.BICUBIC) for im in images]
        batches.append((prompts, texts, images))
    return model_dir, processor, vocab, batches, AutoModelForImageTextToText


def _encode(processor, batch, token_ids):
    prompts, texts, images = batch
    processor.tokenizer.padding_side = "right"
    inputs = processor(text=texts, images=images, padding=True, return_tensors="pt")
    labels = inputs["input_ids"].clone()
    for i, prompt in enumerate(prompts):
        prompt_len = processor(text=[prompt], images=[images[i]], return_tensors="pt")["input_ids"].shape[1]
        labels[i, :prompt_len] = IGNORE
    labels[inputs["attention_mask"] == 0] = IGNORE
    inputs["labels"] = labels
    return inputs


def build_arms(workdir: Path, only: str | None = None, width: int = WIDTH, layers: int = LAYERS,
               image_size: int = IMAGE_SIZE):
    from llamafactory_attok.args import AttTokArguments
    from llamafactory_attok.attach import attach
    from llamafactory_attok.rows import add_attribute_tokens, init_attribute_rows, keyword_token_ids, resize_if_needed

    model_dir, processor, vocab, batches, auto = _setup(workdir, width, layers, image_size)
    vanilla = auto.from_pretrained(model_dir)
    attok = copy.deepcopy(vanilla) if only != "vanilla" else None
    token_ids, _ = add_attribute_tokens(processor.tokenizer, vocab)  # same tokenizer: both arms see the same ids
    keyword_ids = keyword_token_ids(processor.tokenizer, vocab, token_ids)
    resize_if_needed(vanilla, processor.tokenizer)
    module = None
    if attok is not None:
        resize_if_needed(attok, processor.tokenizer)
        init_attribute_rows(attok, token_ids, keyword_ids)
        module = attach(attok, AttTokArguments(attok=True), token_ids, keyword_ids, seed=0)
    if only == "attok":
        vanilla = None
    encoded = [_encode(processor, b, token_ids) for b in batches]
    return vanilla, attok, module, token_ids, encoded


def make_step(model, module, token_ids):
    from llamafactory_attok.plan import build_plan
    from llamafactory_attok.trainer import acm_term, update_prototypes

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step(inputs):
        if module is None:
            loss = model(**inputs).loss
        else:
            plan = build_plan(inputs, token_ids, model.config.image_token_id, 2)
            module.plan = plan
            try:
                ntp = model(**inputs).loss
            finally:
                module.plan = None
            loss = ntp + acm_term(module, plan, ntp.device)
            update_prototypes(module, plan, ntp.device)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def visual_tokens_per_image(model, batch) -> int:
    """Image placeholder tokens of the first sample (one image each), i.e. visual tokens reaching the LLM."""
    return int((batch["input_ids"][0] == model.config.image_token_id).sum())


def alternate(steps: int, width: int = WIDTH, layers: int = LAYERS, image_size: int = IMAGE_SIZE) -> dict:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        vanilla, attok, module, token_ids, batches = build_arms(Path(tmp), None, width, layers, image_size)
        tokens = visual_tokens_per_image(vanilla, batches[0])
        if image_size % 28 or tokens != (image_size // 28) ** 2:  # 14 px patches, 2 × 2 merge
            raise ValueError(f"--image-size {image_size} gave {tokens} visual tokens per image: use a multiple of "
                             "28 px up to 112 px (the tiny processor's ceiling)")
        arms = {"vanilla": make_step(vanilla, None, token_ids), "attok": make_step(attok, module, token_ids)}
        times = {name: [] for name in arms}
        for i in range(steps + 5):
            order = list(arms) if i % 2 == 0 else list(arms)[::-1]
            for name in order:
                start = time.perf_counter()
                arms[name](batches[i % len(batches)])
                if i >= 5:  # warm-up excluded
                    times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    return {"steps": steps, "median_ms": medians, "ratio_attok_over_vanilla": medians["attok"] / medians["vanilla"],
            "width": width, "layers": layers, "image_size": image_size, "visual_tokens_per_image": tokens}


def rss_of(arm: str, steps: int, width: int = WIDTH, layers: int = LAYERS, image_size: int = IMAGE_SIZE) -> float:
    code = (f"import bench.cost.step_time as b, resource, torch, tempfile, pathlib;"
            f"d = tempfile.mkdtemp(); v, a, m, ids, bs = b.build_arms(pathlib.Path(d), only='{arm}', width={width},"
            f" layers={layers}, image_size={image_size});"
            f"s = b.make_step({'v' if arm == 'vanilla' else 'a'}, {'None' if arm == 'vanilla' else 'm'}, ids);"
            f"[s(bs[i % len(bs)]) for i in range({steps})];"
            f"print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024  # KiB -> MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rss", action="store_true", help="also peak RSS per arm (separate processes)")
    parser.add_argument("--width", type=int, default=WIDTH,
                        help="LLM hidden size (a multiple of 32 if not %(default)s)")
    parser.add_argument("--layers", type=int, default=LAYERS, help="LLM layers")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE,
                        help="images resized to this square side in px (112: 16 visual tokens, the processor's most)")
    ns = parser.parse_args()
    if ns.steps < 1:
        parser.error("--steps must be ≥ 1")
    result = alternate(ns.steps, ns.width, ns.layers, ns.image_size)
    if ns.rss:
        result["peak_rss_MiB"] = {arm: rss_of(arm, 20, ns.width, ns.layers, ns.image_size)
                                  for arm in ("vanilla", "attok")}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
