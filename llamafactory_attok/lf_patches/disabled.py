"""``ATTOK_DISABLE``: LF runs as shipped; only loading a folder saved with AttTok state is reported (and its crash
named)."""

from __future__ import annotations

import functools

from ..errors import AttTokError
from ..log import get_logger
from ..state import find_saved_quietly

logger = get_logger(__name__)


def _guard_disabled_load(original):
    """Warn when an AttTok folder is loaded, and turn the crash PEFT then gives (attribute-token rows beyond the base
    embedding) into an error that says what to do."""

    @functools.wraps(original)
    def load_model(tokenizer, model_args, *args, **kwargs):
        folders = [model_args.model_name_or_path, *(model_args.adapter_name_or_path or [])]
        saved = find_saved_quietly(folders)
        if saved is not None:
            logger.warning(
                "%s was saved with AttTok state (attribute tokens, ACC, books) but ATTOK_DISABLE=1: none of it is "
                "restored, so outputs will differ from the trained model's.", saved
            )
        try:
            return original(tokenizer, model_args, *args, **kwargs)
        except (IndexError, RuntimeError) as err:
            if saved is None:
                raise
            raise AttTokError(
                f"{saved}: loading this AttTok run with ATTOK_DISABLE=1 failed ({type(err).__name__}: {err}). Its "
                "attribute tokens need embedding rows the base model lacks, and only AttTok adds them: unset "
                "ATTOK_DISABLE to load it, or export a merged model with AttTok enabled first."
            ) from err

    return load_model


def _refuse_attok_keys(original):
    """AttTok keys while ``ATTOK_DISABLE`` is set: a clear error naming the variable (LF would only say "keys not
    used")."""

    @functools.wraps(original)
    def read_args(args=None):
        import os

        from .parser import split_raw

        raw = original(args)
        ours, _ = split_raw(raw)
        if ours:
            raise AttTokError(
                f"ATTOK_DISABLE={os.environ.get('ATTOK_DISABLE', '')!r} turns AttTok off, but the arguments hold "
                f"{', '.join(sorted(ours))}. Unset ATTOK_DISABLE (or set it to 0) to run AttTok, or remove the attok "
                "keys for a vanilla run.")
        return raw

    return read_args


def patch_parser(module, read_args) -> None:
    module.read_args = _refuse_attok_keys(read_args)


def patch(module, load_model) -> None:
    module.load_model = _guard_disabled_load(load_model)
