"""`attok data vqa-rad`: the official VQA-RAD release into LF sharegpt, with the official ``phrase_type`` split
(freeform/para → train, test_freeform/test_para → test) and each QA's closed/open type kept for evaluation."""

from __future__ import annotations

from pathlib import Path

from ..errors import AttTokError
from ..state import atomic_write_bytes
from .lf_format import check_free_names, dataset_entry, merge_dataset_info, read_json, sharegpt_row, write_json

SPLIT_OF_PHRASE = {"freeform": "train", "para": "train", "test_freeform": "test", "test_para": "test"}
OFFICIAL_JSON = "VQA_RAD Dataset Public.json"
IMAGE_FOLDER = "VQA_RAD Image Folder"


def build_vqa_rad(source_dir: str | Path, out_dir: str | Path, name: str = "vqa_rad",
                  overwrite: bool = False) -> dict[str, str]:
    """Every entry is checked before anything is written; an image already in the output is reused if identical."""
    source, out = Path(source_dir), Path(out_dir)
    path = source / OFFICIAL_JSON
    if not path.is_file():
        raise AttTokError(f"{source}: the official {OFFICIAL_JSON!r} is missing")
    check_free_names(out, [f"{name}_train", f"{name}_test"], overwrite)
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    copies: dict[str, Path] = {}  # path relative to the output -> source image
    for index, qa in enumerate(read_json(path)):
        where = f"{path}: entry {index} (qid {qa.get('qid')})"
        split = SPLIT_OF_PHRASE.get(str(qa.get("phrase_type", "")).strip())
        if split is None:
            raise AttTokError(f"{where}: unknown phrase_type {qa.get('phrase_type')!r}")
        image = source / IMAGE_FOLDER / qa["image_name"]
        if not image.is_file():
            raise AttTokError(f"{where}: image {image} does not exist")
        rel = f"{name}_images/{image.name}"
        copies[rel] = image
        answer_type = str(qa["answer_type"]).strip().lower()  # two entries read "CLOSED " upstream
        rows[split].append(sharegpt_row(
            f"<image>{qa['question'].strip()}", str(qa["answer"]).strip(), [rel], qid=str(qa["qid"]),
            answer_type=answer_type, question_type=qa.get("question_type"), organ=qa.get("image_organ"),
            modality=None))
    pending = {}
    for rel, image in copies.items():
        data, target = image.read_bytes(), out / rel
        if target.exists():
            if target.read_bytes() == data:
                continue
            if not overwrite:
                raise AttTokError(f"{target}: already exists with other content than {image}; pass --overwrite "
                                  "to replace it (datasets that use it would then show the new image)")
        pending[target] = data
    for target, data in pending.items():
        atomic_write_bytes(target, data)
    written = {}
    for split, split_rows in rows.items():
        write_json(out / f"{name}_{split}.json", split_rows)
        written[f"{name}_{split}"] = f"{name}_{split}.json"
    merge_dataset_info(out, {d: dataset_entry(f) for d, f in written.items()}, overwrite=overwrite)
    return written
