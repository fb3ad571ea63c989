"""``train.tuner``: ``llamafactory-cli export`` copies the AttTok description and state into the export folder."""

from __future__ import annotations

import functools
from pathlib import Path

from ..filenames import STATE_FILE_NAME
from ..state import atomic_write_bytes, save_description
from .parser import context_of


def _wrap_export(original):
    @functools.wraps(original)
    def export_model(args=None):
        from llamafactory.hparams import get_infer_args

        model_args, _, finetuning_args, _ = get_infer_args(args)
        original(args)
        context = context_of(finetuning_args)
        if context is not None and context.saved is not None:
            save_description(model_args.export_dir, context.saved.vocab, {**context.saved.config})
            state = context.saved.folder / STATE_FILE_NAME
            atomic_write_bytes(Path(model_args.export_dir) / STATE_FILE_NAME, state.read_bytes())

    return export_model


def patch(module, export_model) -> None:
    module.export_model = _wrap_export(export_model)
