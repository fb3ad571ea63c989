"""Forward FLOPs of AttTok vs vanilla at the real Qwen2.5-VL-7B dimensions (BENCHMARKS.md §1).

Method: torch's FlopCounterMode counts a real forward (bf16 CPU tensors, uninitialised weights: values do not
change FLOPs) of Qwen2.5-VL built at full width (LLM d=3584, vision 1280) but with few layers; per-layer costs are
the differences between layer counts (windowed and full-attention vision blocks separately) and are scaled to the
7B depth (LLM 28 layers; vision 32 blocks of which 4 full-attention). ACC is counted on the same input, once as in
training (book keys/values projected in every forward, the paper's ≈13 + 0.16·K GFLOPs accounting) and once as at
inference (projections reused; see ACCAdapter._project_books). Input: one 224×224 image (256 patches → 64 visual
tokens after the merger) and a 24-token question.

    python -m bench.cost.flops [--k 7 113 1000]
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from llamafactory_attok.acc import ACCAdapter

D_LLM, D_VIS = 3584, 1280
LLM_LAYERS, VIS_BLOCKS, VIS_FULL = 28, 32, 4
PATCHES, MERGE = 256, 2
VISUAL_TOKENS = PATCHES // MERGE**2
TEXT_TOKENS = 24


def _config(llm_layers: int, vis_depth: int, full_blocks: list[int]):
    from transformers import Qwen2_5_VLConfig

    text = dict(vocab_size=152064, hidden_size=D_LLM, intermediate_size=18944, num_hidden_layers=llm_layers,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, tie_word_embeddings=False)
    vision = dict(depth=vis_depth, hidden_size=D_VIS, intermediate_size=3420, num_heads=16, out_hidden_size=D_LLM,
                  patch_size=14, spatial_merge_size=MERGE, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=full_blocks)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=151655, video_token_id=151656,
                            vision_start_token_id=151652, vision_end_token_id=151653)


def _inputs(config):
    ids = [151644] * 4 + [151652] + [config.image_token_id] * VISUAL_TOKENS + [151653] + [100] * (TEXT_TOKENS - 6)
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "pixel_values": torch.zeros(PATCHES, 3 * 2 * 14 * 14, dtype=torch.bfloat16),
            "image_grid_thw": torch.tensor([[1, 16, 16]])}


@torch.no_grad()
def forward_flops(cls, config, inputs: dict) -> int:
    """FLOPs of one forward (last-position logits) of ``cls`` built from ``config`` with uninitialised bf16 weights."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = cls._from_config(config, dtype=torch.bfloat16)
    model = model.to_empty(device="cpu").eval()
    for name, buffer in model.named_buffers():  # to_empty leaves index buffers as garbage; FLOPs need valid ids
        if name.endswith("position_ids"):
            buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))
    with FlopCounterMode(display=False) as counter:
        model(**inputs, logits_to_keep=1)
    return counter.get_total_flops()


def model_flops(llm_layers: int, vis_depth: int, full_blocks: list[int]) -> int:
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = _config(llm_layers, vis_depth, full_blocks)
    return forward_flops(Qwen2_5_VLForConditionalGeneration, config, _inputs(config))


def vanilla_7b_flops() -> dict[str, float]:
    """Extrapolate full-width few-layer counts to the 7B depth."""
    base = model_flops(1, 2, [1])  # 1 LLM layer; vision: 1 windowed + 1 full block
    llm_layer = model_flops(2, 2, [1]) - base
    windowed = model_flops(1, 3, [2]) - base
    full = model_flops(1, 3, [1, 2]) - base
    total = base + (LLM_LAYERS - 1) * llm_layer + (VIS_BLOCKS - VIS_FULL - 1) * windowed + (VIS_FULL - 1) * full
    return {"total": total, "llm_layer": llm_layer, "vision_windowed_block": windowed, "vision_full_block": full}


@torch.no_grad()
def acc_flops(num_attributes: int, mode: str) -> int:
    """ACC FLOPs in one forward: ``projected`` (book keys/values every forward, the paper's accounting),
    ``training`` (the order AttTok's training forward picks: no book projection when N < 3K), ``cached``
    (serving, book projections reused)."""
    acc = ACCAdapter(D_LLM, 0.1).to(torch.bfloat16).eval()
    visual = torch.zeros(VISUAL_TOKENS, D_LLM, dtype=torch.bfloat16)
    books = torch.zeros(num_attributes, 3, D_LLM, dtype=torch.bfloat16)
    valid = torch.ones(num_attributes, 3, dtype=torch.bool)
    if mode == "cached":
        acc(visual, books, valid)  # first request fills the book key/value cache
    else:
        acc.train()
        acc.absorb_books = False if mode == "projected" else None
    with FlopCounterMode(display=False) as counter:
        acc(visual, books, valid)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=int, nargs="+", default=[7, 113, 1000])
    ks = parser.parse_args().k
    vanilla = vanilla_7b_flops()
    rows = []
    for k in ks:
        per_forward, training = acc_flops(k, "projected"), acc_flops(k, "training")
        cached = acc_flops(k, "cached")
        rows.append({"K": k, "vanilla_GFLOPs": vanilla["total"] / 1e9, "acc_per_forward_GFLOPs": per_forward / 1e9,
                     "overhead_per_forward_pct": 100 * per_forward / vanilla["total"],
                     "acc_training_GFLOPs": training / 1e9, "overhead_training_pct": 100 * training / vanilla["total"],
                     "acc_cached_GFLOPs": cached / 1e9, "overhead_cached_pct": 100 * cached / vanilla["total"],
                     "paper_acc_GFLOPs": 13 + 0.16 * k})
    print(json.dumps({"vanilla_parts_GFLOPs": {k: v / 1e9 for k, v in vanilla.items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
