"""Which checkpoints of an AttTok run are complete, so that a save killed by a cluster never blocks the rerun.

transformers writes a checkpoint in one order (5.5 to 5.8 alike): the weights (``save_model``, where AttTok adds its
own files), optimizer and scheduler, scaler, RNG state, then ``trainer_state.json`` — last, before older checkpoints
are rotated away. A checkpoint therefore counts as complete when ``trainer_state.json`` is there and reads as JSON
for its own step, and AttTok's files and the weights are there too. A SIGTERM / SIGKILL, ``ulimit -f`` or a full disk
during the save leaves a folder without them: auto-resume then takes the last complete checkpoint and says which
incomplete one it skipped; an explicit ``resume_from_checkpoint`` of an incomplete one is refused, naming what is
missing.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .filenames import ATTOK_FILES

TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin",
                "model.safetensors.index.json", "pytorch_model.bin.index.json")
_STEP = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_problems(folder: str | os.PathLike) -> list[str]:
    """What makes ``folder`` an incomplete checkpoint ([] when complete): missing or unreadable files, named."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    problems = [f"{name} missing" for name in ATTOK_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        problems.append(f"model weights missing (none of {', '.join(WEIGHT_FILES[:3])}, …)")
    index = next((folder / n for n in WEIGHT_FILES if n.endswith(".index.json") and (folder / n).is_file()), None)
    if index is not None:
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            problems.append(f"{index.name} unreadable")
        else:
            problems += [f"weight shard {s} missing" for s in sorted(shards) if not (folder / s).is_file()]
    state = folder / TRAINER_STATE
    if not state.is_file():
        problems.append(f"{TRAINER_STATE} missing (transformers writes it last: the save did not finish)")
    else:
        try:
            step = json.loads(state.read_text(encoding="utf-8"))["global_step"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            problems.append(f"{TRAINER_STATE} unreadable ({type(err).__name__}): the save did not finish")
        else:
            match = _STEP.match(folder.name)
            if match and int(match.group(1)) != step:
                problems.append(f"{TRAINER_STATE} is for step {step}, not {match.group(1)}")
    return problems


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
