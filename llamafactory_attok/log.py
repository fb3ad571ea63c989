"""The plugin's logger: INFO lines on rank 0 in LLaMA-Factory's style, without touching LF's logging."""

from __future__ import annotations

import logging
import os


def get_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    root = logging.getLogger("llamafactory_attok")
    if not root.handlers:
        handler = logging.StreamHandler()
        style = logging.Formatter("[%(levelname)s|%(asctime)s] %(name)s >> %(message)s", "%Y-%m-%d %H:%M:%S")
        handler.setFormatter(style)
        root.addHandler(handler)
        root.setLevel(logging.INFO if os.environ.get("LOCAL_RANK", "0") == "0" else logging.WARNING)
        root.propagate = False
    return logger
