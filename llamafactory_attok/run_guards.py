"""Guards of a training run's folders: what the run writes never lands on what it reads, one run per output folder,
and a resume continues the run it resumes (same vocabulary and ids, same AttTok components)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import AttTokError
from .filenames import ATTOK_FILES, CONFIG_FILE_NAME, VOCAB_FILE_NAME
from .log import get_logger
from .safe_paths import within
from .state import find_saved
from .vocab import AttributeVocab

logger = get_logger(__name__)

LOCK_FILE_NAME = ".attok_run.lock"
# switches whose change between a checkpoint and its resume changes what the saved parameters are
_COMPONENT_SWITCHES = ("attok_acc", "attok_acm")


def refuse_output_over_inputs(output_dir: str, inputs: dict[str, str | None], option: str = "output_dir") -> None:
    """``output_dir`` (or ``export_dir``: ``option``) may not be, contain or lie inside a folder the run reads (model,
    adapters, data): LF and AttTok would write tokenizer, adapter and config files into it (``overwrite_output_dir``
    or not)."""
    if Path(output_dir).expanduser().exists() and not Path(output_dir).expanduser().is_dir():
        raise AttTokError(f"{option} {output_dir} is a file, not a folder: choose a folder path for {option}.")
    for source, value in inputs.items():
        for item in str(value or "").split(","):
            folder = item.strip()
            if not folder or not Path(folder).expanduser().exists():
                continue
            if within(output_dir, folder) or within(folder, output_dir):
                raise AttTokError(
                    f"{option} {output_dir} overlaps {source} {folder}: this AttTok run would write its "
                    "tokenizer, adapter and AttTok files into a folder it reads from (overwrite_output_dir does not "
                    f"change that). Choose an {option} outside it.")


def refuse_foreign_attok_files(export_dir: str, saved_folder: Path) -> None:
    """An export writes AttTok's files (config, vocabulary, state) into ``export_dir``: one already there must be the
    exported run's own (a re-export: the same bytes), else it is a file of the user's or of another run, which the
    export would replace — refused before anything is written."""
    for name in ATTOK_FILES:
        there, ours = Path(export_dir) / name, saved_folder / name
        if there.is_symlink() or (there.exists() and (not ours.is_file() or there.read_bytes() != ours.read_bytes())):
            raise AttTokError(f"export_dir {export_dir} holds an {name} that is not {saved_folder}'s: the export "
                              "would replace it. Choose a new or empty export_dir, or move the file away.")


@contextlib.contextmanager
def run_lock(output_dir: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``output_dir`` while this run trains: a second run into the same folder stops at
    once, naming the folder, instead of both writing and one result being lost."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE_NAME
    handle = open(path, "a+")  # noqa: SIM115 - held open for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise AttTokError(
                f"output_dir {folder}: another training run ({holder}) is writing into it now; wait for it to "
                "finish or choose another output_dir.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
    finally:
        handle.close()


def _vocab_differences(old: AttributeVocab, new: AttributeVocab) -> list[str]:
    added = [t for t in new.tokens if t not in old.tokens]
    removed = [t for t in old.tokens if t not in new.tokens]
    found = []
    if added:
        found.append(f"tokens added: {', '.join(added)}")
    if removed:
        found.append(f"tokens removed: {', '.join(removed)}")
    if not added and not removed and old.tokens != new.tokens:
        moved = [f"{t} (was {old.tokens.index(t) + 1}, now {i + 1})" for i, t in enumerate(new.tokens)
                 if old.tokens[i] != t]
        found.append(f"token order changed: {', '.join(moved)}")
    old_keywords, new_keywords = old.as_dict(), new.as_dict()
    changed = [f"{t}: {old_keywords[t]!r} -> {new_keywords[t]!r}" for t in new.tokens
               if t in old_keywords and old_keywords[t] != new_keywords[t]]
    if changed:
        found.append(f"keywords changed: {'; '.join(changed)}")
    return found


LORA_SHAPE = ("r", "lora_alpha", "target_modules", "use_dora")  # what makes a LoRA checkpoint's tensors fit a model


def lora_shape(config: object) -> dict:
    """The parts of a PEFT LoRA config (an object or adapter_config.json's dict) that decide its tensors' shapes."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    shape = {key: get(key) for key in LORA_SHAPE}
    if isinstance(shape["target_modules"], (list, set, tuple)):
        shape["target_modules"] = sorted(shape["target_modules"])
    return shape


def refuse_changed_resume(checkpoint: str | os.PathLike, vocab: AttributeVocab, token_ids: list[int],
                          args: dict, finetuning_type: str | None = None, lora: dict | None = None,
                          model_type: str | None = None, base_weights: str | None = None,
                          prompt: dict | None = None) -> None:
    """Resuming is continuing: the checkpoint's vocabulary (tokens, order, keywords), token ids and ACC / ACM
    switches must equal this run's, else saved rows, books and optimizer state would mean other attributes; and its
    fine-tuning type and LoRA shape (``lora``: :func:`lora_shape` of this run's adapter) must equal this run's, else
    its weights do not fit the model (a raw index or size-mismatch error deep in transformers / PEFT). The base
    model must hold the weights the run was trained on (``base_weights``: :func:`~.base_model.weights_fingerprint`;
    the same architecture with other weights would continue the LoRA deltas, rows and books on another model). The
    prompt format (``prompt``: template, default_system, enable_thinking) must be the one the steps so far were
    trained with, which the run's saved config then records for evaluation."""
    folder = Path(checkpoint)
    if not any((folder / name).is_file() for name in ATTOK_FILES):
        raise AttTokError(
            f"{folder}: this checkpoint was trained without AttTok (no {CONFIG_FILE_NAME}); resuming it with "
            "`attok: true` would start AttTok's parameters from nothing in the middle of a run. Resume it without "
            "the attok keys, or start a new AttTok run in another output_dir.")
    saved = find_saved([folder])
    assert saved is not None  # find_saved raises for an incomplete folder, and the folder has AttTok files
    differences = _vocab_differences(saved.vocab, vocab)
    if not differences and saved.token_ids != list(token_ids):
        differences.append(f"token ids {saved.token_ids} -> {list(token_ids)}")
    for key in _COMPONENT_SWITCHES:
        before, now = saved.config["args"].get(key, True), args.get(key, True)
        if before != now:
            differences.append(f"{key}: {before} -> {now}")
    saved_model = saved.config.get("model_type")
    if model_type is not None and saved_model is not None and saved_model != model_type:
        differences.append(f"base model type {saved_model} -> {model_type} (another base model)")
    for key, now in (prompt or {}).items():
        if key in saved.config and saved.config[key] != now:
            differences.append(f"{key}: {saved.config[key]!r} -> {now!r} (the prompts the steps so far were trained "
                               "with)")
    saved_base = saved.config.get("base_weights")
    if saved_base and base_weights and saved_base != base_weights:
        differences.append(f"base model weights {saved_base} -> {base_weights} (model_name_or_path holds other "
                           "weights than the run was trained on)")
    elif saved_base and not base_weights:
        logger.warning("AttTok: the base model's weights could not be read to check that %s was trained on them (no "
                       "local weight files for model_name_or_path); resuming without that check", folder)
    saved_type = saved.config.get("finetuning_type")
    if finetuning_type is not None and saved_type is not None and saved_type != finetuning_type:
        differences.append(f"finetuning_type: {saved_type} -> {finetuning_type}")
    adapter_config = folder / "adapter_config.json"
    if lora is not None and adapter_config.is_file():
        try:
            before_shape = lora_shape(json.loads(adapter_config.read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            raise AttTokError(f"{adapter_config}: unreadable ({type(err).__name__}); resume an intact checkpoint") \
                from err
        differences += [f"LoRA {key}: {before_shape[key]} -> {lora[key]}" for key in LORA_SHAPE
                        if before_shape[key] != lora[key]]
    if differences:
        raise AttTokError(
            f"{folder}: resuming needs the checkpoint's setup ({VOCAB_FILE_NAME}, {CONFIG_FILE_NAME}, the adapter's "
            f"shape) unchanged, but {'; '.join(differences)}. Restore the run's vocabulary and settings, or start a "
            "new run in another output_dir.")
