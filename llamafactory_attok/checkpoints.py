"""Which checkpoints of an AttTok run are complete, so that a save killed by a cluster never blocks the rerun.

transformers writes a checkpoint in one order (5.5 to 5.8 alike): the weights (``save_model``, where AttTok adds its
own files), optimizer and scheduler, scaler, RNG state, then ``trainer_state.json`` — last, before older checkpoints
are rotated away. A checkpoint therefore counts as complete when ``trainer_state.json`` is there and reads as JSON
for its own step, and AttTok's files and the weights are there too. A SIGTERM / SIGKILL, ``ulimit -f`` or a full disk
during the save leaves a folder without them: auto-resume then takes the last complete checkpoint and says which
incomplete one it skipped; an explicit ``resume_from_checkpoint`` of an incomplete one is refused, naming what is
missing.

"There" means readable, not only present: every weight file's header is checked (a safetensors header that parses
and whose tensors fit in the file; a torch ``.bin`` / ``.pt`` zip whose central directory reads), so a file cut by a
full disk, or left empty, makes the checkpoint incomplete instead of failing deep in PEFT or torch. A checkpoint is
also only *resumable* with its optimizer and scheduler (``optimizer.pt`` and ``scheduler.pt``, or DeepSpeed's
``global_step<N>`` folder): a final output folder or a ``save_only_model`` checkpoint resumed would restart both,
warm-up included, in the middle of a run — refused, naming what to do instead (:data:`NOT_RESUMABLE`).

:func:`remove_stale_temp_files` removes the hidden temp files (``.attok_state.safetensors.XXXX``) a SIGKILL during an
atomic write leaves behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zipfile
from pathlib import Path

from .filenames import ATTOK_FILES, CONFIG_FILE_NAME, VOCAB_FILE_NAME

TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin",
                "model.safetensors.index.json", "pytorch_model.bin.index.json")
_STEP = re.compile(r"^checkpoint-(\d+)$")
OPTIMIZER, SCHEDULER = "optimizer.pt", "scheduler.pt"
NOT_RESUMABLE = "not resumable"  # the prefix of the problems that only concern the optimizer / scheduler
_STALE_TEMP = re.compile(r"^\.attok_[a-z_]+\.(safetensors|json|yaml)\.[A-Za-z0-9_]{6,}$")


def file_problem(path: Path) -> str | None:
    """Why the weight / optimizer file ``path`` cannot be read (None: its header reads), without loading it."""
    try:
        size = path.stat().st_size
        if size == 0:
            return f"{path.name} is empty"
        if path.suffix == ".safetensors":
            with open(path, "rb") as handle:
                head = handle.read(8)
                if len(head) < 8:
                    return f"{path.name} is cut short"
                (length,) = struct.unpack("<Q", head)
                if length > size - 8:
                    return f"{path.name} is cut short (header of {length} bytes in a file of {size})"
                header = json.loads(handle.read(length))
            ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
            if ends and max(ends) > size - 8 - length:
                return f"{path.name} is cut short (its tensors need {max(ends) + 8 + length} bytes, it has {size})"
        elif path.suffix in (".bin", ".pt", ".pth"):
            with zipfile.ZipFile(path) as archive:
                archive.namelist()
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile, struct.error) as err:
        return f"{path.name} unreadable ({type(err).__name__})"
    return None


def checkpoint_problems(folder: str | os.PathLike) -> list[str]:
    """What makes ``folder`` an incomplete checkpoint ([] when complete): missing or unreadable files, named."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    problems = [f"{name} missing" for name in ATTOK_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        problems.append(f"model weights missing (none of {', '.join(WEIGHT_FILES[:3])}, …)")
    weights = [folder / n for n in WEIGHT_FILES if not n.endswith(".index.json") and (folder / n).is_file()]
    index = next((folder / n for n in WEIGHT_FILES if n.endswith(".index.json") and (folder / n).is_file()), None)
    if index is not None:
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            problems.append(f"{index.name} unreadable")
        else:
            problems += [f"weight shard {s} missing" for s in sorted(shards) if not (folder / s).is_file()]
            weights += [folder / s for s in sorted(shards) if (folder / s).is_file()]
    attok_state = [folder / n for n in ATTOK_FILES if n.endswith(".safetensors") and (folder / n).is_file()]
    problems += [p for p in map(file_problem, [*weights, *attok_state]) if p is not None]
    problems += _text_problems(folder)
    problems += _resume_problems(folder)
    state = folder / TRAINER_STATE
    if not state.is_file():
        problems.append(f"{TRAINER_STATE} missing (transformers writes it last: the save did not finish)")
    else:
        try:
            saved_state = json.loads(state.read_text(encoding="utf-8"))
            step = saved_state["global_step"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            problems.append(f"{TRAINER_STATE} unreadable ({type(err).__name__}): the save did not finish")
        else:
            problems += _state_problems(saved_state, folder)
            match = _STEP.match(folder.name)
            if not isinstance(step, int) or isinstance(step, bool):
                problems.append(f"{TRAINER_STATE}: global_step is {step!r}, not a step number")
            elif match and int(match.group(1)) != step:
                problems.append(f"{TRAINER_STATE} is for step {step}, not {match.group(1)}")
    return problems


def _text_problems(folder: Path) -> list[str]:
    """Every JSON file of the checkpoint (AttTok's config, PEFT's ``adapter_config.json``, the model and tokenizer
    configs) must parse — AttTok's config with its ``token_ids`` and ``args``, PEFT's with its ``peft_type`` — and the
    vocabulary must load and be the one the config was saved with: an empty, cut or garbled file (a full disk, a
    crash before the page cache reached the disk) would otherwise stop every rerun. ``trainer_state.json`` has its
    own check."""
    from .errors import AttTokError
    from .state import read_config
    from .vocab import load_vocab

    problems = []
    for path in sorted(folder.glob("*.json")):
        if path.name == TRAINER_STATE or not path.is_file():
            continue
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            problems.append(f"{path.name} unreadable ({'empty' if _is_empty(path) else type(err).__name__})")
            continue
        if path.name == "adapter_config.json" and not (isinstance(value, dict) and "peft_type" in value):
            problems.append(f"{path.name} unreadable (not a PEFT adapter config: no peft_type)")
    config = None
    if (folder / CONFIG_FILE_NAME).is_file() and not any(p.startswith(CONFIG_FILE_NAME) for p in problems):
        try:
            config = read_config(folder / CONFIG_FILE_NAME)
        except AttTokError:
            problems.append(f"{CONFIG_FILE_NAME} unreadable (not an AttTok config: needs token_ids and args)")
    vocab = folder / VOCAB_FILE_NAME
    if vocab.is_file():
        try:
            tokens = len(load_vocab(vocab))
        except AttTokError as err:
            problems.append(f"{VOCAB_FILE_NAME} unreadable ({str(err).removeprefix(f'{vocab}: ')})")
        else:
            problems += _vocab_matches_config(vocab, tokens, config)
    return problems


def _vocab_matches_config(vocab: Path, tokens: int, config: dict | None) -> list[str]:
    """The vocabulary the config was saved with: its SHA-256 (recorded since the config holds it) and its number of
    tokens — a vocabulary cut at a line break still parses, with fewer tokens or a shortened keyword."""
    if config is None:
        return []
    recorded = config.get("vocab_sha256")
    if isinstance(recorded, str) and hashlib.sha256(vocab.read_bytes()).hexdigest() != recorded:
        return [f"{VOCAB_FILE_NAME} is not the one {CONFIG_FILE_NAME} was saved with (cut or changed since)"]
    if tokens != len(config["token_ids"]):
        return [f"{VOCAB_FILE_NAME} holds {tokens} token(s), {CONFIG_FILE_NAME} lists {len(config['token_ids'])} "
                "(cut or changed since)"]
    return []


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _state_problems(saved_state: dict, folder: Path) -> list[str]:
    """``trainer_state.json`` must load into this transformers' ``TrainerState`` (a field it does not know — a save
    of another version — fails deep in transformers' resume), and AttTok's config must be of the same step (a
    partial copy can mix AttTok files of one checkpoint into another)."""
    import dataclasses

    from transformers import TrainerState

    problems = []
    unknown = sorted(set(saved_state) - {f.name for f in dataclasses.fields(TrainerState)})
    if unknown:
        problems.append(f"{TRAINER_STATE} has fields this transformers does not know ({', '.join(unknown)}): saved "
                        "by another version")
    try:
        attok_step = json.loads((folder / "attok_config.json").read_text(encoding="utf-8")).get("global_step")
    except (OSError, ValueError, AttributeError):
        attok_step = None  # missing or unreadable: named by the checks of AttTok's files
    if attok_step is not None and attok_step != saved_state.get("global_step"):
        problems.append(f"attok_config.json is for step {attok_step}, not {saved_state.get('global_step')} (AttTok "
                        "files of another checkpoint)")
    return problems


def _resume_problems(folder: Path) -> list[str]:
    """What keeps ``folder`` from continuing its run exactly: the optimizer and the scheduler (DeepSpeed keeps the
    optimizer in ``global_step<N>/``)."""
    deepspeed = (folder / "latest").is_file() or any(folder.glob("global_step*"))
    problems = []
    if not deepspeed:
        for name in (OPTIMIZER, SCHEDULER):
            if not (folder / name).is_file():
                problems.append(f"{NOT_RESUMABLE}: {name} missing")
    # every torch file of the save (optimizer, scheduler, scaler, each rank's RNG state) must read: one cut by a full
    # disk or left empty would fail deep in transformers' resume (``_load_rng_state``) instead of being skipped
    for path in sorted([*folder.glob("*.pt"), *folder.glob("*.pth")]):
        if (why := file_problem(path)) is not None:
            problems.append(why)
    return problems


def only_not_resumable(problems: list[str]) -> bool:
    """The checkpoint holds complete weights and state, but no optimizer / scheduler (``save_only_model``, or a
    final output folder)."""
    return bool(problems) and all(p.startswith(NOT_RESUMABLE) for p in problems)


def remove_stale_temp_files(output_dir: str | os.PathLike) -> list[Path]:
    """The hidden temp files of AttTok's atomic writes (``.attok_state.safetensors.XXXXXXXX``) that a SIGKILL left in
    ``output_dir`` and its checkpoints; call only while holding the run's lock (no other run writes there)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    removed = []
    for place in (folder, *checkpoints_newest_first(folder)):
        for path in place.iterdir():
            if _STALE_TEMP.match(path.name) and path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(path)
    return removed


def checkpoints_newest_first(output_dir: str | os.PathLike) -> list[Path]:
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def last_complete_checkpoint(output_dir: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, list[str]]]]:
    """(the newest complete checkpoint of ``output_dir`` or None, the newer incomplete ones skipped with why)."""
    skipped: list[tuple[Path, list[str]]] = []
    for checkpoint in checkpoints_newest_first(output_dir):
        problems = checkpoint_problems(checkpoint)
        if not problems:
            return checkpoint, skipped
        skipped.append((checkpoint, problems))
    return None, skipped
