"""What an AttTok run writes next to its adapter / checkpoint, and how a later run finds it again."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .vocab import VOCAB_FILE_NAME, AttributeVocab, load_vocab

CONFIG_FILE_NAME = "attok_config.json"
FORMAT_VERSION = 1


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@dataclass
class SavedAttTok:
    """The AttTok description found in an adapter or exported-model folder."""

    folder: Path
    vocab: AttributeVocab
    config: dict[str, Any]

    @property
    def token_ids(self) -> list[int]:
        return list(self.config["token_ids"])


def save_description(folder: str | os.PathLike, vocab: AttributeVocab, config: dict[str, Any]) -> None:
    folder = Path(folder)
    atomic_write_bytes(folder / VOCAB_FILE_NAME, vocab.to_yaml().encode("utf-8"))
    payload = {"format_version": FORMAT_VERSION, **config}
    atomic_write_bytes(folder / CONFIG_FILE_NAME, (json.dumps(payload, indent=2) + "\n").encode("utf-8"))


def find_saved(folders: list[str | os.PathLike | None]) -> SavedAttTok | None:
    """The last folder (adapters are applied in order) that carries an AttTok description, if any."""
    for folder in reversed([f for f in folders if f]):
        path = Path(folder)
        if (path / CONFIG_FILE_NAME).is_file() and (path / VOCAB_FILE_NAME).is_file():
            config = json.loads((path / CONFIG_FILE_NAME).read_text(encoding="utf-8"))
            return SavedAttTok(path, load_vocab(path / VOCAB_FILE_NAME), config)
    return None
