"""Qwen3-VL: like Qwen2.5-VL, the merger output (``pooler_output`` of ``model.model.visual``) is at LLM width.

Qwen3-VL also feeds DeepStack features (mergers on intermediate vision layers) into the first LLM layers; ACC
refines the main visual tokens only, as the paper defines it on the tower output, and leaves DeepStack untouched.
"""

from __future__ import annotations

from .base import MergerFamily
from .registry import register_family


@register_family
class Qwen3VLFamily(MergerFamily):
    name = "qwen3_vl"
    model_types = ("qwen3_vl",)
    templates = ("qwen3_vl", "qwen3_vl_nothink")

    def feature_width(self, config) -> int:
        return int(config.vision_config.out_hidden_size)
