"""What an AttTok run writes next to its adapter / checkpoint, and how a later run finds it again."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AttTokError
from .filenames import ATTOK_FILES, CONFIG_FILE_NAME, VOCAB_FILE_NAME
from .vocab import AttributeVocab, load_vocab

FORMAT_VERSION = 1


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter before Python 3.13)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (:func:`atomic_write_chunks`)."""
    atomic_write_chunks(path, (data,))


def atomic_write_chunks(path: str | os.PathLike, chunks: Iterable[bytes]) -> None:
    """Write the ``chunks`` to ``path`` atomically and durably, with the mode a plain ``open(path, "w")`` would give.

    A temp file in the same folder is written, fsynced, given mode ``0o666 & ~umask`` (``mkstemp`` creates 0600,
    which a colleague sharing the output folder could not read), renamed over ``path``, and the folder is fsynced:
    readers never see half a file, and a crash at any point leaves either the old or the new file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


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
    """The vocabulary, then the config — which records the vocabulary file's SHA-256, so that a checkpoint whose
    vocabulary was cut or changed after the save is told apart from a complete one (:mod:`.checkpoints`)."""
    folder = Path(folder)
    text = vocab.to_yaml().encode("utf-8")
    atomic_write_bytes(folder / VOCAB_FILE_NAME, text)
    payload = {"format_version": FORMAT_VERSION, **config, "vocab_sha256": hashlib.sha256(text).hexdigest()}
    atomic_write_bytes(folder / CONFIG_FILE_NAME, (json.dumps(payload, indent=2) + "\n").encode("utf-8"))




def find_saved_quietly(folders: Sequence[str | os.PathLike | None]) -> Path | None:
    """The last folder holding any AttTok file, without reading it (for warnings and refusals)."""
    for folder in reversed([f for f in folders if f]):
        path = Path(folder)
        if any((path / name).is_file() for name in ATTOK_FILES):
            return path
    return None


def read_config(path: Path) -> dict[str, Any]:
    """``attok_config.json``: an object with ``token_ids`` and ``args``, else an :class:`AttTokError` naming it."""
    return _read_config(path)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AttTokError(f"{path}: unreadable AttTok config ({type(err).__name__}: {err}).") from err
    if not isinstance(config, dict) or not isinstance(config.get("token_ids"), list) or "args" not in config:
        raise AttTokError(f"{path}: not an AttTok config (needs `token_ids` and `args`).")
    return config


def find_saved(folders: Sequence[str | os.PathLike | None]) -> SavedAttTok | None:
    """The last folder (adapters are applied in order) that carries an AttTok description, if any.

    A folder with some AttTok files but not all of them (config, vocabulary, state) is an error naming the
    missing file: loading it without them would give fresh ACC and books, i.e. silently wrong outputs.
    """
    path = find_saved_quietly(folders)
    if path is None:
        return None
    missing = [name for name in ATTOK_FILES if not (path / name).is_file()]
    if missing:
        raise AttTokError(
            f"{path}: AttTok files {', '.join(str(path / m) for m in missing)} missing (the folder holds "
            f"{', '.join(n for n in ATTOK_FILES if n not in missing)}); copy the whole output folder."
        )
    config = _read_config(path / CONFIG_FILE_NAME)
    return SavedAttTok(path, load_vocab(path / VOCAB_FILE_NAME), config)
