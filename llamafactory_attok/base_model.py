"""Which base weights a run was trained on: a fingerprint saved with every AttTok checkpoint, so that resuming (or
loading an adapter) on other base weights of the same architecture is caught instead of continuing silently.

The fingerprint reads no more than a few hundred KiB whatever the model's size: for every weight file (sorted by
name), its name and size and 16 windows of 4 KiB spread evenly over its tensor data. Two models of one
architecture with other weights (another seed, another fine-tune) differ in it; the same weights moved to another
folder, or loaded by hub id from the local cache, do not.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

WINDOWS, WINDOW = 16, 4096


def local_model_folder(model_name_or_path: str) -> Path | None:
    """The local folder of ``model_name_or_path``: itself, or the cached snapshot of a hub id (no download); None
    when neither is there (the caller says that the base could not be identified)."""
    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

        return Path(snapshot_download(model_name_or_path, local_files_only=True))
    except (HFValidationError, LocalEntryNotFoundError, OSError, ValueError):
        return None


def _data_start(path: Path, handle) -> int:
    """Where the tensor data begins: after a safetensors file's header, else at 0."""
    if path.suffix != ".safetensors":
        return 0
    head = handle.read(8)
    return 8 + struct.unpack("<Q", head)[0] if len(head) == 8 else 0


def weights_fingerprint(model_name_or_path: str) -> str | None:
    """The base weights' fingerprint (see the module docstring); None when no local weight file is found."""
    folder = local_model_folder(model_name_or_path)
    if folder is None:
        return None
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as handle:
            start = _data_start(path, handle)
            span = max(0, size - start - WINDOW)
            for i in range(WINDOWS):
                handle.seek(start + span * i // max(1, WINDOWS - 1))
                digest.update(handle.read(WINDOW))
    return digest.hexdigest()[:32]
