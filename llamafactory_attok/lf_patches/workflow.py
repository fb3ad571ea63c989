"""``train.sft.workflow``: LF's SFT trainer becomes the AttTok trainer (NTP + λ·ACM, paper §4.3) for AttTok runs,
attribute tokens are taken out of generation's ``eos_token_id``, and ``loss_ntp`` / ``loss_acm`` reach LF's
``trainer_log.jsonl`` (LlamaBoard's curves)."""

from __future__ import annotations

import functools
import inspect

from ..context import AttTokContext
from ..errors import AttTokError
from ..resume import ExactResumeMixin
from ..trainer import LOG_KEYS, AttTokTrainerMixin
from . import cannot_run_message
from .parser import context_of


def attok_trainer_class(lf_trainer_cls) -> type:
    """LF's SFT trainer class plus AttTok; full / freeze runs resume exactly (:class:`ExactResumeMixin` works
    around transformers 5.6 dropping the weights on resume)."""
    from llamafactory.extras.ploting import plot_loss

    class AttTokTrainer(AttTokTrainerMixin, ExactResumeMixin, lf_trainer_cls):
        __doc__ = AttTokTrainerMixin.__doc__

        def __init__(self, *args, attok: AttTokContext, **kwargs):
            self.attok = attok
            super().__init__(*args, **kwargs)

        def save_state(self) -> None:
            super().save_state()
            if self.is_world_process_zero() and getattr(self.finetuning_args, "plot_loss", False):
                plot_loss(self.args.output_dir, keys=["loss_ntp", "loss_acm", "acm_weight"])

    return AttTokTrainer


def _finetuning_args_of(lf_trainer_cls, args: tuple, kwargs: dict):
    """LF's ``finetuning_args`` however the caller passed it (keyword or positional)."""
    if "finetuning_args" in kwargs:
        return kwargs["finetuning_args"]
    try:
        bound = inspect.signature(lf_trainer_cls.__init__).bind_partial(None, *args, **kwargs)
    except TypeError:
        bound = None
    if bound is not None and "finetuning_args" in bound.arguments:
        return bound.arguments["finetuning_args"]
    found = [a for a in args if context_of(a) is not None]
    return found[0] if found else None


def trainer_factory(lf_trainer_cls, attok_cls: type | None = None):
    """Stands in for LF's ``CustomSeq2SeqTrainer``: LF's class for vanilla runs, ``attok_cls`` (by default
    :func:`attok_trainer_class` of it) for AttTok runs."""
    attok_cls = attok_cls or attok_trainer_class(lf_trainer_cls)

    @functools.wraps(lf_trainer_cls, updated=())
    def make(*args, **kwargs):
        context = context_of(_finetuning_args_of(lf_trainer_cls, args, kwargs))
        if context is None:
            return lf_trainer_cls(*args, **kwargs)
        gen_kwargs = kwargs.get("gen_kwargs") or {}
        eos = gen_kwargs.get("eos_token_id")
        if isinstance(eos, list):  # LF adds every extra special token; an attribute token must not stop generation
            gen_kwargs["eos_token_id"] = [i for i in eos if i not in set(context.token_ids)]
        callbacks = kwargs.get("callbacks") or []
        if context.training:
            _check_log_callbacks(callbacks)
        trainer = attok_cls(*args, attok=context, **kwargs)
        if context.training:
            forward_attok_logs(callbacks)
        return trainer

    return make


def _log_callbacks(callbacks: list) -> list:
    from llamafactory.train.callbacks import LogCallback

    return [c for c in callbacks if isinstance(c, LogCallback)]


def _check_log_callbacks(callbacks: list) -> None:
    """LF's LogCallback must still write through ``_write_log(output_dir, logs)`` and log in ``on_log``."""
    for callback in _log_callbacks(callbacks):
        for name in ("_write_log", "on_log", "on_train_end"):
            if not callable(getattr(callback, name, None)):
                raise AttTokError(cannot_run_message({"llamafactory.train.callbacks.LogCallback": f"no {name}"}))


def forward_attok_logs(callbacks: list) -> None:
    """Make this run's LF LogCallback write loss_ntp / loss_acm / acm_weight into trainer_log.jsonl, and check at
    the end of training that it did (an LF change that bypasses ``_write_log`` stops loudly, not silently)."""
    keys = (*LOG_KEYS, "attok_samples_without_image")
    for callback in _log_callbacks(callbacks):
        original_on_log, original_write, original_end = callback.on_log, callback._write_log, callback.on_train_end
        counts = {"expected": 0, "written": 0}

        def write_log(extra, output_dir, logs, _write=original_write, _counts=counts):
            _counts["written"] += bool(extra)
            return _write(output_dir, {**logs, **extra})

        def on_log(args, state, control, _on_log=original_on_log, _cb=callback, _counts=counts, **kw):
            latest = state.log_history[-1] if state.log_history else {}
            extra = {k: latest[k] for k in keys if k in latest}
            _counts["expected"] += bool(extra and args.should_save)
            _cb._write_log = functools.partial(write_log, extra)  # bound when LF submits it to its writer thread
            return _on_log(args, state, control, **kw)

        def on_train_end(args, state, control, _end=original_end, _counts=counts, **kw):
            result = _end(args, state, control, **kw)
            if _counts["expected"] and not _counts["written"]:
                raise AttTokError(cannot_run_message({
                    "llamafactory.train.callbacks.LogCallback": "on_log no longer writes through _write_log, so "
                    "loss_ntp / loss_acm never reached trainer_log.jsonl"}))
            return result

        callback.on_log = on_log
        callback.on_train_end = on_train_end


def patch(module, trainer_cls) -> None:
    module.CustomSeq2SeqTrainer = trainer_factory(trainer_cls)
