"""``attok`` commands for the VQA benchmarks of the paper's Table 2: the VQA-RAD, SLAKE and PathVQA builders and
their attribute tokens (``attok data``: the LLM workflow of Appendix A.2, or offline from structured fields), and
their scoring under the paper's and MedEvalKit's protocols (``attok eval vqa``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .data.build_manifest import refuse_other_builds_files
from .errors import AttTokError
from .extras import require
from .safe_paths import (
    build_lock,
    dataset_name,
    output_file,
    refuse_outputs_over_reads,
    refuse_protected_folders,
    refuse_same_as_input,
    refuse_symlink,
    refuse_symlinks,
)

SHOWN_SKIPS = 20

OVERWRITE_HELP = "replace an earlier build of the same name (every file it wrote)"


def number(kind: type, low: float, inclusive: bool = True):
    """An argparse type: ``kind`` values at least ``low`` (above it with ``inclusive=False``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from err
        if value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'at least' if inclusive else 'above'} {low}, got {value}")
        return value

    return parse


positive_int = number(int, 1)
non_negative_int = number(int, 0)
positive_float = number(float, 0, inclusive=False)


def _report_build(build, out: str) -> int:
    """Print what was written and every skipped question (by qid); exit code 1 when an image was missing (an
    incomplete download). Questions with an empty answer (one in SLAKE's train.json) are listed, exit code 0."""
    summary = build.summary()
    counts = ", ".join(f"{split} {c['questions']} ({c['closed']} closed)" for split, c in summary["splits"].items())
    print(f"wrote {', '.join(summary['datasets'])} to {out}: {counts}; {summary['images']} images "
          f"(dataset_info.json merged, report {build.name}_build_report.json)")
    for kind, why in (("image", "whose image is missing"), ("answer", "with an empty answer")):
        skipped = [s for s in build.skipped if s.kind == kind]
        if skipped:
            shown = "; ".join(f"{s.split} qid {s.qid}: {s.reason}" for s in skipped[:SHOWN_SKIPS])
            more = f"; ... and {len(skipped) - SHOWN_SKIPS} more" if len(skipped) > SHOWN_SKIPS else ""
            print(f"skipped {len(skipped)} question(s) {why} (all listed in {build.name}_build_report.json): "
                  f"{shown}{more}", file=sys.stderr)
    _print_answer_types(out, summary["datasets"])
    return 1 if any(s.kind == "image" for s in build.skipped) else 0


def _print_answer_types(out: str, datasets: dict[str, str]) -> None:
    """Questions per answer type (closed / open) and dataset, read back from the files written."""
    from .data.summary import count_table, read_rows

    table = count_table(read_rows(out, datasets), lambda row: str(row.get("answer_type")), "answer type")
    print(f"questions per answer type and dataset:\n{table}")


def _data_vqa_rad(ns: argparse.Namespace) -> None:
    from .data.vqa_rad import build_vqa_rad

    written = build_vqa_rad(ns.source, ns.out, ns.name, overwrite=ns.overwrite)
    print(f"wrote {', '.join(written)} to {ns.out} (dataset_info.json merged)")
    _print_answer_types(ns.out, written)


def _data_slake(ns: argparse.Namespace) -> int:
    from .data.slake import build_slake

    return _report_build(build_slake(ns.source, ns.out, ns.name, lang=ns.lang, overwrite=ns.overwrite), ns.out)


def _data_pathvqa(ns: argparse.Namespace) -> int:
    from .data.pathvqa import build_pathvqa

    build = build_pathvqa(ns.source, ns.out, ns.name, source_format=ns.format, overwrite=ns.overwrite)
    return _report_build(build, ns.out)


