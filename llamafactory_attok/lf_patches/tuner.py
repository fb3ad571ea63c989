"""``train.tuner``: ``llamafactory-cli export`` copies the AttTok description and state into the export folder."""

from __future__ import annotations

import functools
from pathlib import Path

from ..filenames import STATE_FILE_NAME
from ..run_guards import refuse_foreign_attok_files, refuse_output_over_inputs
from ..state import atomic_write_bytes, save_description
from .parser import context_of


def _wrap_export(original):
    @functools.wraps(original)
    def export_model(args=None):
        from llamafactory.hparams import get_infer_args

        model_args, _, finetuning_args, _ = get_infer_args(args)
        if context_of(finetuning_args) is not None:  # an AttTok export never writes into what it reads
            refuse_output_over_inputs(model_args.export_dir, {
                "model_name_or_path": model_args.model_name_or_path,
                "adapter_name_or_path": ",".join(model_args.adapter_name_or_path or [])}, option="export_dir")
        context = context_of(finetuning_args)
        if context is not None and context.saved is not None:
            refuse_foreign_attok_files(model_args.export_dir, context.saved.folder)
        original(args)
        if context is not None and context.saved is not None:
            save_description(model_args.export_dir, context.saved.vocab, {**context.saved.config})
            state = context.saved.folder / STATE_FILE_NAME
            atomic_write_bytes(Path(model_args.export_dir) / STATE_FILE_NAME, state.read_bytes())

    return export_model


def patch(module, export_model) -> None:
    module.export_model = _wrap_export(export_model)
