"""Gemma-3 (MedGemma): ``model.model.multi_modal_projector`` pools the SigLIP output to ``mm_tokens_per_image``
tokens per image and projects them to LLM width; its output is (N_image, T, d).

The embedding is tied to the head (PEFT's list form of ``trainable_token_indices``) and scaled by √d on lookup
(``Gemma3TextScaledWordEmbedding``); book entries read a_k through the embedding module, so they carry that scale.
"""

from __future__ import annotations

from .base import ProjectorFamily
from .registry import register_family


@register_family
class Gemma3Family(ProjectorFamily):
    name = "gemma3"
    model_types = ("gemma3",)
    templates = ("gemma3",)

    def tokens_per_image(self, inputs: dict, config) -> int:
        return int(config.mm_tokens_per_image)
