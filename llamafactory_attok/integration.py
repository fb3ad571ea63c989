"""THE one place that touches LLaMA-Factory internals.

Every patch wraps a module global that LF looks up at call time, is idempotent, and does nothing unless the
parsed arguments (or the loaded adapter) carry AttTok. Patched points (LF 0.9.5):

- ``hparams.parser._parse_{train,infer,eval}_args``: pop and strictly parse ``attok*`` keys, attach the run.
- ``model.loader.patch_tokenizer / patch_model / init_adapter``: tokens, rows, row-only training.
- ``model.adapter.LoraConfig``: add ``trainable_token_indices``.
- ``train.sft.workflow.CustomSeq2SeqTrainer``: the AttTok trainer; attribute tokens out of ``eos_token_id``.
- ``train.tuner.export_model``: copy the AttTok description into the export folder.
- ``webui.common._clean_cmd``: keep ``attok_*: false`` from the WebUI's extra arguments (LF drops False values).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys
from pathlib import Path
from typing import Any

from .args import AttTokArguments, is_attok_key, parse_attok_dict, split_attok_cli, split_attok_dict
from .attach import STATE_FILE_NAME, attach, load_state
from .context import AttTokContext
from .errors import AttTokError
from .log import get_logger
from .peft_compat import zero3_trainable_tokens_on_any_device
from .rows import is_zero3, mask_non_attribute_gradients, trainable_token_indices
from .state import atomic_write_bytes, find_saved, save_description
from .trainer import AttTokTrainerMixin

logger = get_logger(__name__)

SUPPORTED_LF_VERSIONS = ("0.9.5",)
_PATCHED_MARK = "__attok_patched__"
_TOKEN_INDICES: contextvars.ContextVar[Any] = contextvars.ContextVar("attok_token_indices", default=None)


def lf_version() -> str:
    from llamafactory.extras.env import VERSION

    return VERSION


def version_supported() -> bool:
    return lf_version() in SUPPORTED_LF_VERSIONS


def context_of(args_obj: Any) -> AttTokContext | None:
    return getattr(args_obj, "_attok", None)


# ---- arguments ---------------------------------------------------------------------------------------------


def _split_raw(raw: dict | list) -> tuple[dict, dict | list]:
    if isinstance(raw, dict):
        return split_attok_dict(raw)
    return split_attok_cli(list(raw))


def _check_lf_args(attok: AttTokArguments, model_args, finetuning_args) -> None:
    """Checks of AttTok against LF's own arguments (separate from the AttTok field checks)."""
    if finetuning_args.stage != "sft":
        raise AttTokError(f"attok: true needs `stage: sft`, got stage {finetuning_args.stage!r}.")
    embed_targets = {"embed_tokens", "lm_head", "wte", "output"}
    if set(finetuning_args.additional_target or []) & embed_targets:
        raise AttTokError(
            "attok: true trains only the attribute rows of embed/lm_head; remove them from `additional_target`."
        )
    _check_model_family(model_args)


def _check_model_family(model_args) -> None:
    from transformers import AutoConfig

    from .families import check_widths

    config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    check_widths(config, f"model {model_args.model_name_or_path}")


def _build_context(ours: dict, parsed: tuple) -> AttTokContext | None:
    by_name = {type(obj).__name__: obj for obj in parsed}
    model_args = by_name["ModelArguments"]
    finetuning_args = by_name["FinetuningArguments"]
    data_args = by_name.get("DataArguments")
    attok = parse_attok_dict(ours)
    saved = find_saved([model_args.model_name_or_path, *(model_args.adapter_name_or_path or [])])
    training = "Seq2SeqTrainingArguments" in by_name or "TrainingArguments" in by_name
    if not attok.attok and saved is None:
        return None
    if not version_supported():
        raise AttTokError(
            f"llamafactory-attok was built for LLaMA-Factory {', '.join(SUPPORTED_LF_VERSIONS)}, found "
            f"{lf_version()}; install llamafactory==0.9.5 or unset the attok keys."
        )
    if attok.attok:
        _check_lf_args(attok, model_args, finetuning_args)
    elif saved is not None:
        attok = AttTokArguments(**{**saved.config["args"], **{k: v for k, v in attok.to_dict().items() if k in ours}})
    datasets = list(getattr(data_args, "dataset", None) or []) if training else []
    return AttTokContext(
        args=attok,
        training=training and attok.attok,
        saved=saved,
        dataset_dir=getattr(data_args, "dataset_dir", None),
        datasets=datasets,
        finetuning_type=finetuning_args.finetuning_type,
    )


