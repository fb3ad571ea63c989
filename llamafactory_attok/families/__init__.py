"""Model families AttTok supports, one small module each (see :mod:`.base` for what a family provides)."""

from __future__ import annotations

from . import gemma3, intern_vl, llava, qwen2_vl, qwen3_vl  # noqa: F401 - importing registers them
from .base import MergerFamily, ProjectorFamily, VisionFamily
from .registry import SEAM, check_widths, family_for, register_family, supported_model_types

SUPPORTED_FAMILIES: tuple[str, ...] = supported_model_types()

__all__ = [
    "SEAM", "SUPPORTED_FAMILIES", "MergerFamily", "ProjectorFamily", "VisionFamily", "check_widths",
    "family_for", "register_family", "supported_model_types",
]
