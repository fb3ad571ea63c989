"""Registry of :class:`~llamafactory_attok.families.base.VisionFamily` subclasses, keyed by config ``model_type``."""

from __future__ import annotations

from ..errors import AttTokError
from .base import VisionFamily

_BY_MODEL_TYPE: dict[str, VisionFamily] = {}
SEAM = "llamafactory_attok/families/ (one VisionFamily module per family; see families/base.py)"


def register_family(cls: type[VisionFamily]) -> type[VisionFamily]:
    """Class decorator: register one instance under each of ``cls.model_types``."""
    instance = cls()
    for model_type in cls.model_types:
        if model_type in _BY_MODEL_TYPE:
            raise ValueError(f"model_type {model_type!r} is already served by {_BY_MODEL_TYPE[model_type].name}")
        _BY_MODEL_TYPE[model_type] = instance
    return cls


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(_BY_MODEL_TYPE))


def family_for(config, where: str = "attok") -> VisionFamily:
    """The family serving ``config.model_type``; unsupported → error listing the supported ones."""
    model_type = getattr(config, "model_type", None)
    family = _BY_MODEL_TYPE.get(model_type) if model_type is not None else None
    if family is None:
        raise AttTokError(
            f"{where}: AttTok does not support model family {model_type!r} (no supported vision tower). "
            f"Supported families: {', '.join(supported_model_types())}. To add one, write a VisionFamily in {SEAM}."
        )
    return family


def check_widths(config, where: str = "attok") -> VisionFamily:
    """The family of ``config``, after checking its visual tokens reach LLM width (ACC and Eq. 5 need it)."""
    family = family_for(config, where)
    visual, text = family.feature_width(config), family.text_width(config)
    if visual != text:
        raise AttTokError(
            f"{where}: the {family.name} vision output is {visual} wide but the language model is {text} wide; "
            f"AttTok needs visual tokens at LLM width (a merged/projected tower). Check the vision config "
            f"(e.g. an unmerged tower or a mismatched out_hidden_size)."
        )
    return family