def _extract(ns: argparse.Namespace, rows: list[dict], out: Path):
    """Attribute tokens by the LLM workflow, or from fields (``--from-fields``, no endpoint)."""
    if ns.from_fields:
        from .data.field_attributes import attributes_from_fields, parse_fields

        if ns.base_url or ns.model:
            raise AttTokError("--from-fields builds tokens without an LLM; drop --base-url / --model")
        return attributes_from_fields(rows, parse_fields(ns.from_fields), ns.input,
                                      single_modality=ns.single_modality, default_modality=ns.modality), "fields"
    if not (ns.base_url and ns.model):
        raise AttTokError("vqa-attributes needs --base-url and --model (the LLM workflow), or --from-fields")
    require(("openai",), "eval", "attok data vqa-attributes with an LLM (--base-url)")
    from openai import OpenAI

    from .data.vqa_attributes import KeywordLLM, ReplyCache, extract_attributes

    client = OpenAI(base_url=ns.base_url, api_key=os.environ.get("OPENAI_API_KEY", "none"), timeout=ns.timeout,
                    max_retries=ns.max_retries)
    llm = KeywordLLM(client, ns.model, ReplyCache(out / f"{ns.name}_llm_cache.json"), max_attempts=ns.max_attempts)
    return extract_attributes(rows, llm, min_count=ns.min_count, concurrency=ns.concurrency,
                              single_modality=ns.single_modality, default_modality=ns.modality), ns.model


VQA_ATTRIBUTES = "attok data vqa-attributes"


def _data_vqa_attributes(ns: argparse.Namespace) -> int:
    """Like every builder, it owns what it writes through ``<name>_build.json`` (:mod:`.data.build_manifest`):
    ``--overwrite`` replaces only an earlier vqa-attributes build of the same name. The LLM reply cache is reused
    on purpose (an interrupted run resumes), so it is written before the manifest and not among the owned files."""
    from .data.build_manifest import OWN_FILES, check_owned, manifest_name, record_hashes, write_manifest
    from .data.lf_format import (
        dataset_entry,
        dataset_info_names,
        merge_dataset_info,
        read_json,
        write_json,
        write_vocab,
    )
    from .data.vqa_attributes import check_rows

    src, out = Path(ns.input), Path(ns.out)
    name = dataset_name(ns.name)
    files = [f"{name}.json", f"{name}_vocab.yaml", f"{name}_report.json", manifest_name(name)]
    cache = f"{name}_llm_cache.json"
    refuse_same_as_input([out / f for f in [*files, cache, "dataset_info.json"]], {"input": src})
    refuse_protected_folders([out], "--out", folders=True)
    with build_lock(out):
        refuse_symlink(out / cache)
        refuse_other_builds_files(out, files, own=manifest_name(name))
        check_owned(out, name, VQA_ATTRIBUTES, files, [name], set(dataset_info_names(out)), ns.overwrite,
                    foreign_advice=OWN_FILES, edited_advice="")
        rows = check_rows(read_json(src), src)
        result, source = _extract(ns, rows, out)
        manifest = {"builder": VQA_ATTRIBUTES, "name": name, "files": files, "datasets": [name]}
        write_manifest(out, name, manifest)  # before any file it owns
        write_json(out / f"{name}_report.json", result.report)
        if not result.vocab:
            record_hashes(out, name, manifest, files[:3])
            print(f"no attribute survived extraction; see {out / (name + '_report.json')}", file=sys.stderr)
            return 1
        for row in result.rows:  # keep images resolvable from the output folder
            row["images"] = [os.path.relpath(src.parent / img, out) for img in row.get("images", [])]
        write_json(out / f"{name}.json", result.rows)
        write_vocab(out / f"{name}_vocab.yaml", result.vocab, f"attributes of {src.name} extracted by {source}")
        merge_dataset_info(out, {name: dataset_entry(f"{name}.json")}, overwrite=ns.overwrite)
        record_hashes(out, name, manifest, files[:3])
    failures = result.report["failures"]
    print(f"{len(result.vocab)} attribute tokens, {result.report['samples_with_attributes']}/{len(rows)} samples "
          f"tagged, {result.report['calls']} LLM calls, {len(failures)} failures (report: {name}_report.json)")
    _print_attribute_counts(result.rows)
    return 1 if failures else 0


def _print_attribute_counts(rows: list[dict]) -> None:
    """Samples per attribute token (a sample counts once per token it carries), and untagged samples."""
    from .data.summary import count_table
    from .vocab import tokens_in_text

    expanded = []
    for row in rows:
        answer = next((m.get("content", "") for m in row.get("messages", []) if m.get("role") == "assistant"), "")
        tokens = list(dict.fromkeys(tokens_in_text(answer))) or ["(no attribute token)"]
        expanded += [{"token": token} for token in tokens]
    print(f"samples per attribute token:\n{count_table({'samples': expanded}, lambda row: row['token'], 'token')}")


