"""`attok predict`: per-sample class probabilities without generation (one forward pass), written as JSONL.

AttTok models: attribute-token logits (optionally temperature-calibrated on a validation split) and retrieval
with the head rows as weights. Vanilla models (``--mode likelihood``): class-name likelihood scoring.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TypedDict

import torch

from ..data.lf_format import write_atomic
from ..errors import AttTokError
from ..extras import missing_extra
from ..progress import progress
from ..safe_paths import (
    dataset_images,
    output_file,
    refuse_outputs_over_reads,
    refuse_symlink,
    same_file,
)
from ..state import find_saved
from ..vocab import AttributeVocab, load_vocab
from .attribute_classifier import (
    Sample,
    calibrate_temperature,
    check_device,
    check_model_folders,
    first_answer_outputs,
    iter_first_answer_outputs,
    likelihood_scores,
    load_model_for_inference,
    read_samples,
    read_samples_skipping,
    retrieval_scores,
)

try:
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )
except ImportError as err:  # the `eval` extra
    raise missing_extra("scikit-learn", "eval", "attok predict") from err


def saved_run(model_path: str, adapter: str | None):
    """The AttTok run saved with the model or adapter (read once; :func:`resolve_template` and
    :func:`resolve_vocab` take it), or None for a vanilla model."""
    return find_saved([model_path, adapter])


def resolve_vocab(saved, vocab_path: str | None, model: str) -> AttributeVocab:
    """``vocab_path``'s vocabulary, else the one saved with the model (``saved``: :func:`saved_run`)."""
    if vocab_path:
        return load_vocab(vocab_path)
    if saved is None:
        raise AttTokError(f"no attribute vocabulary: {model} holds no attok_vocab.yaml and no --vocab "
                          "was given (for a vanilla model use --mode likelihood)")
    return saved.vocab


def class_names(vocab: AttributeVocab) -> list[str]:
    """The name of each attribute token's class in predict's output: its keyword, or — where tokens share a keyword
    (one concept in several modalities) — the token itself, so that no two classes merge into one."""
    folded = [" ".join(k.split()).casefold() for k in vocab.keywords]
    return [keyword if folded.count(f) == 1 else token
            for token, keyword, f in zip(vocab.tokens, vocab.keywords, folded, strict=True)]


def vocab_token_ids(tokenizer, vocab: AttributeVocab, model: str) -> list[int]:
    """Ids of the vocabulary's tokens in the model's tokenizer; a token it lacks is an error naming the token, the
    vocabulary file and the model (instead of a ``None`` id failing deep inside torch)."""
    known = tokenizer.get_vocab()
    missing = [t for t in vocab.tokens if t not in known]
    if missing:
        shown = ", ".join(missing[:8]) + (" …" if len(missing) > 8 else "")
        raise AttTokError(f"{vocab.where(missing[0])}: attribute token(s) {shown} are not in the tokenizer of "
                          f"{model}: it was trained with another vocabulary; pass that one, or leave --vocab out to "
                          "use the vocabulary saved with the model")
    return [known[t] for t in vocab.tokens]


def output_paths(out: str | Path) -> dict[str, Path]:
    """Every file `attok predict` writes for ``--out``: rows, rows in progress, confusion matrix, metrics."""
    out = Path(out)
    return {"rows": out, "partial": out.with_name(out.name + ".partial"),
            "confusion": out.with_suffix(".confusion.png"), "metrics": out.with_suffix(".metrics.json")}


def _same_bytes(a: str, b: str) -> bool:
    """Two files with the same content (a copy of the test split given as the validation split)."""
    try:
        return Path(a).stat().st_size == Path(b).stat().st_size and Path(a).read_bytes() == Path(b).read_bytes()
    except OSError:
        return False


