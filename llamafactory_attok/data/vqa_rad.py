"""`attok data vqa-rad`: the official VQA-RAD release into LF sharegpt, with the official ``phrase_type`` split
(freeform/para → train, test_freeform/test_para → test) and each QA's closed/open type kept for evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import AttTokError
from .lf_format import check_free_names, dataset_entry, merge_dataset_info, sharegpt_row, write_json

SPLIT_OF_PHRASE = {"freeform": "train", "para": "train", "test_freeform": "test", "test_para": "test"}
OFFICIAL_JSON = "VQA_RAD Dataset Public.json"
IMAGE_FOLDER = "VQA_RAD Image Folder"


def build_vqa_rad(source_dir: str | Path, out_dir: str | Path, name: str = "vqa_rad",
                  overwrite: bool = False) -> dict[str, str]:
    source, out = Path(source_dir), Path(out_dir)
    path = source / OFFICIAL_JSON
    if not path.is_file():
        raise AttTokError(f"{source}: the official {OFFICIAL_JSON!r} is missing")
    check_free_names(out, [f"{name}_train", f"{name}_test"], overwrite)
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    for index, qa in enumerate(json.loads(path.read_text(encoding="utf-8"))):
        split = SPLIT_OF_PHRASE.get(str(qa.get("phrase_type", "")).strip())
        if split is None:
            where = f"{path}: entry {index} (qid {qa.get('qid')})"
            raise AttTokError(f"{where}: unknown phrase_type {qa.get('phrase_type')!r}")
        image = source / IMAGE_FOLDER / qa["image_name"]
        if not image.is_file():
            raise AttTokError(f"{path}: entry {index} (qid {qa.get('qid')}): image {image} does not exist")
        rel = f"{name}_images/{image.name}"
        if not (out / rel).exists():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, out / rel)
        answer_type = str(qa["answer_type"]).strip().lower()  # two entries read "CLOSED " upstream
        rows[split].append(sharegpt_row(
            f"<image>{qa['question'].strip()}", str(qa["answer"]).strip(), [rel], qid=str(qa["qid"]),
            answer_type=answer_type, question_type=qa.get("question_type"), organ=qa.get("image_organ"),
            modality=None))
    written = {}
    for split, split_rows in rows.items():
        write_json(out / f"{name}_{split}.json", split_rows)
        written[f"{name}_{split}"] = f"{name}_{split}.json"
    merge_dataset_info(out, {d: dataset_entry(f) for d, f in written.items()}, overwrite=overwrite)
    return written
