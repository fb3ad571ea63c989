"""The run policy of an AttTok run: which ``attok*`` keys, LF options, folders and saved runs it accepts, and the
:class:`~llamafactory_attok.context.AttTokContext` it attaches — every refusal and check that does not depend on
patching LLaMA-Factory (testable on LF's parsed argument objects alone). ``lf_patches.parser`` only wraps LF's
parse functions around :func:`build_context` and :func:`refuse_attok`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .args import AttTokArguments, parse_attok_dict, split_attok_cli, split_attok_dict
from .compat import check_lf_options, check_no_video_columns
from .context import AttTokContext
from .errors import AttTokError
from .filenames import CONFIG_FILE_NAME, VOCAB_FILE_NAME
from .run_guards import refuse_output_over_inputs
from .safe_paths import within
from .state import find_saved, find_saved_quietly

# attok_* keys that mean something without `attok: true`
VANILLA_KEYS = ("attok", "attok_show_tokens", "attok_training_positions")
_BACKENDS_WITHOUT_ACC = ("vllm", "sglang")


def split_raw(raw: dict | list) -> tuple[dict, dict | list]:
    """(``attok*`` keys, the rest) of raw YAML (dict) or CLI (list) arguments."""
    if isinstance(raw, dict):
        return split_attok_dict(raw)
    return split_attok_cli(list(raw))


def _check_lf_args(by_name: dict[str, Any]) -> None:
    """Checks of AttTok against LF's own arguments (separate from the AttTok field checks)."""
    model_args, data_args = by_name["ModelArguments"], by_name.get("DataArguments")
    training_args = by_name.get("Seq2SeqTrainingArguments") or by_name.get("TrainingArguments")
    check_lf_options({"model": model_args, "data": data_args, "finetuning": by_name["FinetuningArguments"],
                      "training": training_args})
    if data_args is not None:
        datasets = [*(data_args.dataset or []), *(getattr(data_args, "eval_dataset", None) or [])]
        check_no_video_columns(data_args.dataset_dir, datasets)
    _check_model_family(model_args, getattr(data_args, "template", None))


def _check_output_dir(model_args, data_args, training_args) -> None:
    """What an AttTok run (training, do_predict, do_eval) writes never lands in what it reads."""
    if training_args is None or not any(getattr(training_args, k, False) for k in ("do_train", "do_predict",
                                                                                   "do_eval")):
        return
    refuse_output_over_inputs(training_args.output_dir, {
        "model_name_or_path": model_args.model_name_or_path,
        "adapter_name_or_path": ",".join(model_args.adapter_name_or_path or []),
        "dataset_dir": getattr(data_args, "dataset_dir", None)})


def _check_vocab_outside_output(vocab: str | None, output_dir: str) -> None:
    """``attok_vocab`` inside ``output_dir``, where the run writes ``attok_vocab.yaml`` (and each checkpoint its own):
    the user's file would be replaced by the run's own writing of it (comments and formatting lost) — refused, unless
    it is exactly that writing already (e.g. the vocabulary a run saved, given back)."""
    from .vocab import load_vocab

    if not vocab or not Path(vocab).is_file() or not within(vocab, output_dir):
        return
    if load_vocab(vocab).to_yaml().encode("utf-8") == Path(vocab).read_bytes():
        return
    raise AttTokError(f"attok_vocab {vocab} lies in output_dir {output_dir}, where the run writes "
                      f"{VOCAB_FILE_NAME} files: yours would be rewritten (its comments and layout lost). Copy it "
                      "outside output_dir and point attok_vocab there.")


def _check_model_family(model_args, template: str | None) -> None:
    """The model is of a supported family, its visual tokens reach LLM width, and ``template`` is one of the
    family's LF templates (another template trains prompts the model was never built for)."""
    from transformers import AutoConfig

    from .families import check_widths

    config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    family = check_widths(config, f"model {model_args.model_name_or_path}")
    if template is not None and family.templates and template not in family.templates:
        raise AttTokError(
            f"template {template!r} does not fit model {model_args.model_name_or_path} (a {family.name} model): "
            f"use `template: {family.templates[0]}`" + (f" (or {', '.join(family.templates[1:])})"
                                                        if len(family.templates) > 1 else "") + ".")


