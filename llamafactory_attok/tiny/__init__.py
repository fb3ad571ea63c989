"""Tiny offline vision-language models of every supported family, and the small real sample dataset.

For tests, the demo, benchmarks and ``attok tiny-model`` / ``attok sample-data`` only: no training, prediction or
evaluation path of the plugin imports this package (``tests/test_boot.py`` checks it).
"""

from .models import (
    FAMILIES,
    QWEN_SPECIAL_TOKENS,
    TEMPLATES,
    Family,
    build_tiny_config,
    build_tiny_model,
    build_tiny_processor,
    build_tiny_tokenizer,
    chat_inputs,
    chat_text,
    spec_of,
)

__all__ = [
    "FAMILIES",
    "QWEN_SPECIAL_TOKENS",
    "TEMPLATES",
    "Family",
    "build_tiny_config",
    "build_tiny_model",
    "build_tiny_processor",
    "build_tiny_tokenizer",
    "chat_inputs",
    "chat_text",
    "spec_of",
]
