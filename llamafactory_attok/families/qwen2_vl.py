"""Qwen2-VL and Qwen2.5-VL (Lingshu): the vision tower's merger emits visual tokens at LLM width.

transformers 5 returns the merger output as ``pooler_output`` of ``model.model.visual`` (for Qwen2.5-VL already
back in image order after the window reordering); ``image_grid_thw // merge²`` gives the tokens per image.
"""

from __future__ import annotations

from .base import MergerFamily
from .registry import register_family


@register_family
class Qwen2VLFamily(MergerFamily):
    name = "qwen2_vl"
    model_types = ("qwen2_vl",)
    templates = ("qwen2_vl",)

    def feature_width(self, config) -> int:
        return int(config.vision_config.hidden_size)  # Qwen2-VL's merger ends at vision_config.hidden_size


@register_family
class Qwen25VLFamily(MergerFamily):
    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    templates = ("qwen2_vl",)

    def feature_width(self, config) -> int:
        return int(config.vision_config.out_hidden_size)