def _wrap_parse(original, read_args):
    @functools.wraps(original)
    def parse(args=None):
        raw = read_args(args)
        ours, rest = _split_raw(raw)
        if not ours:
            parsed = original(args)  # untouched path: vanilla LF sees exactly what it would without us
        else:
            parsed = original(rest)
        context = _build_context(ours, parsed)
        if context is not None:
            for obj in parsed:
                if type(obj).__name__ in ("ModelArguments", "FinetuningArguments"):
                    obj._attok = context
        return parsed

    return parse


def _guard_parse(original, read_args):
    """On an LF version we were not built for: refuse AttTok clearly, otherwise stay out of the way."""

    @functools.wraps(original)
    def parse(args=None):
        ours, _ = _split_raw(read_args(args))
        if ours:
            raise AttTokError(
                f"llamafactory-attok was built for LLaMA-Factory {', '.join(SUPPORTED_LF_VERSIONS)}, found "
                f"{lf_version()}; AttTok keys {', '.join(sorted(ours))} cannot be honoured."
            )
        return original(args)

    return parse


def _patch_parser(module) -> None:
    wrap = _wrap_parse if version_supported() else _guard_parse
    for name in ("_parse_train_args", "_parse_infer_args", "_parse_eval_args"):
        setattr(module, name, wrap(getattr(module, name), module.read_args))


# ---- tokenizer, model, adapter -------------------------------------------------------------------------------


def _wrap_patch_tokenizer(original):
    @functools.wraps(original)
    def patch_tokenizer(tokenizer, model_args, *args, **kwargs):
        original(tokenizer, model_args, *args, **kwargs)
        context = context_of(model_args)
        if context is not None:
            context.setup_tokenizer(tokenizer)

    return patch_tokenizer


def _wrap_patch_model(original):
    @functools.wraps(original)
    def patch_model(model, tokenizer, model_args, *args, **kwargs):
        original(model, tokenizer, model_args, *args, **kwargs)
        context = context_of(model_args)
        if context is not None:
            context.setup_model(model, tokenizer)

    return patch_model


def _wrap_init_adapter(original):
    @functools.wraps(original)
    def init_adapter(config, model, model_args, finetuning_args, is_trainable, *args, **kwargs):
        context = context_of(finetuning_args)
        if context is None:
            return original(config, model, model_args, finetuning_args, is_trainable, *args, **kwargs)
        indices = trainable_token_indices(model, context.token_ids) if is_trainable else None
        token = _TOKEN_INDICES.set(indices)
        try:
            with zero3_trainable_tokens_on_any_device() if is_zero3() else contextlib.nullcontext():
                model = original(config, model, model_args, finetuning_args, is_trainable, *args, **kwargs)
        finally:
            _TOKEN_INDICES.reset(token)
        if is_trainable and finetuning_args.finetuning_type in ("full", "freeze"):
            mask_non_attribute_gradients(model, context.token_ids)
        _attach_module(model, context, is_trainable)
        return model

    return init_adapter


def _attach_module(model, context: AttTokContext, is_trainable: bool) -> None:
    """Books, ACC and θ on the model (before any Trainer exists), restored from a saved run when loading."""
    import torch

    module = attach(model, context.args, context.token_ids, context.keyword_ids, seed=torch.initial_seed())
    saved = context.saved
    if saved is not None and (saved.folder / STATE_FILE_NAME).is_file():
        load_state(module, saved.folder / STATE_FILE_NAME)
    module.requires_grad_(is_trainable)


def _lora_config_factory(lora_config_cls):
    """LoraConfig that also trains the attribute rows (PEFT ``trainable_token_indices``) inside an AttTok run."""

    @functools.wraps(lora_config_cls, updated=())
    def make(*args, **kwargs):
        indices = _TOKEN_INDICES.get()
        if indices is not None:
            kwargs["trainable_token_indices"] = indices
        return lora_config_cls(*args, **kwargs)

    return make


def _patch_loader(module) -> None:
    module.patch_tokenizer = _wrap_patch_tokenizer(module.patch_tokenizer)
    module.patch_model = _wrap_patch_model(module.patch_model)
    module.init_adapter = _wrap_init_adapter(module.init_adapter)


def _patch_adapter(module) -> None:
    module.LoraConfig = _lora_config_factory(module.LoraConfig)


# ---- trainer, export ---------------------------------------------------------------------------------------------


