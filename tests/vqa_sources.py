"""Release folders for the VQA builder tests: SLAKE question files (the real ones, copied in data/sources/slake)
with stand-in images, and small PathVQA releases in the official pickle layout and as a parquet export."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path

from conftest import REPO
from PIL import Image

SLAKE = REPO / "data" / "sources" / "slake"  # the official question files (CC BY 4.0), images not included
SLAKE_FILES = {"train": "train.json", "val": "validate.json", "test": "test.json"}
SHADE = {"CT": (90, 90, 90), "MRI": (40, 40, 60), "X-Ray": (200, 200, 200)}


def jpeg(colour=(128, 128, 128), size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def slake_entries(split: str) -> list[dict]:
    return json.loads((SLAKE / SLAKE_FILES[split]).read_text(encoding="utf-8"))


def slake_release(root: Path, entries: dict[str, list[dict]] | None = None, images: bool = True,
                  val_name: str = "validate.json", size: int = 16) -> Path:
    """A SLAKE folder with ``entries`` per split (default: the real files) and a stand-in JPEG at every
    ``imgs/<img_name>`` (shaded by modality, so images of one modality look alike)."""
    entries = entries or {split: slake_entries(split) for split in SLAKE_FILES}
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in entries.items():
        name = val_name if split == "val" else SLAKE_FILES[split]
        (root / name).write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    if images:
        shades = {}
        for rows in entries.values():
            for row in rows:
                shades.setdefault(row["img_name"], SHADE.get(row.get("modality"), (128, 128, 128)))
        cache = {shade: jpeg(shade, size) for shade in set(shades.values())}
        for name, shade in shades.items():
            path = root / "imgs" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(cache[shade])
    return root


def english_subset(split: str, count: int, per_image: int | None = None) -> list[dict]:
    """The first ``count`` English questions of ``split``, at most ``per_image`` of them per image."""
    kept, seen = [], {}
    for entry in slake_entries(split):
        if entry["q_lang"] == "en" and seen.get(entry["img_name"], 0) < (per_image or count):
            seen[entry["img_name"]] = seen.get(entry["img_name"], 0) + 1
            kept.append(entry)
    return kept[:count]


PATH_QA = {
    "train": [("train_0001", "Is this a tumor?", "yes"), ("train_0001", "What is shown?", "necrosis"),
              ("train_0002", "Is there inflammation?", "No")],
    "val": [("val_0001", "What stain is used?", "hematoxylin and eosin")],
    "test": [("test_0001", "Is this malignant?", "no"), ("test_0002", "What organ is this?", "liver")],
}


def colour_of(image_id: str) -> tuple[int, int, int]:
    """A colour per image id, far apart for different ids (distinct JPEG bytes)."""
    digest = hashlib.sha256(image_id.encode()).digest()
    return digest[0], digest[1], digest[2]


def pathvqa_release(root: Path, missing: tuple[str, ...] = ()) -> Path:
    """The official layout: ``qas/{split}/{split}_qa.pkl`` (plain dict records) and ``images/{split}/*.jpg``
    (except the images named in ``missing``)."""
    for split, rows in PATH_QA.items():
        (root / "qas" / split).mkdir(parents=True, exist_ok=True)
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        records = [{"image": i, "question": q, "answer": a} for i, q, a in rows]
        (root / "qas" / split / f"{split}_qa.pkl").write_bytes(pickle.dumps(records))
        for image in {i for i, _, _ in rows} - set(missing):
            (root / "images" / split / f"{image}.jpg").write_bytes(jpeg(colour_of(image)))
    return root


def pathvqa_parquet(root: Path, struct: bool = True, columns: tuple[str, ...] = ("image", "question", "answer"))\
        -> Path:
    """The Hugging Face export: ``data/{train,validation,test}-00000-of-00001.parquet``; ``image`` as the
    ``{bytes, path}`` struct `datasets` writes (``struct=True``) or as plain bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in PATH_QA.items():
        images = [jpeg(colour_of(i)) for i, _, _ in rows]
        image = [{"bytes": b, "path": None} for b in images] if struct else images
        known = {"image": image, "question": [q for _, q, _ in rows], "answer": [a for _, _, a in rows]}
        table = {c: known.get(c, ["x"] * len(rows)) for c in columns}  # other column names: filler text
        name = "validation" if split == "val" else split
        pq.write_table(pa.table(table), root / "data" / f"{name}-00000-of-00001.parquet")
    return root
