"""Generation with the positions the model was trained with (M-RoPE for Qwen2-VL / Qwen2.5-VL / Qwen3-VL).

Why: in training, LLaMA-Factory's SFT collator computes 3-D rotary positions with the model's ``get_rope_index``
(``mm_token_type_ids`` marks image / video tokens). With transformers 5.x, ``generate`` computes them only when
``mm_token_type_ids`` reaches it; LLaMA-Factory 0.9.5 never passes it (``do_predict`` + ``predict_with_generate``
builds its collator with ``model=None``; ``Qwen2VLPlugin.get_mm_inputs`` omits it for chat / api / WebUI), so
``generate`` silently falls back to 1-D text positions for the image tokens (LF PR #10397, issue #10817). Here the
model's own ``generate`` gets ``mm_token_type_ids`` computed from ``input_ids`` exactly as LF's collator does in
training, so the first generated token equals the one-forward prediction.

Plain transformers (no LF import); installed on the model instance by ``lf_patches.loader``.
"""

from __future__ import annotations

import functools
import inspect

import torch

_MARK = "__attok_training_positions__"


def _rope_index_function(model):
    """The model's ``get_rope_index`` (``model.model.get_rope_index`` since transformers 4.52), or None."""
    inner = getattr(model, "model", None)
    for owner in (inner, model):
        function = getattr(owner, "get_rope_index", None)
        if callable(function):
            return function
    return None


def needs_mm_token_type_ids(model) -> bool:
    """True for models whose rotary positions depend on ``mm_token_type_ids`` (the Qwen-VL families)."""
    function = _rope_index_function(model)
    return function is not None and "mm_token_type_ids" in inspect.signature(function).parameters


def mm_token_type_ids(input_ids: torch.Tensor, config) -> torch.Tensor:
    """0 for text, 1 for image, 2 for video tokens: LF's collator's (and the processor's) marking, from ids."""
    types = torch.zeros_like(input_ids)
    for token_id, kind in ((getattr(config, "image_token_id", None), 1), (getattr(config, "video_token_id", None), 2)):
        if token_id is not None:
            types[input_ids == token_id] = kind
    return types


def generate_with_training_positions(model) -> bool:
    """Make ``model.generate`` (this instance, PEFT wrappers included, since they delegate to it) compute the
    training positions. Idempotent; returns False (nothing done) for families with 1-D positions."""
    if getattr(model, _MARK, False) or not needs_mm_token_type_ids(model):
        return False
    original = model.generate

    @functools.wraps(original)
    def generate(*args, **kwargs):
        # LF's do_predict passes ``input_ids``; its chat engine passes ``inputs`` (generate's first parameter)
        input_ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
        has_media = kwargs.get("image_grid_thw") is not None or kwargs.get("video_grid_thw") is not None
        if (isinstance(input_ids, torch.Tensor) and has_media and kwargs.get("mm_token_type_ids") is None
                and kwargs.get("position_ids") is None):
            kwargs["mm_token_type_ids"] = mm_token_type_ids(input_ids, model.config)
        return original(*args, **kwargs)

    model.generate = generate
    setattr(model, _MARK, True)
    return True
