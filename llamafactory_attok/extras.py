"""Optional dependencies: what a training-only install leaves out, and the error that names the extra to install.

Training with AttTok needs only what LLaMA-Factory needs. Scoring and evaluation (`attok predict`, `attok eval`,
the VQA judge and keyword extraction) need the ``eval`` extra — scikit-learn for the metrics, ``openai`` for the
OpenAI-compatible judge / extractor — and LF's own generation metrics (``predict_with_generate``) need jieba,
nltk and rouge-chinese, which the extra adds too. ``pip install 'llamafactory-attok[eval]'``; ``make setup``
installs everything.
"""

from __future__ import annotations

import importlib.util

from .errors import AttTokError

EXTRAS: dict[str, tuple[str, ...]] = {"eval": ("sklearn", "openai", "jieba", "nltk", "rouge_chinese")}
PACKAGE_OF = {"sklearn": "scikit-learn", "rouge_chinese": "rouge-chinese"}


def missing_extra(package: str, extra: str, what: str) -> AttTokError:
    """The error for an ``ImportError`` of ``package`` (raise it ``from`` that error)."""
    return AttTokError(f"{what} needs {package}, which a training-only install leaves out: install the optional "
                       f"extra with `pip install 'llamafactory-attok[{extra}]'`")


def require(modules: tuple[str, ...], extra: str, what: str) -> None:
    """Stop with an :class:`AttTokError` naming ``extra`` when one of ``modules`` (import names) is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise missing_extra(", ".join(PACKAGE_OF.get(m, m) for m in missing), extra, what)
