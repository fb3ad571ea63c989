"""``model.adapter``: PEFT's ``LoraConfig`` with ``trainable_token_indices`` = the attribute rows (paper §4.1, A.1)."""

from __future__ import annotations

import contextvars
from typing import Any

from ..errors import AttTokError

# Set by the loader patch around LF's init_adapter (the only place LF builds its LoraConfig) for an AttTok run.
TOKEN_INDICES: contextvars.ContextVar[Any] = contextvars.ContextVar("attok_token_indices", default=None)


def lora_config_subclass(lora_config_cls: Any) -> Any:
    """PEFT's LoraConfig, plus ``trainable_token_indices`` for the attribute rows inside an AttTok run.

    A subclass (not a factory function), so ``isinstance(config, LoraConfig)`` keeps working everywhere.
    """

    class LoraConfig(lora_config_cls):
        __doc__ = lora_config_cls.__doc__

        def __post_init__(self) -> None:
            indices = TOKEN_INDICES.get()
            if indices is not None:
                given: Any = getattr(self, "trainable_token_indices", None)  # PEFT's dataclass field
                if given not in (None, indices):
                    raise AttTokError(
                        "attok: true sets LoRA's trainable_token_indices to the attribute rows; another value "
                        f"({given!r}) was given.")
                self.trainable_token_indices = indices
            super().__post_init__()

    LoraConfig.__module__ = lora_config_cls.__module__
    LoraConfig.__qualname__ = lora_config_cls.__qualname__
    return LoraConfig


def patch(module, lora_config) -> None:
    module.LoraConfig = lora_config_subclass(lora_config)