def _add_builders(data) -> None:
    rad = data.add_parser("vqa-rad", help="official VQA-RAD release -> train/test datasets")
    rad.add_argument("source", help="the VQA-RAD release folder")
    rad.add_argument("--out", required=True, help="dataset folder (dataset_info.json is merged there)")
    rad.add_argument("--name", default="vqa_rad", help="dataset name prefix")
    rad.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    rad.set_defaults(func=_data_vqa_rad)
    slake = data.add_parser("slake", help="official SLAKE 1.0 release -> train/val/test datasets")
    slake.add_argument("source", help="folder with train.json, validate.json (or validation.json), test.json, imgs/")
    slake.add_argument("--out", required=True, help="dataset folder (dataset_info.json is merged there)")
    slake.add_argument("--name", default="slake", help="dataset name prefix")
    slake.add_argument("--lang", choices=["en", "zh", "all"], default="en", help="questions by q_lang")
    slake.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    slake.set_defaults(func=_data_slake)
    path = data.add_parser("pathvqa", help="PathVQA (official pickles + images, or parquet) -> train/val/test")
    path.add_argument("source", help="qas/{split}/{split}_qa.pkl + images/{split}/, or train-/validation-/test-"
                                     "*.parquet (columns image, question, answer)")
    path.add_argument("--out", required=True, help="dataset folder (dataset_info.json is merged there)")
    path.add_argument("--name", default="pathvqa", help="dataset name prefix")
    path.add_argument("--format", choices=["auto", "release", "parquet"], default="auto",
                      help="release: qas/*.pkl + images/; parquet: the Hugging Face export; auto: whichever is there")
    path.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    path.set_defaults(func=_data_pathvqa)


def add_vqa_data_commands(data) -> None:
    """Register ``vqa-rad``, ``slake``, ``pathvqa`` and ``vqa-attributes`` under ``attok data``."""
    _add_builders(data)
    vqa = data.add_parser("vqa-attributes", help="attribute tokens for a sharegpt VQA dataset (LLM or fields)")
    vqa.add_argument("input", help="sharegpt JSON (e.g. from `attok data vqa-rad` / `slake` / `pathvqa`)")
    vqa.add_argument("--out", required=True, help="dataset folder (dataset_info.json is merged there)")
    vqa.add_argument("--name", required=True, help="name of the dataset with attribute tokens")
    vqa.add_argument("--from-fields", default=None, metavar="FIELDS",
                     help="no LLM: tokens from sample fields, modality field first (modality,location for SLAKE; "
                          "modality,organ for VQA-RAD); not given: the LLM workflow (--base-url, --model)")
    vqa.add_argument("--base-url", default=None,
                     help="OpenAI-compatible endpoint; key from OPENAI_API_KEY (only with the LLM workflow)")
    vqa.add_argument("--model", default=None, help="model name at the endpoint (only with the LLM workflow)")
    vqa.add_argument("--min-count", type=positive_int, default=2, help="drop keywords seen fewer times")
    vqa.add_argument("--concurrency", type=positive_int, default=4, help="parallel LLM requests")
    vqa.add_argument("--timeout", type=positive_float, default=60.0, help="seconds per LLM request")
    vqa.add_argument("--max-retries", type=non_negative_int, default=3,
                     help="HTTP retries (429/5xx/timeouts) by the client")
    vqa.add_argument("--max-attempts", type=positive_int, default=3, help="re-asks after a malformed reply")
    vqa.add_argument("--modality", default="rad", help="token modality when a sample has none")
    vqa.add_argument("--single-modality", action="store_true",
                     help="tokens without a modality part (PathVQA's rows ask for it themselves)")
    vqa.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    vqa.set_defaults(func=_data_vqa_attributes)


def _cache_path(out: Path, protocol: str) -> Path:
    """The judge's reply cache of one protocol, next to the result file."""
    return out.with_suffix(".judge_cache.json" if protocol == "paper" else f".{protocol}_judge_cache.json")