def _check_request(out: str | Path, inputs: dict[str, str | None], mode: str, top_k: int, batch_size: int,
                   overwrite: bool = False, device: str | None = None) -> None:
    """Everything that can be refused before a dataset is read or the model loaded."""
    if mode not in MODES:
        raise AttTokError(f"unknown mode {mode!r}; choose {', '.join(MODES)}")
    for option, why in (("--val-dataset", "fits the temperature of the attribute-token probabilities"),
                        ("--vocab", "names the attribute tokens whose probabilities are read")):
        if mode != "attribute" and inputs.get(option):
            raise AttTokError(f"{option} {why} (--mode attribute); --mode {mode} reads each class's answer from "
                              f"--dataset and has no use for it: leave {option} out")
    for option, value in (("--top-k", top_k), ("--batch-size", batch_size)):
        if value < 1:
            raise AttTokError(f"{option} {value}: must be at least 1")
    refuse_outputs_over_reads(output_paths(out).values(), out, inputs,
                              {k: v for k, v in inputs.items() if k in ("--dataset", "--val-dataset")})
    for role, path in output_paths(out).items():  # every file it writes, not only --out itself
        if role != "partial":
            output_file(path, "--out" if role == "rows" else f"--out's {role} file", overwrite)
        else:
            check_partial_rows(path, overwrite)
    dataset, val = inputs.get("--dataset"), inputs.get("--val-dataset")
    if dataset and val and (same_file(dataset, val) or _same_bytes(dataset, val)):
        raise AttTokError(f"--val-dataset {val} is --dataset (or a copy of it): the temperature would be fitted "
                          "on the very samples it scores; give a validation split (e.g. *_open_val.json) or leave "
                          "--val-dataset out")
    shared = dataset_images(dataset) & dataset_images(val) if dataset and val else set()
    if shared:
        raise AttTokError(f"--val-dataset {val} shares {len(shared)} image(s) with --dataset {dataset} (e.g. "
                          f"{sorted(shared)[0]}; the close-ended twin of a test split holds the same images): the "
                          "temperature would be fitted on images it then scores; give the validation split")
    if device is not None:
        check_device(device)
    check_model_folders(inputs["--model"] or "", inputs.get("--adapter"))


ROW_KEYS = {"id", "label", "prediction", "top_k", "probabilities"}  # what every row of :func:`_rows` holds


def check_partial_rows(path: Path, overwrite: bool) -> None:
    """``<out>.partial`` holds an interrupted `attok predict`'s rows (kept after a crash): it is replaced, with a
    note, when every line is such a row (the last one may be cut, after a whole one); a file of anything else is
    not ours — refused unless ``overwrite``."""
    refuse_symlink(path, "--out's partial rows file")
    if not path.exists():
        return
    if path.is_dir():
        raise AttTokError(f"--out's partial rows file {path} is a folder; move it away or choose another --out")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        ours = all(_is_row(line) for line in lines[:-1]) and (not lines or _is_row(lines[-1], cut_ok=len(lines) > 1))
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours and not overwrite:
        raise AttTokError(f"{path} exists and does not hold the rows of an interrupted `attok predict` (where it "
                          "keeps its rows in progress): move it away, choose another --out, or pass --overwrite "
                          "to replace it")
    print(f"attok: {path}: {'the rows of an interrupted run' if ours else 'replaced (--overwrite)'}; "
          "this run writes its own", file=sys.stderr)


def _is_row(line: str, cut_ok: bool = False) -> bool:
    try:
        row = json.loads(line)
    except ValueError:  # the line being written when the run was killed: the start of a row
        return cut_ok and line.startswith('{"id": ')
    return isinstance(row, dict) and ROW_KEYS <= row.keys()


MODES = ("attribute", "likelihood", "answer")


def class_answers(samples: list[Sample], names: list[str], dataset: str) -> list[str]:
    """Each class's answer as the dataset writes it (``--mode answer``): "<|xray_pneumonia|> pneumonia" in an AttTok
    dataset, "pneumonia" in a vanilla one. One answer per class, else an error naming two samples that differ."""
    answer_of: dict[str, tuple[str, int]] = {}
    for sample in samples:
        answer = sample.example["_response"][0]["content"]
        first = answer_of.setdefault(str(sample.label), (answer, sample.index))
        if first[0] != answer:
            raise AttTokError(f"{dataset}: samples {first[1]} and {sample.index} have the label {sample.label!r} but "
                              f"the answers {first[0]!r} and {answer!r}; --mode answer scores one answer per class")
    return [answer_of[name][0] for name in names]


def _metrics(truth: list[int], predicted: list[int]) -> dict[str, float]:
    """Accuracy, macro-F1 and balanced accuracy (the mean per-class recall: a constant answer scores 1/K on it)."""
    return {"accuracy": float(accuracy_score(truth, predicted)),
            "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
            "balanced_accuracy": float(balanced_accuracy_score(truth, predicted))}


