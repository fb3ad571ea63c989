"""PathVQA question sources: the official release layout and the Hugging Face parquet export.

Release: ``qas/{split}/{split}_qa.pkl`` (a list of ``{image, question, answer}`` records; loaded with the
restricted unpickler of :mod:`.safe_pickle`, since a pickle is untrusted input) and ``images/{split}/{image}.jpg``.
Parquet: ``*.parquet`` files anywhere under the folder, the split taken from the file name (``train-…``,
``validation-…`` / ``val-…``, ``test-…``), with the columns ``image`` (bytes, or the ``{bytes, path}`` struct
`datasets` writes), ``question`` and ``answer``; identical images are stored once, named by content hash.

Both yield :class:`QA` records; an image the release lacks has ``image=None`` (the builder skips and reports it).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import AttTokError
from ..state import atomic_write_bytes
from .safe_pickle import load_plain_pickle
from .vqa_build import VQA_SPLITS, relative_member

FIELDS = ("image", "question", "answer")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_OF_PREFIX = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}


@dataclass
class QA:
    split: str
    qid: str
    question: str
    answer: str
    image: Path | None  # the source file, None when the release lacks it
    image_name: str  # path under the build's images folder
    where: str  # file and record, for messages


def release_file(source: Path, split: str) -> Path:
    return source / "qas" / split / f"{split}_qa.pkl"


def _records(path: Path) -> list[dict]:
    """The plain records of one ``*_qa.pkl``; anything but a list of ``{image, question, answer}`` strings is
    refused with the reason."""
    records = load_plain_pickle(path)
    if not isinstance(records, (list, tuple)):
        raise AttTokError(f"{path}: refused: it holds a {type(records).__name__}, expected a list of "
                          "{image, question, answer} records")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise AttTokError(f"{path}: record {index}: refused: a {type(record).__name__}, expected a dict with "
                              "the strings image, question, answer")
        bad = [k for k in FIELDS if not isinstance(record.get(k), str) or not record[k].strip()]
        if bad:
            found = {k: type(v).__name__ for k, v in record.items()}
            raise AttTokError(f"{path}: record {index}: refused: {', '.join(bad)} must be non-empty strings "
                              f"(record fields: {found})")
    return list(records)


def _release_image(source: Path, split: str, name: str, where: str) -> Path | None:
    member = relative_member(name, where)
    if len(member.parts) != 1:
        raise AttTokError(f"{where}: image {name!r} should be a file name like 'train_0001'")
    for suffix in ("", *IMAGE_SUFFIXES):
        candidate = source / "images" / split / f"{member}{suffix}"
        if candidate.is_file() and (suffix or candidate.suffix.lower() in IMAGE_SUFFIXES):
            return candidate
    return None


def from_release(source: Path) -> Iterator[QA]:
    """Records of ``qas/{split}/{split}_qa.pkl`` in order, split by split."""
    missing = [str(release_file(source, s)) for s in VQA_SPLITS if not release_file(source, s).is_file()]
    if missing:
        raise AttTokError(f"{source}: missing {', '.join(missing)} (the official PathVQA layout)")
    for split in VQA_SPLITS:
        path = release_file(source, split)
        for index, record in enumerate(_records(path)):
            where = f"{path}: record {index}"
            image = _release_image(source, split, record["image"], where)
            name = image.name if image else f"{record['image'].strip()}.jpg"
            yield QA(split, f"{split}_{index}", record["question"].strip(), record["answer"].strip(), image,
                     f"{split}/{name}", where)


def parquet_files(source: Path) -> dict[str, list[Path]]:
    """Split -> its parquet files (sorted); a file whose name names no split is an error."""
    files: dict[str, list[Path]] = {split: [] for split in VQA_SPLITS}
    for path in sorted(source.rglob("*.parquet")):
        prefix = re.split(r"[-_.]", path.name, maxsplit=1)[0].lower()
        if prefix not in SPLIT_OF_PREFIX:
            raise AttTokError(f"{path}: cannot tell the split from the file name (expected train-*, validation-* "
                              "or val-*, test-*)")
        files[SPLIT_OF_PREFIX[prefix]].append(path)
    empty = [s for s, found in files.items() if not found]
    if empty:
        raise AttTokError(f"{source}: no parquet file for split(s) {', '.join(empty)}")
    return files


def _image_bytes(value: object, where: str) -> bytes:
    if isinstance(value, dict):  # `datasets` Image feature: {"bytes": ..., "path": ...}
        if not value.get("bytes"):
            raise AttTokError(f"{where}: the image has no embedded bytes (path {value.get('path')!r} only)")
        value = value["bytes"]
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise AttTokError(f"{where}: column image holds {type(value).__name__}, expected image bytes")
    return bytes(value)


def _stage_image(data: bytes, staging: Path, staged: dict[str, str], where: str) -> str:
    """Write ``data`` once under ``staging`` as ``<sha256[:20]>.<format>``; return that file name."""
    from PIL import Image, UnidentifiedImageError

    digest = hashlib.sha256(data).hexdigest()[:20]
    if digest not in staged:
        try:
            with Image.open(io.BytesIO(data)) as image:
                kind = (image.format or "").lower()
        except (UnidentifiedImageError, OSError) as err:
            raise AttTokError(f"{where}: column image is not a readable image ({err})") from err
        staged[digest] = f"{digest}.{'jpg' if kind == 'jpeg' else kind}"
        atomic_write_bytes(staging / staged[digest], data)
    return staged[digest]


def _columns(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        names = table.schema_arrow.names
    except (pa.ArrowException, OSError) as err:
        raise AttTokError(f"{path}: not a readable parquet file ({err})") from err
    missing = [c for c in FIELDS if c not in names]
    if missing:
        raise AttTokError(f"{path}: expected the columns image, question, answer; missing {', '.join(missing)} "
                          f"(columns found: {', '.join(names)})")
    return table


def from_parquet(source: Path, staging: Path) -> Iterator[QA]:
    """Rows of the parquet export, split by split; images are written once into ``staging``."""
    staged: dict[str, str] = {}
    for split, paths in parquet_files(source).items():
        number = 0
        for path in paths:
            row = 0
            for batch in _columns(path).iter_batches(batch_size=64, columns=list(FIELDS)):
                for image, question, answer in zip(*(batch.column(c).to_pylist() for c in FIELDS), strict=True):
                    where = f"{path}: row {row}"
                    row += 1
                    bad = [n for n, v in (("question", question), ("answer", answer)) if not isinstance(v, str)]
                    if bad:
                        raise AttTokError(f"{where}: {', '.join(bad)} must be text")
                    name = _stage_image(_image_bytes(image, where), staging, staged, where)
                    yield QA(split, f"{split}_{number}", question.strip(), answer.strip(), staging / name, name,
                             where)
                    number += 1