def _refuse_changed_saved_settings(ours: dict, saved) -> None:
    """Loading a trained AttTok folder: its settings are what it was trained with. Only the display option
    ``attok_show_tokens`` may be given; another value of a trained setting would silently run another model."""
    saved_args = saved.config.get("args", {})
    given = parse_attok_dict(ours).to_dict()
    changed = [f"{k}: {saved_args.get(k)!r} -> {given[k]!r}" for k in ours
               if k not in ("attok", "attok_show_tokens") and saved_args.get(k, given[k]) != given[k]]
    if "attok_training_positions" in ours and not given["attok_training_positions"]:
        changed.append("attok_training_positions: false (an AttTok model always generates with its training "
                       "positions)")
    if changed:
        raise AttTokError(
            f"{saved.folder}: this AttTok folder was trained with other settings than the ones given now "
            f"({'; '.join(changed)}); they are fixed by training (see {CONFIG_FILE_NAME}). Remove those keys.")


def _check_backend(model_args, attok: AttTokArguments, saved) -> None:
    """vLLM / SGLang run their own model code: ACC (Eq. 6-7) cannot run inside them, nor can PEFT's trainable-token
    rows of an adapter. Only a merged export of a run trained with ``attok_acc: false`` is a plain model there."""
    backend = str(getattr(model_args, "infer_backend", "huggingface") or "huggingface").lower()
    backend = backend.rsplit(".", 1)[-1]
    if backend not in _BACKENDS_WITHOUT_ACC:
        return
    if attok.attok_acc:
        raise AttTokError(
            f"{saved.folder}: `infer_backend: {backend}` cannot run this AttTok model: its ACC adapter (Eq. 6-7) "
            f"refines the visual tokens inside the transformers model, which {backend} replaces with its own code. "
            "Use `infer_backend: huggingface` (chat, api, WebUI, do_predict), or train with `attok_acc: false` and "
            "serve the folder made by `llamafactory-cli export`.")
    if model_args.adapter_name_or_path:
        raise AttTokError(
            f"{saved.folder}: `infer_backend: {backend}` cannot load AttTok's attribute-token rows from a LoRA "
            "adapter (PEFT trainable_token_indices); merge first with `llamafactory-cli export` and serve that "
            "folder.")


def _auto_resume(training_args) -> str | None:
    """The checkpoint LF will resume from by itself (``output_dir`` with checkpoints, no ``overwrite_output_dir``)."""
    if training_args is None or not getattr(training_args, "do_train", False):
        return None
    if getattr(training_args, "overwrite_output_dir", False) or not os.path.isdir(training_args.output_dir):
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(training_args.output_dir)


def _refuse_adapter_without_attok_files(model_args) -> None:
    """A LoRA folder with trainable-token rows (only AttTok sets them through LF) but none of AttTok's files is an
    AttTok run whose save did not finish: loading it would crash deep in PEFT (rows beyond the base vocabulary)."""
    import json
    from pathlib import Path

    from .filenames import ATTOK_FILES

    for folder in model_args.adapter_name_or_path or []:
        config_path = Path(folder) / "adapter_config.json"
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # LF / PEFT report unreadable adapters themselves
        if isinstance(config, dict) and config.get("trainable_token_indices"):
            raise AttTokError(
                f"{folder}: this adapter trains token rows (trainable_token_indices) but holds none of AttTok's "
                f"files ({', '.join(ATTOK_FILES)}): most likely an AttTok run whose save did not finish (disk full, "
                "killed). Load a complete checkpoint folder of that run instead.")


