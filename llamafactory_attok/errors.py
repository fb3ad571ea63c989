"""The one exception type the plugin raises for bad user input, and how it ends a LLaMA-Factory command."""

from __future__ import annotations

import os
import sys
from types import TracebackType

TRACEBACK_ENV = "ATTOK_TRACEBACK"


class AttTokError(ValueError):
    """Bad AttTok configuration, vocabulary or data; the message names the file, key, line or sample."""


def _attok_excepthook(previous):
    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if isinstance(value, AttTokError) and os.environ.get(TRACEBACK_ENV, "") in ("", "0"):
            sys.stderr.write(f"llamafactory-attok: error: {value}\n"
                             f"(the cause is named above; {TRACEBACK_ENV}=1 shows the full traceback)\n")
            sys.stderr.flush()
            return
        previous(kind, value, tb)

    hook.attok = True
    return hook


def install_excepthook() -> None:
    """An :class:`AttTokError` that ends a LLaMA-Factory command (``llamafactory-cli train``, torchrun ranks) is
    printed as its message — which names the file, key or sample and the fix — not under a page of LF's and
    transformers' frames; the exit status stays 1. Every other exception goes to the hook that was there (LF's
    vanilla runs are unchanged); ``ATTOK_TRACEBACK=1`` shows AttTok's traceback too. Idempotent."""
    if not getattr(sys.excepthook, "attok", False):
        sys.excepthook = _attok_excepthook(sys.excepthook)
