"""Which base weights a run was trained on: a fingerprint saved with every AttTok checkpoint, so that resuming (or
loading an adapter) on other base weights of the same architecture is caught instead of continuing silently.

The fingerprint reads a few hundred KiB whatever the model's size: in a safetensors file, **every tensor** is sampled
at its start, middle and end (256 bytes each, with its name, dtype and shape), so another seed, a full fine-tune
and a fine-tune of a few layers or projections all change it (a fine-tune moves nearly every element of a tensor
it trains); a ``.bin`` file is sampled in 16 windows of 4 KiB. The same weights moved to another folder, or loaded
by hub id from the local cache, give the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
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


SAMPLE = 256  # bytes read at each of a tensor's start, middle and end


def _safetensors_samples(handle, digest) -> None:
    """Every tensor of an open safetensors file, by name: dtype, shape and its bytes at start, middle and end."""
    (length,) = struct.unpack("<Q", handle.read(8))
    header = json.loads(handle.read(length))
    start = 8 + length
    for name in sorted(k for k in header if k != "__metadata__"):
        info = header[name]
        begin, end = info["data_offsets"]
        digest.update(f"{name}\0{info['dtype']}\0{info['shape']}\0".encode())
        for offset in (begin, (begin + end) // 2, max(begin, end - SAMPLE)):
            handle.seek(start + offset)
            digest.update(handle.read(min(SAMPLE, end - offset)))


def _spread_samples(handle, size: int, digest) -> None:
    """16 windows of 4 KiB spread evenly over a file whose tensors cannot be located (a torch ``.bin``)."""
    span = max(0, size - WINDOW)
    for i in range(WINDOWS):
        handle.seek(span * i // (WINDOWS - 1))
        digest.update(handle.read(WINDOW))


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
            if path.suffix == ".safetensors":
                _safetensors_samples(handle, digest)
            else:
                _spread_samples(handle, size, digest)
    return digest.hexdigest()[:32]