def _trainer_factory(lf_trainer_cls):
    class AttTokTrainer(AttTokTrainerMixin, lf_trainer_cls):
        """LF's SFT trainer plus AttTok (see :class:`AttTokTrainerMixin`)."""

        def __init__(self, *args, attok: AttTokContext, **kwargs):
            self.attok = attok
            super().__init__(*args, **kwargs)

    from llamafactory.extras.ploting import plot_loss

    AttTokTrainer.attok_plot = staticmethod(plot_loss)

    @functools.wraps(lf_trainer_cls, updated=())
    def make(*args, **kwargs):
        context = context_of(kwargs.get("finetuning_args"))
        if context is None:
            return lf_trainer_cls(*args, **kwargs)
        gen_kwargs = kwargs.get("gen_kwargs") or {}
        eos = gen_kwargs.get("eos_token_id")
        if isinstance(eos, list):  # LF adds every extra special token; an attribute token must not stop generation
            gen_kwargs["eos_token_id"] = [i for i in eos if i not in set(context.token_ids)]
        trainer = AttTokTrainer(*args, attok=context, **kwargs)
        _forward_attok_logs(kwargs.get("callbacks") or [], trainer)
        return trainer

    make.attok_trainer_cls = AttTokTrainer
    return make


def _forward_attok_logs(callbacks: list, trainer) -> None:
    """Make this run's LF LogCallback instance write loss_ntp / loss_acm / acm_weight into trainer_log.jsonl."""
    from llamafactory.train.callbacks import LogCallback

    from .trainer import LOG_KEYS

    for callback in callbacks:
        if not isinstance(callback, LogCallback):
            continue
        original_on_log, original_write = callback.on_log, callback._write_log

        def on_log(args, state, control, _on_log=original_on_log, _write=original_write, _cb=callback, **kw):
            latest = state.log_history[-1] if state.log_history else {}
            extra = {k: latest[k] for k in (*LOG_KEYS, "attok_samples_without_image") if k in latest}
            _cb._write_log = lambda output_dir, logs: _write(output_dir, {**logs, **extra})
            return _on_log(args, state, control, **kw)

        callback.on_log = on_log


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
            if state.is_file():
                atomic_write_bytes(Path(model_args.export_dir) / STATE_FILE_NAME, state.read_bytes())

    return export_model


def _patch_workflow(module) -> None:
    module.CustomSeq2SeqTrainer = _trainer_factory(module.CustomSeq2SeqTrainer)


def _patch_tuner(module) -> None:
    module.export_model = _wrap_export(module.export_model)


def _wrap_clean_cmd(original):
    """The WebUI drops every ``False`` value before writing training_args.yaml; keep ``attok_*: false``."""

    @functools.wraps(original)
    def clean_cmd(args: dict[str, Any]) -> dict[str, Any]:
        cleaned = original(args)
        cleaned.update({k: v for k, v in args.items() if is_attok_key(k) and v is False})
        return cleaned

    return clean_cmd


def _patch_webui_common(module) -> None:
    module._clean_cmd = _wrap_clean_cmd(module._clean_cmd)


_PATCHERS = {
    "llamafactory.hparams.parser": _patch_parser,
    "llamafactory.model.loader": _patch_loader,
    "llamafactory.model.adapter": _patch_adapter,
    "llamafactory.train.sft.workflow": _patch_workflow,
    "llamafactory.train.tuner": _patch_tuner,
    "llamafactory.webui.common": _patch_webui_common,
}


def patch_module(name: str, module) -> None:
    """Patch one freshly imported LF module (called by the startup hook); idempotent."""
    patcher = _PATCHERS.get(name)
    if patcher is None or getattr(module, _PATCHED_MARK, False):
        return
    if name != "llamafactory.hparams.parser" and not version_supported():
        return  # the parser guard refuses AttTok; leave everything else as LF ships it
    patcher(module)
    setattr(module, _PATCHED_MARK, True)


def _warn_on_attok_folder(original):
    @functools.wraps(original)
    def load_model(tokenizer, model_args, *args, **kwargs):
        saved = find_saved([model_args.model_name_or_path, *(model_args.adapter_name_or_path or [])])
        if saved is not None:
            logger.warning(
                "%s was saved with AttTok state (attribute tokens, ACC, books) but ATTOK_DISABLE=1: none of it is "
                "restored, so outputs will differ from the trained model's.", saved.folder
            )
        return original(tokenizer, model_args, *args, **kwargs)

    return load_model


def warn_when_disabled(name: str, module) -> None:
    """ATTOK_DISABLE=1: leave LF as shipped, but say so when an AttTok folder is loaded."""
    if name == "llamafactory.model.loader" and not getattr(module, _PATCHED_MARK, False):
        module.load_model = _warn_on_attok_folder(module.load_model)
        setattr(module, _PATCHED_MARK, True)


def apply() -> None:
    """Patch every target LF module now (importing them), for programmatic use."""
    import importlib

    from . import _boot

    _boot.install()
    for name in _PATCHERS:
        module = sys.modules.get(name) or importlib.import_module(name)
        patch_module(name, module)
