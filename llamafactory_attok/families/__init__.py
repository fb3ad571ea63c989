"""Model families AttTok supports, one small module each (see :mod:`.base` for what a family provides)."""

from __future__ import annotations

from . import gemma3, intern_vl, llava, qwen2_vl, qwen3_vl  # noqa: F401 - importing registers them
from .base import MergerFamily, ProjectorFamily, VisionFamily
from .registry import SEAM, check_widths, family_for, register_family, supported_model_types

SUPPORTED_FAMILIES: tuple[str, ...] = supported_model_types()


def check_family(model_type: str | None, where: str) -> str:
    """``model_type`` if a family serves it, else an :class:`AttTokError` listing the supported ones."""
    from types import SimpleNamespace

    family_for(SimpleNamespace(model_type=model_type), where)
    return model_type


__all__ = [
    "SEAM", "SUPPORTED_FAMILIES", "MergerFamily", "ProjectorFamily", "VisionFamily", "check_family", "check_widths",
    "family_for", "register_family", "supported_model_types",
]