def per_class_metrics(truth: list[int], predicted: list[int], names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of every class (paper Table 7), by class name."""
    labels = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=labels,
                                                                     zero_division=0)
    return {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])} for i, name in enumerate(names)}


def confusion_png(truth: list[int], predicted: list[int], names: list[str], out: str | Path,
                  title: str = "") -> list[list[int]]:
    """Draw the confusion matrix (rows = truth, columns = prediction, class names as labels, counts in cells)
    to the PNG ``out``, written atomically; returns the matrix."""
    from .figures import confusion_figure  # matplotlib only when a figure is drawn

    confusion = confusion_matrix(truth, predicted, labels=list(range(len(names)))).tolist()
    confusion_figure(names, confusion, Path(out), title=title)
    return confusion


def resolve_template(saved, template: str | None) -> tuple[str, str | None]:
    """(template, default_system) the model was trained with (saved in ``attok_config.json``; ``saved``:
    :func:`saved_run`); a ``template`` that differs from the saved one is an error naming both. Without a saved
    one: ``template`` or qwen2_vl."""
    config = saved.config if saved is not None else {}
    trained = config.get("template")
    if template and trained and template != trained:
        raise AttTokError(f"--template {template} differs from the template {trained!r} that {saved.folder} was "
                          f"trained with (attok_config.json): its prompts would not be the training prompts; "
                          f"use --template {trained} or leave it out")
    return template or trained or "qwen2_vl", config.get("default_system")


class _RowWriter:
    """JSONL rows appended as they are scored to ``<out>.partial`` (flushed per batch), renamed to ``out`` at the
    end: a crash halfway keeps every row scored so far; a finished file is complete."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.partial = output_paths(out)["partial"]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.partial.unlink(missing_ok=True)  # a new file: never written through a hard link to another one
        self.handle = open(self.partial, "x", encoding="utf-8")  # noqa: SIM115 - closed in finish()

    def write(self, rows: list[dict]) -> None:
        self.handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        self.handle.flush()

    def finish(self) -> None:
        self.handle.close()
        write_atomic(self.out, self.partial.read_text(encoding="utf-8"))
        self.partial.unlink()


def _rows(samples, probs, truth, names, top_k, retrieval) -> list[dict]:
    rows = []
    for i, sample in enumerate(samples):
        order = probs[i].argsort(descending=True)[:top_k].tolist()
        row = {"id": sample.index, "label": names[truth[i]], "prediction": names[int(probs[i].argmax())],
               "top_k": [[names[j], round(float(probs[i, j]), 6)] for j in order],
               "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs[i].tolist(), strict=True)}}
        if retrieval is not None:
            row["retrieval"] = names[retrieval[i]]
        rows.append(row)
    return rows


class _ScoringOptions(TypedDict):
    """The keyword arguments every scoring call of :func:`run_predict` shares."""

    device: str
    template: str | None
    default_system: str | None


def run_predict(model_path: str, dataset: str, out: str, *, adapter: str | None = None, vocab_path: str | None = None,
                val_dataset: str | None = None, mode: str = "attribute", top_k: int = 3, device: str = "cpu",
                batch_size: int = 8, template: str | None = None, overwrite: bool = False,
                workers: int = 0) -> dict:
    """Class probabilities per sample; the datasets are checked before the model is loaded.

    Prompts are the training prompts (LF's template; by default the one saved with the model). A sample whose
    image is missing or unreadable is reported by id on stderr, skipped and counted (``skipped``). Writes ``out``
    (JSONL, rows appended as they are scored), ``<out>.confusion.png`` and, last, ``<out>.metrics.json`` (with
    ``per_class`` and ``confusion``, rows = truth, columns = prediction, in the order of ``per_class``).
    ``workers``: DataLoader processes that decode and encode the next batches while the model runs."""
    _check_request(out, {"--dataset": dataset, "--val-dataset": val_dataset, "--vocab": vocab_path,
                         "--model": model_path, "--adapter": adapter}, mode, top_k, batch_size, overwrite, device)
    samples, skipped = read_samples_skipping(dataset, require_token=mode == "attribute")
    for item in skipped:
        print(f"attok predict: skipped {item['error']}", file=sys.stderr)
    if not samples:
        raise AttTokError(f"{dataset}: every sample was skipped (missing or unreadable images); nothing to score")
    val = read_samples(val_dataset) if val_dataset and mode == "attribute" else None
    saved = saved_run(model_path, adapter)
    template, default_system = resolve_template(saved, template)
    if mode == "attribute":
        vocab = resolve_vocab(saved, vocab_path, adapter or model_path)
        for part in (samples, val or []):
            unknown = [s.index for s in part if s.label_token not in vocab.tokens]
            if unknown:
                raise AttTokError(f"{part[0].dataset}: samples {unknown[:5]} carry tokens outside the model's "
                                  "vocabulary")
        names = class_names(vocab)
        truth = [vocab.tokens.index(s.label_token) for s in samples]
    else:
        labels = [s.label for s in samples if s.label is not None]
        if len(labels) < len(samples):
            raise AttTokError(f"{dataset}: {mode} scoring needs each sample's `label` (class name)")
        names = list(dict.fromkeys(labels))
        truth = [names.index(label) for label in labels]
        answers = class_answers(samples, names, dataset) if mode == "answer" else names
        trained = len(saved.vocab) if saved is not None else None
        if trained is not None and len(names) < trained:
            print(f"attok predict: warning: {dataset} holds {len(names)} of the model's {trained} classes: --mode "
                  f"{mode} chooses among those {len(names)} only (the classes of the samples scored), an easier "
                  "choice than among all of them; --mode attribute chooses among all", file=sys.stderr)
    model, _, processor = load_model_for_inference(model_path, adapter, template)
    kwargs: _ScoringOptions = {"device": device, "template": template, "default_system": default_system}
    temperature = 1.0
    if mode == "attribute":
        token_ids = vocab_token_ids(processor.tokenizer, vocab, adapter or model_path)
        if val:
            val_logits, _ = first_answer_outputs(model, processor, val, token_ids, batch_size, workers=workers,
                                                 **kwargs)
            temperature = calibrate_temperature(val_logits, torch.tensor([vocab.tokens.index(s.label_token)
                                                                           for s in val]))
    writer = _RowWriter(out)
    predicted: list[int] = []
    retrieved: list[int] = []  # attribute mode: each sample's class by retrieval
    starts = range(0, len(samples), batch_size)
    outputs = iter_first_answer_outputs(model, processor, samples, token_ids, batch_size, workers=workers,
                                        **kwargs) if mode == "attribute" else None
    for start in progress(starts, desc=f"predict ({len(samples)} images)", unit="batch"):
        chunk, chunk_truth = samples[start:start + batch_size], truth[start:start + batch_size]
        if outputs is not None:
            logits, hidden = next(outputs)
            probs = torch.softmax(logits / temperature, dim=-1)
            retrieval = retrieval_scores(model, hidden, token_ids).argmax(-1).tolist()
            retrieved += retrieval
        else:
            probs = torch.softmax(likelihood_scores(model, processor, chunk, answers, show_progress=False, **kwargs),
                                  dim=-1)
            retrieval = None
        predicted += probs.argmax(-1).tolist()
        writer.write(_rows(chunk, probs, chunk_truth, names, top_k, retrieval))
    writer.finish()
    confusion = confusion_png(truth, predicted, names, output_paths(out)["confusion"],
                              title=f"{Path(dataset).stem} ({mode})")
    metrics = {"mode": mode, "template": template, "samples": len(samples), "skipped": len(skipped),
               "skipped_samples": skipped, "temperature": temperature, **_metrics(truth, predicted),
               "per_class": per_class_metrics(truth, predicted, names)}
    if mode == "attribute":
        metrics["retrieval_accuracy"] = _metrics(truth, retrieved)["accuracy"]
    metrics["confusion"] = confusion
    write_atomic(output_paths(out)["metrics"], json.dumps(metrics, indent=2) + "\n")
    return metrics


def summary_lines(metrics: dict, out: str | Path) -> list[str]:
    """What `attok predict` prints: a short human summary and the files it wrote (the numbers are in the files)."""
    per_class = metrics["per_class"]
    n = sum(entry["support"] for entry in per_class.values()) or 1
    majority_name, majority = max(per_class.items(), key=lambda kv: kv[1]["support"])
    lines = [
        f"scored {metrics['samples']} image(s) ({metrics['skipped']} skipped), mode {metrics['mode']}, template "
        f"{metrics['template']}",
        f"  accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   balanced accuracy "
        f"{metrics['balanced_accuracy']:.4f}   (always answering {majority_name!r}: accuracy "
        f"{majority['support'] / n:.4f}, balanced {1 / len(per_class):.4f})",
    ]
    if "retrieval_accuracy" in metrics:
        lines.append(f"  retrieval accuracy {metrics['retrieval_accuracy']:.4f} (the attribute token whose "
                     "output-head row is nearest, by cosine, to the hidden state before the answer: paper Table 6)")
    if metrics.get("temperature", 1.0) != 1.0:
        lines.append(f"  temperature {metrics['temperature']:.3f} (fitted on --val-dataset)")
    width = max(len(name) for name in per_class)
    lines.append(f"  {'class':<{width}}  support  precision  recall     F1")
    for name, entry in per_class.items():
        lines.append(f"  {name:<{width}}  {entry['support']:>7}  {entry['precision']:>9.3f}  {entry['recall']:>6.3f}"
                     f"  {entry['f1']:.3f}")
    paths = output_paths(out)
    lines.append(f"wrote {paths['rows']} (one row per image), {paths['metrics']} (metrics, per class, confusion "
                 f"matrix), {paths['confusion']}")
    return lines
