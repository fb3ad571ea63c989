"""THE one place that touches LLaMA-Factory internals.

Every patch wraps a module global that LF looks up at call time, is idempotent, and does nothing unless the
parsed arguments (or the loaded adapter) carry AttTok. Patched points (LF 0.9.5):

- ``hparams.parser._parse_{train,infer,eval}_args``: pop and strictly parse ``attok*`` keys, attach the run.
- ``model.loader.patch_tokenizer / patch_model / init_adapter``: tokens, rows, row-only training.
- ``model.adapter.LoraConfig``: add ``trainable_token_indices``.
- ``train.sft.workflow.CustomSeq2SeqTrainer``: the AttTok trainer; attribute tokens out of ``eos_token_id``.
- ``train.tuner.export_model``: copy the AttTok description into the export folder.
- ``webui.common._clean_cmd``: keep ``attok_*: false`` from the WebUI's extra arguments (LF drops False values).
- ``webui.interface.create_{train,infer}_tab``, ``webui.runner.Runner._initialize / _parse_train_args``,
  ``webui.control.gen_loss_plot``, ``webui.chatter.WebChatModel.load_model``: LlamaBoard's AttTok panel (next to
  "LoRA configurations"), its values in the run, ``loss_ntp`` / ``loss_acm`` curves, the chat-tab checkbox.

Fail-safe: a patcher first looks up every LF symbol it needs and only then replaces them, so it either patches a
module whole or not at all. Any exception while patching is caught (here and in ``_boot``): LF stays exactly as
shipped, one warning names what could not be patched, and a later ``attok: true`` (or loading an AttTok folder)
stops with an error naming the LF version and the missing patch point. On an LF version other than the supported
one nothing private is touched: only the public ``read_args`` is wrapped, to refuse AttTok keys.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

from .args import AttTokArguments, is_attok_key, parse_attok_dict, split_attok_cli, split_attok_dict
from .attach import STATE_FILE_NAME, attach, load_state
from .compat import check_lf_options, check_no_video_columns
from .context import AttTokContext
from .errors import AttTokError
from .log import get_logger
from .peft_compat import zero3_trainable_tokens_on_any_device
from .resume import ExactResumeMixin
from .rows import check_rows_trainable, is_zero3, mask_non_attribute_gradients, trainable_token_indices
from .state import CONFIG_FILE_NAME, atomic_write_bytes, find_saved, find_saved_quietly, save_description
from .trainer import AttTokTrainerMixin
from .webui_panel import PANEL_KEYS

logger = get_logger(__name__)

SUPPORTED_LF_VERSIONS = ("0.9.5",)
_PATCHED_MARK = "__attok_patched__"
_TOKEN_INDICES: contextvars.ContextVar[Any] = contextvars.ContextVar("attok_token_indices", default=None)
# module name -> why it could not be patched (filled by patch_module; read when AttTok is asked for)
PATCH_FAILURES: dict[str, str] = {}
PARSER = "llamafactory.hparams.parser"
LOADER = "llamafactory.model.loader"
ADAPTER = "llamafactory.model.adapter"
WORKFLOW = "llamafactory.train.sft.workflow"
TUNER = "llamafactory.train.tuner"


class PatchPointMissing(AttributeError):
    """An LF symbol a patcher needs is gone (renamed or removed in another LF release)."""


def lf_version() -> str:
    try:
        from llamafactory.extras.env import VERSION
    except Exception as err:  # noqa: BLE001 - reported as part of the version, never raised from the hook
        return f"unknown ({type(err).__name__}: {err})"
    return str(VERSION)


def version_supported() -> bool:
    return lf_version() in SUPPORTED_LF_VERSIONS


def _require(module, *names: str) -> list[Any]:
    """The LF symbols a patcher replaces, all looked up before any is replaced (all-or-nothing patching)."""
    found = []
    for name in names:
        if not hasattr(module, name):
            raise PatchPointMissing(f"{module.__name__}.{name} does not exist")
        found.append(getattr(module, name))
    return found


def _unpatched(names: list[str]) -> dict[str, str]:
    """Of the LF modules ``names`` (imported now, so the hook runs), those that carry no AttTok patch, and why."""
    missing = {}
    for name in names:
        module = sys.modules.get(name) or importlib.import_module(name)
        if not getattr(module, _PATCHED_MARK, False):
            missing[name] = PATCH_FAILURES.get(name, "never patched (imported before the plugin's hook?)")
    return missing


def cannot_run_message(missing: dict[str, str]) -> str:
    points = "; ".join(f"{name}: {why}" for name, why in missing.items())
    return (
        f"AttTok cannot run on LLaMA-Factory {lf_version()} (this plugin supports "
        f"{', '.join(SUPPORTED_LF_VERSIONS)}): "
        f"could not patch {points}. Vanilla LLaMA-Factory is unaffected; remove the attok keys (and AttTok "
        f"adapters), or install llamafactory=={SUPPORTED_LF_VERSIONS[0]}."
    )


def _require_patched(training: bool) -> None:
    """Every LF module an AttTok run goes through must carry our patch, else stop before loading anything."""
    names = [LOADER, ADAPTER, WORKFLOW] if training else [LOADER]
    missing = _unpatched(names)
    if missing:
        raise AttTokError(cannot_run_message(missing))


def context_of(args_obj: Any) -> AttTokContext | None:
    return getattr(args_obj, "_attok", None)


# ---- arguments ---------------------------------------------------------------------------------------------


def _split_raw(raw: dict | list) -> tuple[dict, dict | list]:
    if isinstance(raw, dict):
        return split_attok_dict(raw)
    return split_attok_cli(list(raw))


def _check_lf_args(attok: AttTokArguments, by_name: dict[str, Any]) -> None:
    """Checks of AttTok against LF's own arguments (separate from the AttTok field checks)."""
    model_args, finetuning_args = by_name["ModelArguments"], by_name["FinetuningArguments"]
    data_args = by_name.get("DataArguments")
    if finetuning_args.stage != "sft":
        raise AttTokError(f"attok: true needs `stage: sft`, got stage {finetuning_args.stage!r}.")
    embed_targets = {"embed_tokens", "lm_head", "wte", "output"}
    if set(finetuning_args.additional_target or []) & embed_targets:
        raise AttTokError(
            "attok: true trains only the attribute rows of embed/lm_head; remove them from `additional_target`."
        )
    training_args = by_name.get("Seq2SeqTrainingArguments") or by_name.get("TrainingArguments")
    check_lf_options({"model": model_args, "data": data_args, "finetuning": finetuning_args,
                      "training": training_args})
    if data_args is not None:
        datasets = [*(data_args.dataset or []), *(getattr(data_args, "eval_dataset", None) or [])]
        check_no_video_columns(data_args.dataset_dir, datasets)
    _check_model_family(model_args)


