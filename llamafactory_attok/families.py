"""Model families whose vision tower AttTok knows how to reach (the visual tokens leave it at LLM width)."""

from __future__ import annotations

from .errors import AttTokError

SUPPORTED_FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl")


def check_family(model_type: str | None, where: str) -> str:
    if model_type not in SUPPORTED_FAMILIES:
        raise AttTokError(
            f"{where}: AttTok does not support model family {model_type!r} (no supported vision tower). "
            f"Supported families: {', '.join(SUPPORTED_FAMILIES)} (llamafactory_attok/families.py)."
        )
    return model_type
