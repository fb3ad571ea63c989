"""The ``attok`` command: helpers around LLaMA-Factory for AttTok (training itself is ``llamafactory-cli train``)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import signal
import sys
import threading
from pathlib import Path

from .cli_vqa import add_vqa_data_commands, add_vqa_eval_command, non_negative_int, number, positive_int
from .errors import AttTokError
from .safe_paths import (
    new_output_path,
    output_file,
    refuse_among_dataset_images,
    refuse_outputs_over_reads,
    refuse_protected_folders,
    refuse_same_as_input,
    refuse_symlinks,
)

DESCRIPTION = ("attok: helpers around LLaMA-Factory for AttTok — build datasets with attribute tokens, tiny offline "
               "models, one-forward prediction, evaluation and reports. Training itself is `llamafactory-cli train` "
               "with attok_* keys in the YAML.")


def _tiny_model(ns: argparse.Namespace) -> None:
    from .tiny import TEMPLATES, build_tiny_model
    from .tiny.models import check_replaceable

    check_replaceable(Path(ns.out))  # a folder no tiny-model build wrote is never replaced: said before --overwrite
    new_output_path(ns.out, ns.overwrite, "OUT")  # before the build, which takes seconds
    path = build_tiny_model(ns.out, ns.family, tied=ns.tied, seed=ns.seed, spare_rows=ns.spare_rows,
                            overwrite=ns.overwrite)
    print(f"tiny {ns.family} model written to {path} (LLaMA-Factory template: {TEMPLATES[ns.family]})")


def _sample_data(ns: argparse.Namespace) -> None:
    from .tiny.sample_data import build_retina_sample

    written = build_retina_sample(ns.out, per_class_train=ns.per_class_train, per_class_test=ns.per_class_test,
                                  image_size=ns.image_size, npz_path=ns.npz, overwrite=ns.overwrite)
    print(f"datasets {', '.join(written)} written to {ns.out} (dataset_info.json merged)")


def refuse_changed_csv_labels(csv_path: Path, ns: argparse.Namespace) -> None:
    """--relabel keeps the earlier build's raw labels: a CSV whose labels were corrected since (the rows the build
    recorded, by line) would have its corrections dropped without a word — refused, naming a changed line."""
    from .data import sources
    from .data.build_manifest import read_manifest
    from .data.classify import BUILDER

    manifest = read_manifest(Path(ns.out), f"{ns.name}_vanilla" if ns.vanilla else ns.name, BUILDER)
    if manifest is None:
        return  # relabel_classification names the missing build
    recorded = {entry["source"].rpartition(": line ")[2]: entry["label"] for entry in manifest["images"]
                if entry.get("source", "").rpartition(": line ")[0].endswith(csv_path.name)}
    if not recorded:
        return  # built from another source (named below: its manifest is what relabel reads)
    now = {item.source.rpartition(": line ")[2]: item.label
           for item in sources.from_csv(csv_path, ns.image_col, ns.label_col, ns.split_col)}
    changed = [(line, label, now.get(line)) for line, label in recorded.items() if now.get(line) != label]
    if changed:
        line, before, after = changed[0]
        raise AttTokError(f"{csv_path}: {len(changed)} row(s) differ from the earlier build of {ns.name!r} (line "
                          f"{line}: {before!r} then, {after!r} now); --relabel keeps the build's labels and images, "
                          "so the corrections would be dropped: rebuild without --relabel (with --overwrite)")


def _data_classify(ns: argparse.Namespace) -> None:
    from .data import sources
    from .data.classify import build_classification, relabel_classification
    from .data.summary import classification_table

    src = Path(ns.source)
    if ns.relabel:
        if not ns.class_map:
            raise AttTokError("--relabel rewrites an earlier build's text for a new --class-map; give --class-map")
        if ns.format == "csv":
            refuse_changed_csv_labels(src, ns)
        print(f"attok: --relabel takes the images, raw labels and splits from the earlier build's manifest; {src} "
              "and the image and split options are not read again (to change labels, splits or images, rebuild "
              "without --relabel)", file=sys.stderr)
        written = relabel_classification(ns.class_map, ns.out, ns.name, seed=ns.seed, vanilla=ns.vanilla,
                                         overwrite=ns.overwrite)
        print(f"relabelled {', '.join(written)} in {ns.out} with {ns.class_map} (images reused, none re-encoded)")
        prefix = f"{ns.name}_vanilla" if ns.vanilla else ns.name
        print(f"images per class and split:\n{classification_table(ns.out, prefix)}")
        return
    if ns.format == "npz":
        items = list(sources.from_npz(src))
    elif ns.format == "folder":
        items = list(sources.from_image_folder(src))
    else:
        items = list(sources.from_csv(src, ns.image_col, ns.label_col, ns.split_col))
    items = sources.drop_duplicates(items)  # before --max-per-class, so that repeats do not take the places
    if ns.max_per_class:
        kept: list[sources.Item] = []
        seen: dict[tuple[str | None, str], int] = {}  # (split, label) -> items so far
        for item in items:
            key = (item.split, item.label)
            seen[key] = seen.get(key, 0) + 1
            if seen[key] <= ns.max_per_class:
                kept.append(item)
        items = kept
    written = build_classification(
        items, ns.class_map, ns.out, ns.name, image_size=ns.image_size, seed=ns.seed, val_ratio=ns.val_ratio,
        test_ratio=ns.test_ratio, augment=not ns.no_augment, augment_target=ns.augment_target, vanilla=ns.vanilla,
        overwrite=ns.overwrite, modality=ns.modality, inputs={"source": src}, max_size=ns.max_size,
        workers=ns.workers)
    print(f"wrote {', '.join(written)} to {ns.out} (dataset_info.json merged)")
    prefix = f"{ns.name}_vanilla" if ns.vanilla else ns.name
    print(f"images per class and split (open-ended datasets; the close-ended ones hold the same images):\n"
          f"{classification_table(ns.out, prefix)}")


def _ratio(text: str) -> float:
    value = number(float, 0)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _add_data_commands(sub) -> None:
    from .data.parallel import default_workers

    data = sub.add_parser("data", help="build LF datasets with attribute tokens").add_subparsers(dest="data_command",
                                                                                               required=True)
    cls = data.add_parser("classify", help="MedMNIST npz / ImageFolder / CSV -> open & close-ended datasets")
    cls.add_argument("source", help="the .npz file, image folder or CSV file")
    cls.add_argument("--format", choices=["npz", "folder", "csv"], required=True,
                     help="npz: MedMNIST; folder: root/<class>/* or root/<split>/<class>/*; csv: paths + labels")
    cls.add_argument("--class-map", default=None,
                     help="YAML: modality + classes {label: {name, keyword, concept}}; without it the labels are "
                          "the answers and the derived map is written as <name>_classes.yaml to edit and reuse")
    cls.add_argument("--modality", default=None,
                     help="the imaging modality (token prefix, e.g. xray); needed without --class-map, unused "
                          "with one")
    cls.add_argument("--out", required=True, help="dataset folder (dataset_info.json is merged there)")
    cls.add_argument("--name", required=True, help="dataset name prefix")
    cls.add_argument("--image-col", default="image", help="CSV column with image paths (relative to the CSV)")
    cls.add_argument("--label-col", default="label", help="CSV column with the class label")
    cls.add_argument("--split-col", default=None,
                     help="CSV column with train/val/test; none: a seeded stratified split (train/test only: "
                          "--val-ratio of each class's training images become val)")
    cls.add_argument("--image-size", type=positive_int, default=112,
                     help="images whose shorter side is below this are upscaled to it (aspect ratio kept)")
    cls.add_argument("--max-size", type=positive_int, default=None,
                     help="images whose longer side is above this are downscaled to it, aspect ratio kept (not "
                          "given: no limit; e.g. 1024 keeps Qwen2.5-VL's visual tokens per image bounded)")
    cls.add_argument("--seed", type=int, default=42, help="seed of the split, the option order and augmentation")
    cls.add_argument("--val-ratio", type=_ratio, default=0.1,
                     help="val share per class when the source has no split (val + test below 1), or of the "
                          "training images when its split has no val (0: none)")
    cls.add_argument("--test-ratio", type=_ratio, default=0.2,
                     help="test share per class when the source has no split (val + test below 1)")
    cls.add_argument("--no-augment", action="store_true", help="no offline class balancing of the training split")
    cls.add_argument("--workers", type=positive_int, default=default_workers(),
                     help="processes writing images (default: every core this process may use); the files are the "
                          "same, byte for byte, with any number")
    cls.add_argument("--augment-target", type=positive_int, default=None,
                     help="images per class after augmentation (not given: the largest class's count)")
    cls.add_argument("--max-per-class", type=positive_int, default=None,
                     help="keep at most this many per class and split (not given: all)")
    cls.add_argument("--vanilla", action="store_true", help="same samples without attribute tokens")
    cls.add_argument("--overwrite", action="store_true",
                     help="replace an earlier build of the same name (only the files its manifest "
                          "<name>_build.json lists; never files it did not write)")
    cls.add_argument("--relabel", action="store_true",
                     help="with --class-map: rewrite the datasets and vocabulary of an earlier build of --name for "
                          "new class names / keywords, reusing its images (the source is not read again)")
    cls.set_defaults(func=_data_classify)
    add_vqa_data_commands(data)


PREDICT_WORKERS = 0  # measured on CPU: workers do not pay there (BENCHMARKS.md §9b)


def _predict(ns: argparse.Namespace) -> None:
    from .eval.predict import run_predict, summary_lines

    # LF's loaders log to stdout: kept on stderr here, so stdout holds only the summary (or, with --json, JSON)
    with contextlib.redirect_stdout(sys.stderr):
        metrics = run_predict(ns.model, ns.dataset, ns.out, adapter=ns.adapter, vocab_path=ns.vocab,
                              val_dataset=ns.val_dataset, mode=ns.mode, top_k=ns.top_k, device=ns.device,
                              batch_size=ns.batch_size, template=ns.template, overwrite=ns.overwrite,
                              workers=ns.workers)
    print(json.dumps(metrics, indent=2) if ns.json else "\n".join(summary_lines(metrics, ns.out)))


def _eval_classify(ns: argparse.Namespace) -> None:
    from .data.lf_format import write_json
    from .eval.classification import score_generated
    from .eval.figures import confusion_figure
    from .vocab import load_vocab

    out = Path(ns.out)
    refuse_outputs_over_reads([out, out.with_suffix(".confusion.png")], out,
                              {"--predictions": ns.predictions, "--dataset": ns.dataset, "--vocab": ns.vocab},
                              {"--dataset": ns.dataset})
    output_file(out, "--out", ns.overwrite)
    output_file(out.with_suffix(".confusion.png"), "--out's confusion figure", ns.overwrite)
    scores = score_generated(ns.predictions, ns.dataset, load_vocab(ns.vocab) if ns.vocab else None)
    write_json(out, scores.as_dict())
    confusion_figure(scores.classes, scores.confusion, out.with_suffix(".confusion.png"),
                     title=Path(ns.dataset).stem)
    print(f"accuracy {scores.accuracy:.4f}, macro-F1 {scores.macro_f1:.4f}, "
          f"unparseable {scores.unparseable}/{scores.total} -> {out}")


def _pair_list(items: list[str], flag: str) -> list[tuple[str, str]]:
    """``name=value`` arguments in order (a name may repeat)."""
    bad = [item for item in items if "=" not in item or not item.split("=", 1)[0]]
    if bad:
        raise AttTokError(f"{flag} {bad[0]!r}: expected name=value")
    return [(name, value) for name, value in (item.split("=", 1) for item in items)]


def _result_siblings(path: Path) -> dict[str, Path]:
    """The files that go with a result file of ``attok predict`` (``X.metrics.json``: ``X.jsonl`` rows, its
    ``.partial``, ``X.confusion.png``) or ``attok eval classify`` (``X.json``: ``X.confusion.png``), which a report
    links or a reader needs beside it."""
    if path.name.endswith(".metrics.json"):
        stem = path.with_name(path.name.removesuffix(".metrics.json"))
        return {"rows": stem.with_name(stem.name + ".jsonl"), "rows in progress": stem.with_name(stem.name +
                                                                                              ".jsonl.partial"),
                "confusion figure": stem.with_name(stem.name + ".confusion.png")}
    return {"confusion figure": path.with_suffix(".confusion.png")}


def _eval_report(ns: argparse.Namespace) -> None:
    from .eval.figures import training_curves
    from .eval.report import build_report, distinct_runs

    if not ns.run and not ns.vqa:
        raise AttTokError("eval report needs --run arm@seed=metrics.json and/or --vqa arm@seed=vqa.json")
    runs = distinct_runs(_pair_list(ns.run, "--run"), "--run")
    vqa_runs = distinct_runs(_pair_list(ns.vqa, "--vqa"), "--vqa", names_repeat=True)  # one per run and dataset
    train_dirs = distinct_runs(_pair_list(ns.train_dir, "--train-dir"), "--train-dir")
    out = Path(ns.out)
    curves = out.with_name(out.stem + "_curves.png")
    flags = (("--run", runs), ("--vqa", vqa_runs), ("--train-dir", train_dirs))  # a train dir is a folder: the
    inputs = {f"{flag} {run}={path}": path for flag, pairs in flags for run, path in pairs}  # report stays out of it
    refuse_same_as_input([out, curves], inputs)
    refuse_protected_folders([out, curves], "--out")
    run_files = {f"{flag} {run}'s {kind}": sibling for flag, pairs in flags[:2] for run, path in pairs
                 for kind, sibling in _result_siblings(Path(path)).items()}
    refuse_same_as_input([out, curves], run_files)
    output_file(out, "--out", ns.overwrite)
    if train_dirs:
        output_file(curves, "--out's training-curves figure", ns.overwrite)
    figures = [training_curves(dict(train_dirs), curves)] if train_dirs else []
    print(build_report(dict(runs), out, figures, vqa_runs=vqa_runs))


FIGURES = ("tsne", "similarity", "acc_maps")  # the PNGs `attok eval figures` writes into --out-dir


def _check_figures(ns: argparse.Namespace, targets: dict[str, Path]) -> None:
    """No figure replaces an input, and none replaces an earlier file without --overwrite."""
    refuse_same_as_input(targets.values(), {"--model": ns.model, "--adapter": ns.adapter, "--dataset": ns.dataset,
                                            "--vocab": ns.vocab})
    refuse_among_dataset_images(targets.values(), {"--dataset": ns.dataset})
    refuse_symlinks(targets.values(), "figure")
    if Path(ns.out_dir).exists() and not Path(ns.out_dir).is_dir():
        raise AttTokError(f"--out-dir {ns.out_dir} is a file, not a folder")
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not ns.overwrite:
        raise AttTokError(f"--out-dir {ns.out_dir} already holds {', '.join(existing)}; pass --overwrite to replace "
                          "them, or choose another folder")


def _eval_figures(ns: argparse.Namespace) -> None:
    from .eval.analysis import acc_map_figure, collect, similarity_figure, tsne_figure
    from .eval.attribute_classifier import check_device, check_model_folders, load_model_for_inference, read_samples
    from .eval.predict import class_names, resolve_template, resolve_vocab, saved_run, vocab_token_ids

    out = Path(ns.out_dir)
    targets = {name: out / f"{name}.png" for name in FIGURES}
    _check_figures(ns, targets)
    check_device(ns.device)
    check_model_folders(ns.model, ns.adapter)
    saved = saved_run(ns.model, ns.adapter)
    template, default_system = resolve_template(saved, ns.template)
    model, _, processor = load_model_for_inference(ns.model, ns.adapter, template)
    vocab = resolve_vocab(saved, ns.vocab, ns.adapter or ns.model)
    samples = read_samples(ns.dataset)
    labels = [vocab.tokens.index(s.label_token) for s in samples]
    token_ids = vocab_token_ids(processor.tokenizer, vocab, ns.adapter or ns.model)
    features = collect(model, processor, samples, token_ids, ns.batch_size, ns.device, template, default_system)
    out.mkdir(parents=True, exist_ok=True)
    names = class_names(vocab)
    written = [tsne_figure(features, labels, names, targets["tsne"]),
               similarity_figure(features, labels, names, targets["similarity"])]
    if features["weights"]:
        written.append(acc_map_figure(samples, features, labels, targets["acc_maps"]))
    print("wrote " + ", ".join(str(p) for p in written))


def _add_model_and_data_args(parser: argparse.ArgumentParser) -> None:
    """--model / --adapter / --dataset / --vocab of the commands that read a trained model on a dataset."""
    parser.add_argument("--model", required=True, help="base model, or a full / merged AttTok folder")
    parser.add_argument("--adapter", default=None,
                        help="LoRA adapter folder of an AttTok run (not given: --model is a full or merged model)")
    parser.add_argument("--dataset", required=True, help="sharegpt JSON with one image per sample")
    parser.add_argument("--vocab", default=None, help="vocabulary YAML (default: the one saved with the model)")


def _add_eval_commands(sub) -> None:
    pred = sub.add_parser("predict", help="one-forward class probabilities per sample (JSONL), no generation")
    _add_model_and_data_args(pred)
    pred.add_argument("--out", required=True,
                      help="JSONL rows; beside it (its suffix replaced) NAME.metrics.json and NAME.confusion.png")
    pred.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    pred.add_argument("--json", action="store_true",
                      help="print the metrics as JSON (as in <out>.metrics.json) instead of the summary")
    pred.add_argument("--val-dataset", default=None,
                      help="calibrate a temperature on this split (not given: temperature 1)")
    pred.add_argument("--mode", choices=["attribute", "likelihood", "answer"], default="attribute",
                      help="attribute: attribute-token probabilities; likelihood: class-name likelihood (vanilla); "
                           "answer: the likelihood of each class's whole answer as the dataset writes it — one "
                           "rule for AttTok and vanilla models alike")
    pred.add_argument("--top-k", type=positive_int, default=3, help="classes listed per sample")
    pred.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    pred.add_argument("--batch-size", type=positive_int, default=8, help="samples per forward")
    pred.add_argument("--workers", type=non_negative_int, default=PREDICT_WORKERS,
                      help="DataLoader processes that decode and encode the next batches while the model runs "
                           "(0: in this process; BENCHMARKS.md §9b)")
    pred.add_argument("--template", default=None,
                      help="LF template; default: the one saved with the AttTok run (else qwen2_vl); another one "
                           "than the saved is an error")
    pred.set_defaults(func=_predict)
    ev = sub.add_parser("eval", help="score predictions, write reports").add_subparsers(dest="eval_command",
                                                                                      required=True)
    cls = ev.add_parser("classify", help="accuracy / F1 / confusion from LF generated_predictions.jsonl")
    cls.add_argument("--predictions", required=True, help="LF's generated_predictions.jsonl")
    cls.add_argument("--dataset", required=True, help="the dataset JSON the predictions were made from")
    cls.add_argument("--vocab", default=None,
                     help="adds vocabulary keywords as class synonyms (not given: class names only)")
    cls.add_argument("--out", required=True, help="scores JSON (+ .confusion.png)")
    cls.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    cls.set_defaults(func=_eval_classify)
    add_vqa_eval_command(ev)
    fig = ev.add_parser("figures", help="t-SNE, similarity heatmaps and ACC attention maps of a trained model")
    _add_model_and_data_args(fig)
    fig.add_argument("--out-dir", required=True, help="folder for the PNG figures")
    fig.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    fig.add_argument("--batch-size", type=positive_int, default=8, help="samples per forward")
    fig.add_argument("--template", default=None,
                     help="LF template; default: the one saved with the AttTok run (else qwen2_vl)")
    fig.add_argument("--overwrite", action="store_true", help="replace figures already in --out-dir")
    fig.set_defaults(func=_eval_figures)
    rep = ev.add_parser("report", help="report.md over runs: --run arm@seed=metrics.json ..., --vqa arm@seed=vqa.json")
    rep.add_argument("--run", action="append", default=[], help="classification metrics (predict / eval classify)")
    rep.add_argument("--vqa", action="append", default=[],
                     help="an `attok eval vqa` result; one per run and dataset (Table 2 layout, both protocols)")
    rep.add_argument("--train-dir", action="append", default=[], help="name=output_dir for training curves")
    rep.add_argument("--out", required=True, help="report.md to write (figures next to it)")
    rep.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    rep.set_defaults(func=_eval_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attok", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny-model", help="build a tiny offline model of a supported family (random weights)")
    tiny.add_argument("out", help="folder for the model, tokenizer and processor")
    from .tiny import FAMILIES  # test/demo scaffolding, used by this command only
    from .tiny.sample_data import RETINA_NPZ

    tiny.add_argument("--family", choices=FAMILIES, default="qwen2_vl", help="model family to build")
    tiny.add_argument("--tied", action="store_true", default=None,
                      help="tie the output head to the input embedding (default: the family's habit)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tiny.add_argument("--spare-rows", type=non_negative_int, default=0,
                      help="unused embedding rows beyond the tokenizer")
    tiny.add_argument("--overwrite", action="store_true", help="replace OUT when it already holds anything")
    tiny.set_defaults(func=_tiny_model)
    sample = sub.add_parser("sample-data", help="write the RetinaMNIST sample datasets (AttTok and vanilla)")
    sample.add_argument("out", help="dataset folder to write")
    sample.add_argument("--per-class-train", type=positive_int, default=40, help="training images per class")
    sample.add_argument("--per-class-test", type=positive_int, default=20, help="test images per class")
    sample.add_argument("--image-size", type=positive_int, default=56, help="side of the upscaled PNGs, pixels")
    sample.add_argument("--npz", default=str(RETINA_NPZ), help="the RetinaMNIST .npz to take the images from")
    sample.add_argument("--overwrite", action="store_true",
                        help="replace the sample datasets, images and vocabulary already in OUT")
    sample.set_defaults(func=_sample_data)
    _add_data_commands(sub)
    _add_eval_commands(sub)
    for command in _all_parsers(parser):  # every option's help ends with its default
        command.formatter_class = _HelpWithDefaults
        for action in command._actions:  # every path option: never empty ("" would mean the current folder)
            if action.type is None and (action.dest in PATH_DESTS or action.dest.endswith("_dir")):
                action.type = path_argument
    return parser


PATH_DESTS = {"out", "out_dir", "source", "model", "adapter", "dataset", "vocab", "class_map", "predictions", "input",
              "val_dataset", "npz", "judge_prompt", "medevalkit_judge_prompt"}


def path_argument(text: str) -> str:
    """An argparse type for paths: an empty or blank value is refused (it would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder name")
    return text


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default; required options (no default to speak of) excepted."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        # required: no default to speak of; None: the help says what absence means; and never "(default: …)" twice
        if action.required or action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _all_parsers(sub)
    return found


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: every `finally` removes its temp files and folders


OS_HINTS = {
    errno.EFBIG: "a file-size limit (ulimit -f) stopped the write",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.ENAMETOOLONG: "a file name is too long",
    errno.EACCES: "no permission",
    errno.EROFS: "the file system is read-only",
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input (:class:`AttTokError`) is reported on stderr with exit status 2, as is a failed
    write (disk full, file-size limit): every command writes through temp files, so its outputs are left as they
    were. SIGTERM unwinds like Ctrl-C, so a build killed by a scheduler leaves no temp folder; Ctrl-C ends with
    status 130 and a line, not a traceback."""
    ns = build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return ns.func(ns) or 0
    except KeyboardInterrupt:  # Ctrl-C: what was kept is said where it was kept (e.g. a build's finished images)
        print("attok: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except AttTokError as err:
        print(f"attok: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        hint = OS_HINTS.get(err.errno or 0, "")
        print(f"attok: error: {where}{err.strerror or err} ({errno.errorcode.get(err.errno or 0, 'OSError')})"
              f"{'; ' + hint if hint else ''}; outputs are written through temp files, so none was left "
              "half-written", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