def _check_model_family(model_args) -> None:
    from transformers import AutoConfig

    from .families import check_widths

    config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    check_widths(config, f"model {model_args.model_name_or_path}")


def _refuse_orphan_settings(ours: dict, training_args) -> None:
    """AttTok settings without ``attok: true`` (and nothing saved to apply them to) would silently do nothing;
    resuming an AttTok checkpoint without AttTok would fail deep in transformers. Both stop here, said plainly."""
    settings = sorted(k for k in ours if k not in ("attok", "attok_show_tokens"))
    if settings and "attok" not in ours:
        raise AttTokError(
            f"AttTok settings {', '.join(settings)} are given but `attok: true` is missing, so none of AttTok would "
            "run. Add `attok: true`, or remove them.")
    resume = getattr(training_args, "resume_from_checkpoint", None)
    if resume and find_saved_quietly([resume]) is not None:
        raise AttTokError(f"{resume}: this checkpoint was trained with AttTok (it holds attok_* files); resuming it "
                          "needs `attok: true` with the run's AttTok settings.")


def _build_context(ours: dict, parsed: tuple) -> AttTokContext | None:
    by_name = {type(obj).__name__: obj for obj in parsed}
    model_args = by_name["ModelArguments"]
    finetuning_args = by_name["FinetuningArguments"]
    data_args = by_name.get("DataArguments")
    attok = parse_attok_dict(ours)
    saved = find_saved([model_args.model_name_or_path, *(model_args.adapter_name_or_path or [])])
    training = "Seq2SeqTrainingArguments" in by_name or "TrainingArguments" in by_name
    if not attok.attok and saved is None:
        _refuse_orphan_settings(ours, by_name.get("Seq2SeqTrainingArguments") or by_name.get("TrainingArguments"))
        return None
    if not version_supported():
        raise AttTokError(_unsupported_version_reason())
    _require_patched(training and attok.attok)
    if attok.attok:
        _check_lf_args(attok, by_name)
    elif saved is not None:
        try:
            attok = AttTokArguments(**{**saved.config["args"],
                                       **{k: v for k, v in attok.to_dict().items() if k in ours}})
        except (AttTokError, TypeError) as err:
            raise AttTokError(f"{saved.folder / CONFIG_FILE_NAME}: saved AttTok arguments are invalid: {err}") from err
    datasets = list(getattr(data_args, "dataset", None) or []) if training else []
    return AttTokContext(
        args=attok,
        training=training and attok.attok,
        saved=saved,
        dataset_dir=getattr(data_args, "dataset_dir", None),
        datasets=datasets,
        finetuning_type=finetuning_args.finetuning_type,
        lf_args={"model": model_args, "data": data_args,
                 "training": by_name.get("Seq2SeqTrainingArguments") or by_name.get("TrainingArguments")},
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


def _raw_folders(raw: dict | list) -> list[str]:
    """``model_name_or_path`` and ``adapter_name_or_path`` (comma-separated) from raw YAML / CLI arguments."""
    values: list[Any] = []
    if isinstance(raw, dict):
        values = [raw.get("model_name_or_path"), raw.get("adapter_name_or_path")]
    else:
        for i, item in enumerate(raw):
            for key in ("model_name_or_path", "adapter_name_or_path"):
                if item == f"--{key}" and i + 1 < len(raw):
                    values.append(raw[i + 1])
                elif item.startswith(f"--{key}="):
                    values.append(item.split("=", 1)[1])
    folders = []
    for value in values:
        items = value if isinstance(value, list | tuple) else str(value or "").split(",")
        folders += [str(v).strip() for v in items if str(v).strip()]
    return folders


def _refuse_attok(raw: dict | list, why: str) -> None:
    """Raise when raw arguments ask for AttTok (keys, or an AttTok folder to load) that cannot be honoured."""
    ours, _ = _split_raw(raw)
    if ours:
        raise AttTokError(f"AttTok keys {', '.join(sorted(ours))} cannot be honoured: {why}")
    saved = find_saved_quietly(_raw_folders(raw))
    if saved is not None:
        raise AttTokError(f"{saved}: this folder was saved with AttTok state, which cannot be restored: {why}")


def _guard_read_args(original, why_later):
    """Public ``read_args`` wrapper: AttTok keys or folders stop the run with ``why_later()``; the rest is LF's."""

    @functools.wraps(original)
    def read_args(args=None):
        raw = original(args)
        _refuse_attok(raw, why_later())
        return raw

    return read_args


def _refuse_mca(original, read_args):
    """``USE_MCA=1`` parses through MCore-Adapter's argument classes: AttTok cannot run there."""

    @functools.wraps(original)
    def parse(args=None):
        _refuse_attok(read_args(args), "USE_MCA / use_mca replaces the model and trainer AttTok hooks into")
        return original(args)

    return parse


def _unsupported_version_reason() -> str:
    return (
        f"llamafactory-attok was built for LLaMA-Factory {', '.join(SUPPORTED_LF_VERSIONS)}, found {lf_version()}; "
        f"install llamafactory=={SUPPORTED_LF_VERSIONS[0]} or unset the attok keys."
    )


def _patch_parser(module) -> None:
    names = ("_parse_train_args", "_parse_infer_args", "_parse_eval_args", "_parse_train_mca_args")
    read_args, *originals = _require(module, "read_args", *names)
    wrapped = [_wrap_parse(o, read_args) for o in originals[:3]] + [_refuse_mca(originals[3], read_args)]
    for name, function in zip(names, wrapped, strict=True):
        setattr(module, name, function)


def _patch_parser_guard(module, reason) -> None:
    """Unsupported LF version, or the full parser patch failed: wrap only the public ``read_args``."""
    (read_args,) = _require(module, "read_args")
    module.read_args = _guard_read_args(read_args, reason)


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
        if is_trainable:  # verified once, before step 1: the rows AttTok trains really are trainable
            check_rows_trainable(model, context.token_ids, finetuning_args.finetuning_type)
        _attach_module(model, context, is_trainable)
        return model

    return init_adapter


def _attach_module(model, context: AttTokContext, is_trainable: bool) -> None:
    """Books, ACC and θ on the model (before any Trainer exists), restored from a saved run when loading."""
    import torch

    module = attach(model, context.args, context.token_ids, context.keyword_ids, seed=torch.initial_seed())
    saved = context.saved
    if saved is not None:
        load_state(module, saved.folder / STATE_FILE_NAME)  # a missing or unreadable file is an error naming it
    module.requires_grad_(is_trainable)
    module.expects_trainer = is_trainable and context.training


def _lora_config_subclass(lora_config_cls):
    """PEFT's LoraConfig, plus ``trainable_token_indices`` for the attribute rows inside an AttTok run.

    A subclass (not a factory function), so ``isinstance(config, LoraConfig)`` keeps working everywhere.
    """

    class LoraConfig(lora_config_cls):
        __doc__ = lora_config_cls.__doc__

        def __post_init__(self) -> None:
            indices = _TOKEN_INDICES.get()
            if indices is not None:
                if self.trainable_token_indices not in (None, indices):
                    raise AttTokError(
                        "attok: true sets LoRA's trainable_token_indices to the attribute rows; another value "
                        f"({self.trainable_token_indices!r}) was given.")
                self.trainable_token_indices = indices
            super().__post_init__()

    LoraConfig.__module__ = lora_config_cls.__module__
    LoraConfig.__qualname__ = lora_config_cls.__qualname__
    return LoraConfig


def _patch_loader(module) -> None:
    patch_tokenizer, patch_model, init_adapter = _require(module, "patch_tokenizer", "patch_model", "init_adapter")
    module.patch_tokenizer = _wrap_patch_tokenizer(patch_tokenizer)
    module.patch_model = _wrap_patch_model(patch_model)
    module.init_adapter = _wrap_init_adapter(init_adapter)


def _patch_adapter(module) -> None:
    (lora_config,) = _require(module, "LoraConfig")
    module.LoraConfig = _lora_config_subclass(lora_config)


# ---- trainer, export ---------------------------------------------------------------------------------------------


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


def _trainer_factory(lf_trainer_cls):
    class AttTokTrainer(AttTokTrainerMixin, ExactResumeMixin, lf_trainer_cls):
        """LF's SFT trainer plus AttTok (see :class:`AttTokTrainerMixin`); full / freeze runs resume exactly
        (:class:`ExactResumeMixin` works around transformers 5.6 dropping the weights on resume)."""

        def __init__(self, *args, attok: AttTokContext, **kwargs):
            self.attok = attok
            super().__init__(*args, **kwargs)

    from llamafactory.extras.ploting import plot_loss

    AttTokTrainer.attok_plot = staticmethod(plot_loss)

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
        trainer = AttTokTrainer(*args, attok=context, **kwargs)
        if context.training:
            _forward_attok_logs(callbacks)
        return trainer

    make.attok_trainer_cls = AttTokTrainer
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


def _forward_attok_logs(callbacks: list) -> None:
    """Make this run's LF LogCallback write loss_ntp / loss_acm / acm_weight into trainer_log.jsonl, and check at
    the end of training that it did (an LF change that bypasses ``_write_log`` stops loudly, not silently)."""
    from .trainer import LOG_KEYS

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


def _patch_workflow(module) -> None:
    (trainer_cls,) = _require(module, "CustomSeq2SeqTrainer")
    module.CustomSeq2SeqTrainer = _trainer_factory(trainer_cls)


def _patch_tuner(module) -> None:
    (export_model,) = _require(module, "export_model")
    module.export_model = _wrap_export(export_model)


def _wrap_clean_cmd(original):
    """The WebUI drops every ``False`` value before writing training_args.yaml; keep ``attok_*: false``."""

    @functools.wraps(original)
    def clean_cmd(args: dict[str, Any]) -> dict[str, Any]:
        cleaned = original(args)
        cleaned.update({k: v for k, v in args.items() if is_attok_key(k) and v is False})
        return cleaned

    return clean_cmd


def _patch_webui_common(module) -> None:
    (clean_cmd,) = _require(module, "_clean_cmd")
    module._clean_cmd = _wrap_clean_cmd(clean_cmd)


# ---- LlamaBoard: the AttTok panel, its values, the curves, the chat checkbox ------------------------------------


class _WatchedBlock:
    """A gradio layout block whose closing may add AttTok components right after it (see :class:`_LayoutProxy`)."""

    def __init__(self, proxy: _LayoutProxy, block) -> None:
        self._proxy, self._block = proxy, block

    def __getattr__(self, name):
        return getattr(self._block, name)

    def __enter__(self):
        return self._block.__enter__()

    def __exit__(self, *exc):
        result = self._block.__exit__(*exc)
        if exc[0] is None:
            self._proxy.on_close(self._block, sys._getframe(1).f_locals)
        return result


class _LayoutProxy:
    """Stands in for the ``gradio`` module inside one LlamaBoard tab builder. When the layout block that
    ``matches(block, builder_locals)`` closes, ``build(builder_locals)`` creates the AttTok components right after
    it and registers them in the builder's ``input_elems`` / ``elem_dict`` (before LF binds its buttons to them).
    A failure there is reported and leaves LlamaBoard as shipped (the Extra-arguments route still works)."""

    def __init__(self, gr, matches, build, where: str) -> None:
        self._gr, self._matches, self._build, self.where, self.done = gr, matches, build, where, False

    def __getattr__(self, name):
        value = getattr(self._gr, name)
        if name in ("Accordion", "Row") and not self.done:
            return lambda *args, **kwargs: _WatchedBlock(self, value(*args, **kwargs))
        return value

    def on_close(self, block, builder_locals: dict) -> None:
        if self.done or not self._matches(block, builder_locals):
            return
        self.done = True
        try:
            self._build(builder_locals)
        except Exception as err:  # noqa: BLE001 - LlamaBoard must keep working; said once, on stderr
            _warn_not_patched(self.where, f"{type(err).__name__}: {err}")


def _build_train_panel(builder_locals: dict) -> None:
    from . import webui_panel

    dataset_dir = builder_locals["dataset_dir"]
    elems = webui_panel.build_train_panel(getattr(dataset_dir, "value", None))
    builder_locals["input_elems"].update(e for name, e in elems.items() if name != "attok_tab")
    builder_locals["elem_dict"].update(elems)
    # listed when the dropdown is opened: no extra event on LF's own Data dir box (its change event reloads the
    # Dataset list, and Gradio hides a component while an event that outputs to it runs)
    elems["attok_vocab"].focus(webui_panel.refresh_vocab_choices, [dataset_dir], [elems["attok_vocab"]], queue=False)


def _build_chat_checkbox(builder_locals: dict) -> None:
    import gradio as gr

    with gr.Row():
        checkbox = gr.Checkbox(value=False)
    builder_locals["input_elems"].add(checkbox)
    builder_locals["elem_dict"]["attok_show_tokens"] = checkbox


def _wrap_tab_builder(original, component_module: str, matches, build, where: str):
    @functools.wraps(original)
    def create_tab(engine):
        module = importlib.import_module(component_module)
        real_gr = module.gr
        proxy = _LayoutProxy(real_gr, matches, build, where)
        module.gr = proxy
        try:
            elems = original(engine)
        finally:
            module.gr = real_gr
        if not proxy.done:
            _warn_not_patched(where, "the place for the AttTok components was not found")
        return elems

    return create_tab


def _patch_webui_interface(module) -> None:
    from llamafactory.webui.locales import LOCALES

    from .webui_panel import locales

    create_train_tab, create_infer_tab = _require(module, "create_train_tab", "create_infer_tab")
    module.create_train_tab = _wrap_tab_builder(
        create_train_tab, "llamafactory.webui.components.train", lambda block, f: f.get("lora_tab") is block,
        _build_train_panel, "LlamaBoard Train tab (AttTok panel)")
    module.create_infer_tab = _wrap_tab_builder(
        create_infer_tab, "llamafactory.webui.components.infer",
        lambda block, f: "extra_args" in f and "load_btn" not in f, _build_chat_checkbox,
        "LlamaBoard Chat tab (show attribute tokens)")
    for name, entry in locales().items():
        LOCALES.setdefault(name, entry)


def _panel_values(runner, data: dict, tab: str, names) -> dict[str, Any]:
    """Values of the AttTok elements in a LlamaBoard event's data ({} when the panel is not there)."""
    values = {}
    for name in names:
        try:
            values[name] = data[runner.manager.get_elem_by_id(f"{tab}.{name}")]
        except KeyError:
            return {}
    return values


_PANEL_NAMES = ("attok_enable", *PANEL_KEYS)


def _wrap_initialize(original):
    """Invalid panel values are LlamaBoard's usual pre-launch error, with the CLI's text."""

    @functools.wraps(original)
    def _initialize(self, data, do_train, from_preview):
        from .webui_panel import panel_error

        error = original(self, data, do_train, from_preview)
        if error or not do_train:
            return error
        return panel_error(_panel_values(self, data, "train", _PANEL_NAMES))

    return _initialize


def _wrap_parse_webui_train_args(original):
    """Panel values become ``attok_*`` keys of the run (command preview, training_args.yaml, the run)."""

    @functools.wraps(original)
    def _parse_train_args(self, data):
        from .webui_panel import panel_args

        args = original(self, data)
        args.update(panel_args(_panel_values(self, data, "train", _PANEL_NAMES)))
        return args

    return _parse_train_args


def _patch_webui_runner(module) -> None:
    (runner,) = _require(module, "Runner")
    initialize, parse = _require(runner, "_initialize", "_parse_train_args")
    runner._initialize = _wrap_initialize(initialize)
    runner._parse_train_args = _wrap_parse_webui_train_args(parse)


def _wrap_loss_plot(original):
    @functools.wraps(original)
    def gen_loss_plot(trainer_log):
        from .webui_panel import add_attok_curves

        figure = original(trainer_log)
        add_attok_curves(figure, trainer_log)
        return figure

    return gen_loss_plot


def _patch_webui_control(module) -> None:
    (gen_loss_plot,) = _require(module, "gen_loss_plot")
    module.gen_loss_plot = _wrap_loss_plot(gen_loss_plot)


def _wrap_chat_load(original):
    """The Chat tab's "show attribute tokens" box becomes ``attok_show_tokens`` in the model's extra arguments."""

    @functools.wraps(original)
    def load_model(self, data):
        import json

        if _panel_values(self, data, "infer", ("attok_show_tokens",)).get("attok_show_tokens"):
            extra_elem = self.manager.get_elem_by_id("infer.extra_args")
            try:
                extra = json.loads(data[extra_elem] or "{}")
            except json.JSONDecodeError:
                extra = None  # LF reports its own invalid-JSON error
            if isinstance(extra, dict):
                data = {**data, extra_elem: json.dumps({**extra, "attok_show_tokens": True})}
        return original(self, data)

    return load_model


def _patch_webui_chatter(module) -> None:
    (chat_model,) = _require(module, "WebChatModel")
    (load_model,) = _require(chat_model, "load_model")
    chat_model.load_model = _wrap_chat_load(load_model)


_PATCHERS = {
    PARSER: _patch_parser,
    LOADER: _patch_loader,
    ADAPTER: _patch_adapter,
    WORKFLOW: _patch_workflow,
    TUNER: _patch_tuner,
    "llamafactory.webui.common": _patch_webui_common,
    "llamafactory.webui.interface": _patch_webui_interface,
    "llamafactory.webui.runner": _patch_webui_runner,
    "llamafactory.webui.control": _patch_webui_control,
    "llamafactory.webui.chatter": _patch_webui_chatter,
}


def _warn_not_patched(name: str, why: str) -> None:
    sys.stderr.write(
        f"llamafactory-attok: could not patch {name} ({why}) on LLaMA-Factory {lf_version()}; LLaMA-Factory runs "
        "as shipped, and AttTok runs will stop with an error.\n"
    )


def patch_module(name: str, module) -> None:
    """Patch one freshly imported LF module (called by the startup hook); idempotent, never raises.

    On the supported LF version every target is patched whole or not at all; a failure is recorded in
    ``PATCH_FAILURES`` and reported once. On another version only the parser's public ``read_args`` is wrapped.
    """
    patcher = _PATCHERS.get(name)
    if patcher is None or getattr(module, _PATCHED_MARK, False):
        return
    supported = version_supported()
    try:
        if supported:
            patcher(module)
            setattr(module, _PATCHED_MARK, True)
            return
    except Exception as err:  # noqa: BLE001 - LF must stay usable; recorded and reported, refused on use
        PATCH_FAILURES[name] = f"{type(err).__name__}: {err}"
        _warn_not_patched(name, PATCH_FAILURES[name])
    if name != PARSER:
        return
    try:  # unsupported LF, or the full parser patch failed: only refuse AttTok at the public read_args
        if supported:
            _patch_parser_guard(module, lambda: cannot_run_message({PARSER: PATCH_FAILURES[PARSER]}))
        else:
            _patch_parser_guard(module, _unsupported_version_reason)
        module.__attok_guarded__ = True
    except Exception as err:  # noqa: BLE001 - same rule; LF's own parser then rejects the unknown attok keys
        PATCH_FAILURES[f"{name}.read_args"] = f"{type(err).__name__}: {err}"
        _warn_not_patched(f"{name}.read_args", PATCH_FAILURES[f"{name}.read_args"])


def _guard_disabled_load(original):
    """ATTOK_DISABLE=1: warn when an AttTok folder is loaded, and turn the crash PEFT then gives (attribute-token
    rows beyond the base embedding) into an error that says what to do."""

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


def warn_when_disabled(name: str, module) -> None:
    """ATTOK_DISABLE=1: leave LF as shipped, but say so when an AttTok folder is loaded. Never raises."""
    try:
        if name == LOADER and not getattr(module, _PATCHED_MARK, False):
            (load_model,) = _require(module, "load_model")
            module.load_model = _guard_disabled_load(load_model)
            setattr(module, _PATCHED_MARK, True)
    except Exception as err:  # noqa: BLE001 - LF must stay usable
        _warn_not_patched(name, f"{type(err).__name__}: {err}")


def apply() -> None:
    """Patch every target LF module now (importing them), for programmatic use."""
    from . import _boot

    _boot.install()
    for name in _PATCHERS:
        module = sys.modules.get(name) or importlib.import_module(name)
        patch_module(name, module)
