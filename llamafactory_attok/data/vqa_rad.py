"""`attok data vqa-rad`: the official VQA-RAD release into LF sharegpt, with the official ``phrase_type`` split
(freeform/para → train, test_freeform/test_para → test) and each QA's closed/open type kept for evaluation."""

from __future__ import annotations

from pathlib import Path

from ..errors import AttTokError
from ..safe_paths import build_lock
from .lf_format import read_json, sharegpt_row
from .sources import warn
from .vqa_build import (
    VqaBuild,
    VqaOutputs,
    answer_type_of,
    check_outputs,
    check_owned_outputs,
    commit,
    relative_member,
    skip_empty_answer,
)

SPLIT_OF_PHRASE = {"freeform": "train", "para": "train", "test_freeform": "test", "test_para": "test"}
OFFICIAL_JSON = "VQA_RAD Dataset Public.json"
IMAGE_FOLDER = "VQA_RAD Image Folder"
SHOWN = 10  # skipped questions listed in the warning
BUILDER = "attok data vqa-rad"


def build_vqa_rad(source_dir: str | Path, out_dir: str | Path, name: str = "vqa_rad",
                  overwrite: bool = False) -> dict[str, str]:
    """Every entry is checked before anything is written; an image already in the output is reused if identical.
    ``overwrite`` replaces only what an earlier build of ``name`` wrote (:mod:`.vqa_build`)."""
    source, out = Path(source_dir), Path(out_dir)
    plan = VqaOutputs(BUILDER, name, ("train", "test"), report=False)
    check_outputs(plan, source, out)
    path = source / OFFICIAL_JSON
    if not path.is_file():
        raise AttTokError(f"{source}: the official {OFFICIAL_JSON!r} is missing")
    with build_lock(out):
        check_owned_outputs(plan, out, overwrite)
        build = _assemble(source, path, name)
        written = commit(build, plan, out, overwrite)
    if build.skipped:
        warn(f"{path}: skipped {len(build.skipped)} question(s): " + "; ".join(
            f"qid {s.qid}: {s.reason}" for s in build.skipped[:SHOWN]) + (" …" if len(build.skipped) > SHOWN else ""))
    return written


def _assemble(source: Path, path: Path, name: str) -> VqaBuild:
    build = VqaBuild(name, rows={"train": [], "test": []})
    for index, qa in enumerate(read_json(path)):
        where = f"{path}: entry {index} (qid {qa.get('qid')})"
        split = SPLIT_OF_PHRASE.get(str(qa.get("phrase_type", "")).strip())
        if split is None:
            raise AttTokError(f"{where}: unknown phrase_type {qa.get('phrase_type')!r}")
        member = relative_member(qa.get("image_name"), where)
        image = source / IMAGE_FOLDER / member
        if not image.is_file():
            raise AttTokError(f"{where}: image {image} does not exist")
        answer = str(qa["answer"]).strip()
        if skip_empty_answer(build, split, str(qa["qid"]), answer):
            continue
        rel = f"{name}_images/{member.as_posix()}"  # its path in the release: a/img.jpg and b/img.jpg stay two
        build.images[rel] = image
        build.rows[split].append(sharegpt_row(
            f"<image>{qa['question'].strip()}", answer, [rel], qid=str(qa["qid"]),
            answer_type=answer_type_of(qa["answer_type"], where),  # two entries read "CLOSED " upstream
            question_type=qa.get("question_type"), organ=qa.get("image_organ"), modality=None))
    return build