def _refuse_orphan_settings(ours: dict, training_args) -> None:
    """AttTok settings without ``attok: true`` (and nothing saved to apply them to) would silently do nothing;
    resuming an AttTok checkpoint without AttTok would fail deep in transformers. Both stop here, said plainly."""
    settings = sorted(k for k in ours if k not in VANILLA_KEYS)
    if settings:
        said = "`attok: false` is given" if "attok" in ours else "`attok: true` is missing"
        raise AttTokError(
            f"AttTok settings {', '.join(settings)} are given but {said}, so none of AttTok would run. Set "
            "`attok: true`, or remove them.")
    resume = getattr(training_args, "resume_from_checkpoint", None) or _auto_resume(training_args)
    if resume and find_saved_quietly([resume]) is not None:
        raise AttTokError(f"{resume}: this checkpoint was trained with AttTok (it holds attok_* files); resuming it "
                          "needs `attok: true` with the run's AttTok settings.")


def build_context(ours: dict, parsed: tuple,
                  require_runtime: Callable[[bool], None] = lambda training: None) -> AttTokContext | None:
    """The AttTok run described by the ``attok*`` keys ``ours`` and LF's parsed arguments (None: vanilla LF).

    ``require_runtime(training)`` is called once AttTok is known to run, before any other check: the LF patch
    package passes its stack and patch-point checks (this module never imports it)."""
    by_name = {type(obj).__name__: obj for obj in parsed}
    model_args = by_name["ModelArguments"]
    finetuning_args = by_name["FinetuningArguments"]
    data_args = by_name.get("DataArguments")
    training_args = by_name.get("Seq2SeqTrainingArguments") or by_name.get("TrainingArguments")
    attok = parse_attok_dict(ours)
    saved = find_saved([model_args.model_name_or_path, *(model_args.adapter_name_or_path or [])])
    training = training_args is not None
    if not attok.attok and saved is None:
        _refuse_orphan_settings(ours, training_args)
        _refuse_adapter_without_attok_files(model_args)
        return None
    require_runtime(training and attok.attok)
    if attok.attok:
        if not attok.attok_training_positions:
            raise AttTokError("attok_training_positions: false is not available with `attok: true`: an AttTok model "
                              "always generates with the positions it was trained with. Remove the key.")
        _check_lf_args(by_name)
    elif saved is not None:
        _refuse_changed_saved_settings(ours, saved)
        try:
            attok = AttTokArguments(**{**saved.config["args"],
                                       **{k: v for k, v in attok.to_dict().items() if k in ours}})
        except (AttTokError, TypeError) as err:
            raise AttTokError(f"{saved.folder / CONFIG_FILE_NAME}: saved AttTok arguments are invalid: {err}") from err
        _check_backend(model_args, attok, saved)
        _check_model_family(model_args, getattr(data_args, "template", None))
    _check_output_dir(model_args, data_args, training_args)
    if training_args is not None and attok.attok:
        _check_vocab_outside_output(attok.attok_vocab, training_args.output_dir)
    return AttTokContext(
        args=attok,
        training=training and attok.attok,
        saved=saved,
        dataset_dir=getattr(data_args, "dataset_dir", None),
        datasets=list(getattr(data_args, "dataset", None) or []) if training else [],
        finetuning_type=finetuning_args.finetuning_type,
        lf_args={"model": model_args, "data": data_args, "training": training_args},
        # read before LF's get_train_args fills in its own auto-resume choice
        explicit_resume=getattr(training_args, "resume_from_checkpoint", None),
    )


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


def refuse_attok(raw: dict | list, why: str) -> None:
    """Raise when raw arguments ask for AttTok (keys, or an AttTok folder to load) that cannot be honoured."""
    ours, _ = split_raw(raw)
    if ours:
        raise AttTokError(f"AttTok keys {', '.join(sorted(ours))} cannot be honoured: {why}")
    saved = find_saved_quietly(_raw_folders(raw))
    if saved is not None:
        raise AttTokError(f"{saved}: this folder was saved with AttTok state, which cannot be restored: {why}")
