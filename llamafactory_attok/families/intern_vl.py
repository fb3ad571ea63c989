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
    """Lengths of the maximal runs of ``token_id`` in ``input_ids``, row-major (called every training step)."""
    edges = torch.nn.functional.pad((input_ids == token_id).to(torch.int8), (1, 1)).diff(dim=1)
    starts, ends = (edges == 1).nonzero(), (edges == -1).nonzero()  # row-major: the k-th start pairs the k-th end
    return (ends[:, 1] - starts[:, 1]).tolist()


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

    def token_grids(self, inputs: dict, sizes: list[int], config) -> list[tuple[int, int] | None]:
        side = int(round(int(config.image_seq_length) ** 0.5))
        return [(side, side) if size == side * side else None for size in sizes]  # one tile only
