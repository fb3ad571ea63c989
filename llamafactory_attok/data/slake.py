"""`attok data slake`: the official SLAKE 1.0 release (Liu et al., ISBI 2021) into LF sharegpt.

The release folder holds ``train.json``, ``validate.json`` (later re-uploads: ``validation.json``; either is
accepted) and ``test.json``, and the images at ``imgs/xmlabN/source.jpg`` (``img_name`` is relative to ``imgs/``).
Each question file mixes English and Chinese questions (``q_lang``); English is the default (``lang="en"``,
4919 / 1053 / 1061 questions, of which train qid 1622 has an empty answer and is skipped), ``"zh"`` or ``"all"`` on
request. A split that keeps no question is an error.

Kept per question: ``qid``, ``answer_type`` (``closed`` / ``open``, lowercased like VQA-RAD's), ``content_type``
(Organ, Position, Abnormality, ..., for the per-type breakdown of `attok eval vqa`), ``modality``, ``location``,
``base_type`` (vqa / kvqa) and ``lang``. A question whose image is missing, or whose answer has no letter or
digit, is skipped, listed by qid in the build report and counted; if no question of a split has its image, the
build is an error (wrong folder).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..errors import AttTokError
from ..safe_paths import build_lock
from .lf_format import read_json, sharegpt_row
from .vqa_build import (
    VQA_SPLITS,
    Skipped,
    VqaBuild,
    VqaOutputs,
    answer_type_of,
    check_outputs,
    check_owned_outputs,
    commit,
    relative_member,
    skip_empty_answer,
)

SPLIT_FILES = {"train": ("train.json",), "val": ("validate.json", "validation.json"), "test": ("test.json",)}
LANGS = ("en", "zh", "all")
REQUIRED = ("qid", "img_name", "question", "answer", "q_lang", "answer_type")
IMAGES = "imgs"
BUILDER = "attok data slake"


def split_file(source: Path, split: str) -> Path:
    """The question file of ``split``; ``validate.json`` and ``validation.json`` both name the validation split."""
    found = [source / n for n in SPLIT_FILES[split] if (source / n).is_file()]
    if not found:
        raise AttTokError(f"{source}: no {' or '.join(SPLIT_FILES[split])} (expected the SLAKE 1.0 release folder "
                          "with train.json, validate.json, test.json and imgs/)")
    if len(found) > 1 and found[0].read_bytes() != found[1].read_bytes():
        raise AttTokError(f"{source}: both {found[0].name} and {found[1].name} exist and differ; keep one")
    return found[0]


def _entries(path: Path) -> list[dict]:
    entries = read_json(path)
    if not isinstance(entries, list):
        raise AttTokError(f"{path}: expected a JSON list of questions, got {type(entries).__name__}")
    for index, entry in enumerate(entries):
        missing = [k for k in REQUIRED if not isinstance(entry, dict) or entry.get(k) is None]
        if missing:
            qid = entry.get("qid") if isinstance(entry, dict) else None
            raise AttTokError(f"{path}: entry {index} (qid {qid}): missing field(s) {', '.join(missing)}")
    return entries


def _in_language(path: Path, entries: list[dict], lang: str) -> list[tuple[int, dict]]:
    kept = [(i, e) for i, e in enumerate(entries) if lang == "all" or str(e["q_lang"]).strip() == lang]
    if not kept:
        found = Counter(str(e["q_lang"]) for e in entries)
        listing = ", ".join(f"{k}: {v}" for k, v in sorted(found.items())) or "none"
        raise AttTokError(f"{path}: zero questions with q_lang {lang!r} (questions by q_lang: {listing}); "
                          "choose --lang " + " or --lang ".join(sorted(found) + ["all"]))
    return kept


def _row(entry: dict, rel: str, where: str) -> dict:
    return sharegpt_row(
        f"<image>{str(entry['question']).strip()}", str(entry["answer"]).strip(), [rel], qid=str(entry["qid"]),
        answer_type=answer_type_of(entry["answer_type"], where), content_type=entry.get("content_type"),
        modality=entry.get("modality"), location=entry.get("location"), base_type=entry.get("base_type"),
        lang=str(entry["q_lang"]).strip())


def _add_split(build: VqaBuild, source: Path, split: str, lang: str) -> None:
    path = split_file(source, split)
    rows, missing = [], 0
    for index, entry in _in_language(path, _entries(path), lang):
        where = f"{path}: entry {index} (qid {entry['qid']})"
        member = relative_member(entry["img_name"], where)
        image = source / IMAGES / member
        if not image.is_file():
            build.skipped.append(Skipped(split, str(entry["qid"]), f"image {image} does not exist"))
            missing += 1
            continue
        if skip_empty_answer(build, split, str(entry["qid"]), str(entry["answer"]).strip()):
            continue
        rel = f"{build.name}_images/{member.as_posix()}"
        build.images[rel] = image
        rows.append(_row(entry, rel, where))
    if not rows:
        raise AttTokError(f"{path}: none of the {missing} {lang!r} questions has its image under {source / IMAGES} "
                          "(expected imgs/xmlabN/source.jpg from the SLAKE release)")
    build.rows[split] = rows


def build_slake(source_dir: str | Path, out_dir: str | Path, name: str = "slake", lang: str = "en",
                overwrite: bool = False) -> VqaBuild:
    """Check everything, then write ``N_{train,val,test}.json``, ``N_images/``, ``N_build_report.json`` and the
    ``dataset_info.json`` entries; the returned build lists what was skipped. ``overwrite`` replaces only what an
    earlier build of ``name`` wrote (:mod:`.vqa_build`)."""
    if lang not in LANGS:
        raise AttTokError(f"--lang {lang!r}: expected one of {', '.join(LANGS)}")
    source, out = Path(source_dir), Path(out_dir)
    if not source.is_dir():
        raise AttTokError(f"{source}: not a folder (expected the SLAKE 1.0 release folder)")
    plan = VqaOutputs(BUILDER, name, VQA_SPLITS)
    check_outputs(plan, source, out)
    with build_lock(out):
        check_owned_outputs(plan, out, overwrite)
        build = VqaBuild(name)
        for split in VQA_SPLITS:
            _add_split(build, source, split, lang)
        commit(build, plan, out, overwrite, {"source": str(source), "lang": lang})
    return build
