"""InternVL (transformers-native ``intern_vl``, InternVL3 / 3.5): ``model.model.multi_modal_projector`` maps the
pixel-shuffled InternViT output of each 448² tile to ``image_seq_length`` tokens at LLM width; output
(N_tile, T, d).

An image may be cut into several tiles (``crop_to_patches``), so tokens per image are read from ``input_ids``:
each image is one ``<img> <IMG_CONTEXT>… </img>`` run of image tokens.
"""

from __future__ import annotations

import torch

from .base import ProjectorFamily
from .registry import register_family


def image_token_runs(input_ids: torch.Tensor, token_id: int) -> list[int]:
    """Lengths of the maximal runs of ``token_id`` in ``input_ids``, row-major."""
    runs: list[int] = []
    for row in (input_ids == token_id).tolist():
        length = 0
        for hit in [*row, False]:
            if hit:
                length += 1
            elif length:
                runs.append(length)
                length = 0
    return runs


@register_family
class InternVLFamily(ProjectorFamily):
    name = "intern_vl"
    model_types = ("internvl",)
    templates = ("intern_vl",)

    def image_sizes(self, inputs: dict, config) -> list[int] | None:
        pixels = inputs.get("pixel_values")
        if pixels is None:
            return None
        sizes = image_token_runs(inputs["input_ids"], self.image_token_id(config))
        if sum(sizes) != int(pixels.shape[0]) * int(config.image_seq_length):
            raise ValueError(f"{sum(sizes)} image tokens in input_ids but {pixels.shape[0]} tiles × "
                             f"{config.image_seq_length} tokens in pixel_values")
        return sizes

    def token_grid(self, inputs: dict, index: int, config) -> tuple[int, int] | None:
        sizes = self.image_sizes(inputs, config) or []
        side = int(round(int(config.image_seq_length) ** 0.5))
        return (side, side) if index < len(sizes) and sizes[index] == side * side else None  # one tile only
