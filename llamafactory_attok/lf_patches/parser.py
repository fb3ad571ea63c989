"""``hparams.parser``: LF's parse functions wrapped around the run policy (:mod:`llamafactory_attok.run_policy`):
pop and strictly parse the ``attok*`` keys, check them against LF's own arguments, and attach the run's
:class:`~llamafactory_attok.context.AttTokContext` to LF's parsed argument objects. What stays here depends on LF's
patching: the stack and patch-point requirements and the wrapping itself."""

from __future__ import annotations

import functools
from typing import Any

from ..args import parse_attok_dict
from ..context import AttTokContext
from ..errors import AttTokError
from ..run_policy import build_context, refuse_attok, split_raw
from . import (
    ADAPTER,
    ALLOW_UNTESTED_ENV,
    LOADER,
    WORKFLOW,
    cannot_run_message,
    missing_private_calls,
    refusal_reason,
    stack_allowed,
    unpatched,
    untested,
)

__all__ = ["context_of", "split_raw", "patch", "guard_read_args"]


def context_of(args_obj: Any) -> AttTokContext | None:
    """The AttTok run attached to LF's ``ModelArguments`` / ``FinetuningArguments`` (None: a vanilla run)."""
    return getattr(args_obj, "_attok", None)


def _require_patched(training: bool) -> None:
    """Every LF module an AttTok run goes through must carry our patch, else stop before loading anything."""
    missing = unpatched([LOADER, ADAPTER, WORKFLOW] if training else [LOADER])
    if missing:
        raise AttTokError(cannot_run_message(missing))


def _require_stack() -> None:
    """A tested LF / transformers stack, or an untested one the user opted into whose private calls all resolve."""
    if not stack_allowed():
        raise AttTokError(refusal_reason())
    if untested():
        missing = missing_private_calls()
        if missing:
            raise AttTokError(f"{ALLOW_UNTESTED_ENV} is set, but AttTok cannot run on {', '.join(untested())}: "
                              f"{len(missing)} private symbol(s) it calls are missing: {'; '.join(missing)}.")


def require_runtime(training: bool) -> None:
    """What an AttTok run needs of the installed LF beyond its arguments (the policy's ``require_runtime``)."""
    _require_stack()
    _require_patched(training)


def _wrap_parse(original, read_args):
    @functools.wraps(original)
    def parse(args=None):
        raw = read_args(args)
        ours, rest = split_raw(raw)
        # no attok keys: vanilla LF sees exactly what it would without us
        parsed = original(rest) if ours else original(args)
        context = build_context(ours, parsed, require_runtime)
        for obj in parsed:
            if type(obj).__name__ in ("ModelArguments", "FinetuningArguments"):
                if context is not None:
                    obj._attok = context
                elif "attok_training_positions" in ours:  # opt-in generation fix for a vanilla model
                    obj._attok_training_positions = parse_attok_dict(ours).attok_training_positions
        return parsed

    return parse


def guarded_read_args(original, why_later):
    """Public ``read_args`` wrapper: AttTok keys or folders stop the run with ``why_later()``; the rest is LF's."""

    @functools.wraps(original)
    def read_args(args=None):
        raw = original(args)
        refuse_attok(raw, why_later())
        return raw

    return read_args


def guard_read_args(module, why_later) -> None:
    """Unsupported LF version, or the full parser patch failed: wrap only the public ``read_args``."""
    from . import require

    (read_args,) = require(module, ["read_args"])
    module.read_args = guarded_read_args(read_args, why_later)


MCA_REASON = "USE_MCA / use_mca replaces the model and trainer AttTok hooks into"
MBRIDGE_REASON = ("USE_MEGATRON_BRIDGE / use_megatron_bridge trains through Megatron Bridge, bypassing the model and "
                  "trainer AttTok hooks into")


def _refuse_path(original, read_args, reason: str):
    """A training path that parses through its own argument classes and never reaches the patched trainer
    (``USE_MCA=1``; LF main's ``USE_MEGATRON_BRIDGE=1``): AttTok keys and folders are refused there."""

    @functools.wraps(original)
    def parse(args=None):
        refuse_attok(read_args(args), reason)
        return original(args)

    return parse


def patch(module, read_args, parse_train, parse_infer, parse_eval, parse_train_mca, parse_train_mbridge) -> None:
    module._parse_train_args = _wrap_parse(parse_train, read_args)
    module._parse_infer_args = _wrap_parse(parse_infer, read_args)
    module._parse_eval_args = _wrap_parse(parse_eval, read_args)
    module._parse_train_mca_args = _refuse_path(parse_train_mca, read_args, MCA_REASON)
    if parse_train_mbridge is not None:  # LF main (0.9.6.dev0) only
        module._parse_train_mbridge_args = _refuse_path(parse_train_mbridge, read_args, MBRIDGE_REASON)
