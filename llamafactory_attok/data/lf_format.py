"""Writing LLaMA-Factory datasets: sharegpt rows, atomic JSON, merging ``dataset_info.json`` entries."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import AttTokError
from ..state import atomic_write_bytes

SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}


def slug(text: str) -> str:
    """Lowercase letters/digits joined by single underscores (the concept part of ``<|modality_concept|>``)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def attribute_token(concept: str, modality: str | None) -> str:
    return f"<|{slug(modality)}_{slug(concept)}|>" if modality else f"<|{slug(concept)}|>"


def sharegpt_row(question: str, answer: str, images: list[str], **extra) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "images": images, **extra}


def dataset_entry(file_name: str) -> dict:
    return {"file_name": file_name, "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"}, "tags": dict(SHAREGPT_TAGS)}


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Temp file in the same folder, then rename: an interrupted run never leaves half a file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data) -> None:
    write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def check_free_names(out_dir: str | os.PathLike, names: list[str], overwrite: bool) -> None:
    """Refuse, before anything is written, to reuse dataset names already in ``dataset_info.json``."""
    path = Path(out_dir) / "dataset_info.json"
    existing = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    clashes = sorted(set(existing) & set(names))
    if clashes and not overwrite:
        raise AttTokError(f"{path}: datasets {', '.join(clashes)} already exist; pass --overwrite to replace them.")


def merge_dataset_info(out_dir: str | os.PathLike, entries: dict[str, dict], overwrite: bool = False) -> Path:
    """Add ``entries`` to ``out_dir/dataset_info.json``, keeping existing ones; a name collision is an error."""
    check_free_names(out_dir, list(entries), overwrite)
    path = Path(out_dir) / "dataset_info.json"
    info = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    info.update(entries)
    write_atomic(path, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return path


def write_vocab(path: str | os.PathLike, mapping: dict[str, str], source_note: str) -> None:
    import yaml

    write_atomic(path, f"# {source_note}\n" + yaml.safe_dump(mapping, allow_unicode=True, sort_keys=False, width=1000))
