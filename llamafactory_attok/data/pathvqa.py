"""`attok data pathvqa`: PathVQA (He et al. 2020) into LF sharegpt, from the official release layout or from the
Hugging Face parquet export (see :mod:`.pathvqa_sources`).

Closed questions are those answered yes / no (PathVQA has no answer-type field; MedEvalKit splits it the same
way). Pathology is the only modality, so rows carry ``single_modality: true`` and `attok data vqa-attributes`
gives them ``<|concept|>`` tokens without a modality part (``modality: pathology`` stays as context for the LLM).
A question whose image the release lacks is skipped, listed by qid in the build report and counted.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ..errors import AttTokError
from ..safe_paths import STAGING_MARKER, build_lock, remove_stale_staging
from .lf_format import sharegpt_row
from .pathvqa_sources import QA, from_parquet, from_release, release_file
from .vqa_build import (
    VQA_SPLITS,
    YES_NO,
    Skipped,
    VqaBuild,
    VqaOutputs,
    check_outputs,
    check_owned_outputs,
    commit,
    skip_empty_answer,
)

FORMATS = ("auto", "release", "parquet")
BUILDER = "attok data pathvqa"


def detect_format(source: Path) -> str:
    """``release`` when ``qas/`` is there, ``parquet`` when any ``*.parquet`` is, else an error naming both."""
    if (source / "qas").is_dir():
        return "release"
    if next(source.rglob("*.parquet"), None) is not None:
        return "parquet"
    raise AttTokError(f"{source}: neither the official layout ({release_file(source, 'train')} ...) nor parquet "
                      "files (train-*.parquet, validation-*.parquet, test-*.parquet)")


def _row(qa: QA, rel: str) -> dict:
    closed = qa.answer.lower() in YES_NO
    return sharegpt_row(f"<image>{qa.question}", qa.answer, [rel], qid=qa.qid,
                        answer_type="closed" if closed else "open", modality="pathology", single_modality=True)


def _assemble(build: VqaBuild, records: Iterable[QA], source: Path) -> None:
    build.rows = {split: [] for split in VQA_SPLITS}
    for qa in records:
        if qa.image is None:
            build.skipped.append(Skipped(qa.split, qa.qid, f"{qa.where}: image images/{qa.image_name} does not "
                                                           "exist"))
            continue
        if skip_empty_answer(build, qa.split, qa.qid, qa.answer):
            continue
        rel = f"{build.name}_images/{qa.image_name}"
        build.images[rel] = qa.image
        build.rows[qa.split].append(_row(qa, rel))
    empty = [s for s, rows in build.rows.items() if not rows]
    if empty:
        answers = sum(s.kind == "answer" for s in build.skipped)
        raise AttTokError(f"{source}: no question with an image in split(s) {', '.join(empty)} "
                          f"({len(build.skipped) - answers} skipped for a missing image"
                          f"{f', {answers} for an empty answer' if answers else ''}); nothing to build")


def build_pathvqa(source_dir: str | Path, out_dir: str | Path, name: str = "pathvqa", source_format: str = "auto",
                  overwrite: bool = False) -> VqaBuild:
    """Check everything, then write ``N_{train,val,test}.json``, ``N_images/``, ``N_build_report.json`` and the
    ``dataset_info.json`` entries. Parquet images are staged in a temp folder inside ``out_dir``, removed after.
    ``overwrite`` replaces only what an earlier build of ``name`` wrote (:mod:`.vqa_build`)."""
    source, out = Path(source_dir), Path(out_dir)
    if not source.is_dir():
        raise AttTokError(f"{source}: not a folder (expected the PathVQA release or its parquet export)")
    if source_format not in FORMATS:
        raise AttTokError(f"--format {source_format!r}: expected one of {', '.join(FORMATS)}")
    plan = VqaOutputs(BUILDER, name, VQA_SPLITS)
    check_outputs(plan, source, out)
    fmt = detect_format(source) if source_format == "auto" else source_format
    report = {"source": str(source), "format": fmt}
    with build_lock(out):
        check_owned_outputs(plan, out, overwrite)
        build = VqaBuild(name)
        if fmt == "release":
            _assemble(build, from_release(source), source)
            commit(build, plan, out, overwrite, report)
        else:
            remove_stale_staging(out)
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.building.", dir=out))
            (staging / STAGING_MARKER).touch()
            try:
                _assemble(build, from_parquet(source, staging), source)
                commit(build, plan, out, overwrite, report)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return build
