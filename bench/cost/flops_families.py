"""ACC's forward-FLOP overhead on the other families' real dimensions (BENCHMARKS.md §1b): MedGemma-4B (Gemma-3)
with one 896² image (256 visual tokens) and Qwen3-VL-8B with one 224² image (49 visual tokens).

Same method as :mod:`bench.cost.flops`: torch's FlopCounterMode over a real forward of the model built at full width
(bf16 CPU tensors, uninitialised weights) with 1 and 2 LLM layers and 1 and 2 vision layers; the per-layer
differences are scaled to the published depths. ACC is counted on the same number of visual tokens in the order
AttTok's training forward picks (:class:`~llamafactory_attok.acc.ACCAdapter`), and with the books projected in
every forward (the paper's accounting). The dimensions are written out below (from the models' published
config.json files; nothing is downloaded).

    python -m bench.cost.flops_families [--k 7 113 1000]
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.cost.flops import forward_flops
from llamafactory_attok.acc import ACCAdapter

TEXT_TOKENS = 24

MEDGEMMA_4B = {
    "text": dict(vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_attention_heads=8,
                 num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=1024),
    "vision": dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, image_size=896, patch_size=14),
    "llm_layers": 34, "vision_layers": 27, "visual_tokens": 256,
}
QWEN3_VL_8B = {
    "text": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=128,
                 rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                  "mrope_interleaved": True}),
    "vision": dict(hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096, patch_size=16,
                   spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304),
    "llm_layers": 36, "vision_layers": 27, "visual_tokens": 49,
}


def _gemma3(llm_layers: int, vision_layers: int):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    spec = MEDGEMMA_4B
    text = {**spec["text"], "num_hidden_layers": llm_layers,
            "layer_types": ["sliding_attention"] * (llm_layers - 1) + ["full_attention"]}
    config = Gemma3Config(text_config=text, vision_config={**spec["vision"], "num_hidden_layers": vision_layers},
                          mm_tokens_per_image=spec["visual_tokens"])
    ids = [2] + [config.image_token_id] * spec["visual_tokens"] + [100] * TEXT_TOKENS
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
              "pixel_values": torch.zeros(1, 3, 896, 896, dtype=torch.bfloat16),
              "token_type_ids": torch.tensor([[0] + [1] * spec["visual_tokens"] + [0] * TEXT_TOKENS])}
    return Gemma3ForConditionalGeneration, config, inputs


def _qwen3_vl(llm_layers: int, vision_layers: int):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    spec = QWEN3_VL_8B
    vision = {**spec["vision"], "depth": vision_layers, "deepstack_visual_indexes": [0]}
    config = Qwen3VLConfig(text_config={**spec["text"], "num_hidden_layers": llm_layers}, vision_config=vision)
    grid = 14  # 224 / 16
    ids = ([config.vision_start_token_id] + [config.image_token_id] * spec["visual_tokens"]
           + [config.vision_end_token_id] + [100] * TEXT_TOKENS)
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
              "pixel_values": torch.zeros(grid * grid, 3 * 2 * 16 * 16, dtype=torch.bfloat16),
              "image_grid_thw": torch.tensor([[1, grid, grid]])}
    inputs["mm_token_type_ids"] = (inputs["input_ids"] == config.image_token_id).long()
    return Qwen3VLForConditionalGeneration, config, inputs


def count(builder, llm_layers: int, vision_layers: int) -> int:
    return forward_flops(*builder(llm_layers, vision_layers))


def vanilla_flops(builder, spec: dict) -> float:
    base = count(builder, 1, 1)
    llm_layer = count(builder, 2, 1) - base
    vision_layer = count(builder, 1, 2) - base
    return base + (spec["llm_layers"] - 1) * llm_layer + (spec["vision_layers"] - 1) * vision_layer


@torch.no_grad()
def acc_flops(dim: int, tokens: int, num_attributes: int, projected: bool) -> int:
    acc = ACCAdapter(dim, 0.1).to(torch.bfloat16).train()
    acc.absorb_books = False if projected else None
    visual = torch.zeros(tokens, dim, dtype=torch.bfloat16)
    books = torch.zeros(num_attributes, 3, dim, dtype=torch.bfloat16)
    with FlopCounterMode(display=False) as counter:
        acc(visual, books, torch.ones(num_attributes, 3, dtype=torch.bool))
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=int, nargs="+", default=[7, 113, 1000])
    ks = parser.parse_args().k
    rows = []
    for name, builder, spec in (("MedGemma-4B", _gemma3, MEDGEMMA_4B), ("Qwen3-VL-8B", _qwen3_vl, QWEN3_VL_8B)):
        vanilla = vanilla_flops(builder, spec)
        dim, tokens = spec["text"]["hidden_size"], spec["visual_tokens"]
        for k in ks:
            training, projected = acc_flops(dim, tokens, k, False), acc_flops(dim, tokens, k, True)
            rows.append({"model": name, "K": k, "visual_tokens": tokens, "d": dim, "vanilla_GFLOPs": vanilla / 1e9,
                         "acc_training_GFLOPs": training / 1e9, "overhead_training_pct": 100 * training / vanilla,
                         "acc_projected_GFLOPs": projected / 1e9, "overhead_projected_pct": 100 * projected / vanilla})
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
