"""Resuming an interrupted image build: a second run of the same command reuses the images already finished.

A build stages its images in ``.<prefix>.building.<key>`` inside ``--out``, where ``key`` is a digest of everything
that decides the images' bytes: the builder's version, the options (image size, max size, seed, balancing) and every
source (path, size and modification time of a file; the pixels of an array image), with its label and split. The
number of workers is not part of it (the bytes do not depend on it).

Every finished image is appended to the folder's journal (one JSON line, flushed) *after* its file was written
atomically, with its length and BLAKE2b digest. On SIGINT / SIGTERM the staging folder is kept and named; the next
run of the same command (same key) reuses each journaled image whose file is still there with that length and
digest — checked, not trusted — and writes the rest. Any other build of the folder removes a staging folder that
is not its own (:func:`~..safe_paths.remove_stale_staging`), and a build that fails for any other reason removes
its own: nothing of an abandoned build stays behind for long.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from .. import __version__
from ..safe_paths import STAGING_MARKER

JOURNAL = ".attok-journal.jsonl"
KEY_FILE = ".attok-build-key"


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b()
    with open(path, "rb") as handle:  # hashlib.file_digest is Python 3.11+; the package supports 3.10
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_identity(image: Image.Image | Path) -> list:
    if isinstance(image, Image.Image):
        return ["pixels", image.mode, list(image.size), hashlib.blake2b(image.tobytes()).hexdigest()]
    stat = Path(image).stat()
    return ["file", str(Path(image).resolve()), stat.st_size, stat.st_mtime_ns]


def build_key(builder: str, options: dict[str, Any], sources: Iterable[tuple[Any, str, str | None]]) -> str:
    """The digest of what decides a build's image bytes: ``sources`` is (image, label, split) per item."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(json.dumps([builder, __version__, options], sort_keys=True, default=str).encode())
    for image, label, split in sources:
        digest.update(json.dumps([_source_identity(image), label, split]).encode())
    return digest.hexdigest()


def staging_name(prefix: str, key: str) -> str:
    return f".{prefix}.building.{key}"


class Journal:
    """The finished images of one staging folder, read back checked; new ones appended as they finish."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.entries: dict[str, dict] = {}  # what an earlier run finished (new images are not kept: memory flat in N)
        self.rejected = 0
        self.finished = 0
        path = staging / JOURNAL
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # the line being written when the build was killed
                    continue
                if self._still_valid(entry):
                    self.entries[entry["id"]] = entry
                else:
                    self.rejected += 1
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def _still_valid(self, entry: dict) -> bool:
        try:
            file = self.staging / entry["path"]
            return file.is_file() and file.stat().st_size == entry["bytes"] and file_digest(file) == entry["digest"]
        except (KeyError, TypeError, OSError):
            return False

    def get(self, ident: str) -> dict | None:
        return self.entries.get(ident)

    def record(self, ident: str, path: str, **info: Any) -> dict:
        """Journal one finished image (its file is already in place): ``path`` relative to the staging folder;
        returns its entry."""
        file = self.staging / path
        entry = {"id": ident, "path": path, "bytes": file.stat().st_size, "digest": file_digest(file), **info}
        self._handle.write(json.dumps(entry) + "\n")
        self._handle.flush()
        self.finished += 1
        return entry

    def close(self) -> None:
        self._handle.close()


def open_staging(out: Path, prefix: str, key: str) -> tuple[Path, Journal]:
    """The staging folder of this build: the one an interrupted run of the same command left (its finished images
    reused, as the journal vouches for them), else a new one."""
    staging = out / staging_name(prefix, key)
    resumed = staging.is_dir() and (staging / STAGING_MARKER).is_file() and \
        (staging / KEY_FILE).is_file() and (staging / KEY_FILE).read_text().strip() == key
    if not resumed:
        staging.mkdir()
        (staging / STAGING_MARKER).touch()
        (staging / KEY_FILE).write_text(key + "\n")
    journal = Journal(staging)
    if resumed:
        note = f"; {journal.rejected} changed or incomplete one(s) written again" if journal.rejected else ""
        print(f"attok: resuming an interrupted build of the same command: {len(journal.entries)} finished image(s) "
              f"reused from {staging.name}{note}", file=sys.stderr)
    return staging, journal


def interrupted_note(journal: Journal) -> str:
    return (f"attok: interrupted; {len(journal.entries) + journal.finished} finished image(s) kept in "
            f"{journal.staging} — run the same "
            "command again to resume from them (any other build of this folder removes them)")
