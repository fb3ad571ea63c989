"""Trainable parameters and AdamW state added by AttTok at the Qwen2.5-VL-7B configuration (d = 3584, vocabulary
rows 152064), beside LLaMA-Factory's own new-token path (whole embed + lm_head in `modules_to_save`).

Counts come from the real modules (ACCAdapter, ACMProjection, AttributeBooks) built at d = 3584 and from the rows PEFT
`trainable_token_indices` stores (K per layer; verified on the tiny model by the saved adapter). AdamW keeps two fp32
moments per trainable parameter (8 bytes); mixed precision adds a 4-byte fp32 master copy under DeepSpeed.

    python -m bench.cost.params_memory [--k 7 113 1000]
"""

from __future__ import annotations

import argparse
import json

import torch

from llamafactory_attok.acc import ACCAdapter
from llamafactory_attok.acm import ACMProjection
from llamafactory_attok.books import AttributeBooks

D, ROWS = 3584, 152064
ADAM_BYTES = 8


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def table(k: int) -> dict:
    with torch.device("meta"):
        acc = count(ACCAdapter(D, 0.1))
        theta = count(ACMProjection(D))
        books = count(AttributeBooks(torch.zeros(k, D), 0.99))
    rows = 2 * k * D  # embed + untied lm_head rows (trainable_token_indices dict form)
    lf_new_token_path = 2 * ROWS * D  # LF: whole embed_tokens + lm_head in modules_to_save
    parts = {"attribute_rows": rows, "acc": acc, "theta_and_books": theta + books}
    result = {"K": k, "bound_2Kd": 2 * k * D, "prototype_buffer_bytes": k * D * 4}
    for name, value in {**parts, "attok_total": sum(parts.values()), "lf_modules_to_save": lf_new_token_path}.items():
        result[f"{name}_params"] = value
        result[f"{name}_adam_MiB"] = value * ADAM_BYTES / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=int, nargs="+", default=[7, 113, 1000])
    print(json.dumps([table(k) for k in parser.parse_args().k], indent=2))


if __name__ == "__main__":
    main()
