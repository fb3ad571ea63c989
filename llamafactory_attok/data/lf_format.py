"""Writing LLaMA-Factory datasets: sharegpt rows, atomic JSON / PNG, merging ``dataset_info.json`` entries.

Every file the plugin writes goes through :func:`~llamafactory_attok.state.atomic_write_bytes` (temp file, fsync,
``0o666 & ~umask``, rename); readers here turn bad JSON into an :class:`AttTokError` naming the file and line.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import AttTokError
from ..json_stream import iter_json
from ..state import atomic_write_bytes, atomic_write_chunks
from ..vocab import read_text

SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}


def slug(text: str) -> str:
    """Lowercase letters/digits joined by single underscores (the concept part of ``<|modality_concept|>``)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _ascii_slug(text: str, what: str) -> str:
    """``slug(text)``, refused when it would drop letters (non-ASCII letters, look-alikes: ``сat`` with a Cyrillic
    с would silently become ``at``): a token name must say what the text says."""
    import unicodedata

    letters = [ch for ch in unicodedata.normalize("NFKC", text) if unicodedata.category(ch).startswith(("L", "N"))]
    if any(not ch.isascii() for ch in letters):
        raise AttTokError(f"{what} {text!r} has letters outside ASCII a-z / 0-9, which a token name "
                          "(<|modality_concept|>) cannot hold: give an ASCII `concept` for it in a --class-map "
                          "(the answer text `name` and `keyword` may stay as they are)")
    return slug(unicodedata.normalize("NFKC", text))


def attribute_token(concept: str, modality: str | None) -> str:
    """``<|modality_concept|>``; the modality part is one word (``X-Ray`` → ``xray``), since the vocabulary reads
    the modality as what precedes the first underscore. Text whose letters a token name cannot hold is refused."""
    concept_part = _ascii_slug(concept, "the concept")
    if not modality:
        return f"<|{concept_part}|>"
    return f"<|{_ascii_slug(modality, 'the modality').replace('_', '')}_{concept_part}|>"


def sharegpt_row(question: str, answer: str, images: list[str], **extra) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "images": images, **extra}


def dataset_entry(file_name: str) -> dict:
    return {"file_name": file_name, "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"}, "tags": dict(SHAREGPT_TAGS)}


def read_json(path: str | os.PathLike):
    """Parse a JSON file; invalid JSON is an :class:`AttTokError` naming the file, line and column."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise AttTokError(f"{path}: line {err.lineno}, column {err.colno}: invalid JSON: {err.msg}") from err


def iter_json_array(path: str | os.PathLike) -> Iterator:
    """The elements of the JSON array in ``path``, parsed one at a time (the file's text is read whole, its rows are
    never all parsed at once: a dataset of N rows costs its text, not N row objects); bad JSON or a value that is not
    an array names the file, line and column."""
    text = read_text(path)
    decoder = json.JSONDecoder()
    index = _skip_space(text, 0)
    try:
        if not text.startswith("[", index):
            raise json.JSONDecodeError("expected a JSON array of rows", text, index)
        index = _skip_space(text, index + 1)
        if text.startswith("]", index):
            return
        while True:
            row, index = decoder.raw_decode(text, index)
            yield row
            index = _skip_space(text, index)
            if text.startswith("]", index):
                break
            if not text.startswith(",", index):
                raise json.JSONDecodeError("expected ',' or ']'", text, index)
            index = _skip_space(text, index + 1)
        if _skip_space(text, index + 1) != len(text):
            raise json.JSONDecodeError("extra data after the array", text, _skip_space(text, index + 1))
    except json.JSONDecodeError as err:
        raise AttTokError(f"{path}: line {err.lineno}, column {err.colno}: invalid JSON: {err.msg}") from err


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\n\r":
        index += 1
    return index


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, object]]:
    """``(line number, value)`` for every non-blank line of a JSONL file; a bad line names file and line."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise AttTokError(f"{path}: line {number}: invalid JSON: {err.msg} (column {err.colno})") from err
    return rows


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Temp file in the same folder, then rename: an interrupted run never leaves half a file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data) -> None:
    """``json.dumps(data, indent=1)`` atomically; a :class:`~..json_stream.Lazy` list in ``data`` is made and written
    one element at a time (a dataset of N rows is never in memory as a whole)."""
    pieces = itertools.chain(iter_json(data), ["\n"])
    atomic_write_chunks(path, (piece.encode("utf-8") for piece in pieces))


def write_png(path: str | os.PathLike, image) -> None:
    """Encode a PIL image as PNG in memory, then write it atomically."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def _dataset_info(out_dir: str | os.PathLike) -> tuple[Path, dict]:
    path = Path(out_dir) / "dataset_info.json"
    info = read_json(path) if path.exists() else {}
    if not isinstance(info, dict):
        raise AttTokError(f"{path}: expected a JSON object of dataset entries, got {type(info).__name__}")
    return path, info


def check_free_names(out_dir: str | os.PathLike, names: Iterable[str], overwrite: bool,
                     paths: Iterable[str] = ()) -> None:
    """Refuse, before anything is written, to reuse dataset names of ``dataset_info.json`` or existing ``paths``."""
    if overwrite:
        return
    path, info = _dataset_info(out_dir)
    datasets = sorted(set(info) & set(names))
    files = sorted(p for p in paths if os.path.lexists(Path(out_dir) / p))
    clashes = ([f"datasets {', '.join(datasets)}"] if datasets else []) + ([f"files {', '.join(files)}"] if files
                                                                            else [])
    if clashes:
        raise AttTokError(f"{path if datasets else out_dir}: {' and '.join(clashes)} already exist; pass --overwrite "
                          "to replace them.")


def dataset_info_names(out_dir: str | os.PathLike) -> list[str]:
    """The dataset names of ``out_dir/dataset_info.json`` (none when it does not exist)."""
    return list(_dataset_info(out_dir)[1])


def merge_dataset_info(out_dir: str | os.PathLike, entries: dict[str, dict], overwrite: bool = False,
                       remove: Iterable[str] = ()) -> Path:
    """Add ``entries`` to ``out_dir/dataset_info.json`` (dropping ``remove``), keeping others; a clash is an error."""
    check_free_names(out_dir, list(entries), overwrite)
    path, info = _dataset_info(out_dir)
    for name in remove:
        info.pop(name, None)
    info.update(entries)
    write_atomic(path, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return path


def write_vocab(path: str | os.PathLike, mapping: dict[str, str], source_note: str) -> None:
    import yaml

    write_atomic(path, f"# {source_note}\n" + yaml.safe_dump(mapping, allow_unicode=True, sort_keys=False, width=1000))