def _judge(ns: argparse.Namespace, protocol: str):
    """The judge of one protocol (its own prompt and cache file), or None without ``--judge-base-url``."""
    if not ns.judge_base_url:
        return None
    require(("openai",), "eval", "the LLM judge (--judge-base-url)")
    from openai import OpenAI

    from .eval.vqa import DEFAULT_PROMPT, MEDEVALKIT_PROMPT, Judge
    from .vocab import read_text

    path = Path((ns.judge_prompt or DEFAULT_PROMPT) if protocol == "paper" else
                (ns.medevalkit_judge_prompt or MEDEVALKIT_PROMPT))
    prompt = read_text(path)
    try:
        prompt.format(question="", answer="", prediction="")
    except (KeyError, IndexError, ValueError) as err:
        raise AttTokError(f"{path}: a judge prompt may use only {{question}}, {{answer}} and {{prediction}} "
                          f"(write {{{{ }}}} for a literal brace): {type(err).__name__}: {err}") from err
    client = OpenAI(base_url=ns.judge_base_url, api_key=os.environ.get("OPENAI_API_KEY", "none"),
                    timeout=ns.timeout, max_retries=ns.max_retries)
    return Judge(client, ns.judge_model, prompt, _cache_path(Path(ns.out), protocol))


def _eval_vqa(ns: argparse.Namespace) -> int:
    from .data.lf_format import write_json
    from .eval.vqa import score_vqa
    from .eval.vqa_protocols import PROTOCOLS
    from .eval.vqa_report import result_markdown

    out = Path(ns.out)
    inputs = {"--predictions": ns.predictions, "--dataset": ns.dataset, "--judge-prompt": ns.judge_prompt,
              "--medevalkit-judge-prompt": ns.medevalkit_judge_prompt}
    refuse_outputs_over_reads([out, *(_cache_path(out, p) for p in PROTOCOLS)], out, inputs,
                              {"--dataset": ns.dataset})
    output_file(out, "--out", ns.overwrite)
    refuse_symlinks([_cache_path(out, p) for p in PROTOCOLS], "the judge's reply cache")
    protocols = PROTOCOLS if ns.protocol == "both" else (ns.protocol,)
    result = score_vqa(ns.predictions, ns.dataset, {p: _judge(ns, p) for p in protocols}, name=ns.name)
    write_json(ns.out, result)
    print(result_markdown(result))
    failures = sum(len(s["judge_failures"]) for s in result["protocols"].values())
    if failures:
        print(f"{failures} judge failures, listed in {ns.out}", file=sys.stderr)
    down = any(s["judge"].startswith("unavailable") for s in result["protocols"].values())
    return 3 if down or failures else 0


def add_vqa_eval_command(ev) -> None:
    """Register ``vqa`` under ``attok eval``."""
    vqa = ev.add_parser("vqa", help="closed/open/overall VQA accuracy, paper and MedEvalKit protocols")
    vqa.add_argument("--predictions", required=True, help="LF's generated_predictions.jsonl")
    vqa.add_argument("--dataset", required=True, help="the dataset JSON (with answer_type) the predictions come from")
    vqa.add_argument("--out", required=True, help="result JSON (both protocols, breakdowns)")
    vqa.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    vqa.add_argument("--name", default=None, help="dataset name in reports (default: the dataset file's stem)")
    vqa.add_argument("--protocol", choices=["paper", "medevalkit", "both"], default="both",
                     help="paper: rules first, judge when they fail; medevalkit: every open question judged")
    vqa.add_argument("--judge-base-url", default=None, help="OpenAI-compatible endpoint; none: rules only")
    vqa.add_argument("--judge-model", default="judge", help="model name at the judge endpoint")
    vqa.add_argument("--judge-prompt", default=None,
                     help="paper protocol prompt, {question} {answer} {prediction} (not given: the built-in one)")
    vqa.add_argument("--medevalkit-judge-prompt", default=None,
                     help="medevalkit protocol prompt (reply <judge>0</judge> = correct, or {\"correct\": ...}); not "
                          "given: the built-in one")
    vqa.add_argument("--timeout", type=positive_float, default=60.0, help="seconds per judge request")
    vqa.add_argument("--max-retries", type=non_negative_int, default=3,
                     help="client retries on HTTP 429/5xx and timeouts")
    vqa.set_defaults(func=_eval_vqa)
