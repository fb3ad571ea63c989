"""LLaVA-1.5: ``model.model.multi_modal_projector`` (two-layer MLP) maps the selected CLIP layer to LLM width;
its output is (N_image, T, d) with T = (image size / patch)² (+1 when ``vision_feature_select_strategy: full``).
"""

from __future__ import annotations

from .base import ProjectorFamily
from .registry import register_family


@register_family
class LlavaFamily(ProjectorFamily):
    name = "llava"
    model_types = ("llava",)
    templates = ("llava",)

    def tokens_per_image(self, inputs: dict, config) -> int:
        vision = config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        return side * side + (1 if config.vision_feature_select_strategy == "full" else 0)
