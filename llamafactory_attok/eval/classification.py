"""Classification scores from generated text: accuracy, macro-F1, per-class F1 (Table 7), confusion matrix (Fig. 7).

Reads LF's ``generated_predictions.jsonl`` (one line per sample of the predicted dataset, in order) and the
dataset JSON it was made from; the ids are the line numbers, checked against the dataset's answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from ..data.lf_format import read_json, read_jsonl
from ..errors import AttTokError
from ..vocab import AttributeVocab
from .normalize import normalize, parse_class

PREDICTION_KEYS = ("predict", "label")


@dataclass
class ClassScores:
    classes: list[str]
    accuracy: float
    macro_f1: float
    per_class_f1: dict[str, float]
    confusion: list[list[int]]
    unparseable: int
    total: int

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def class_names(dataset_rows: list[dict], vocab: AttributeVocab | None) -> tuple[list[str], list[list[str]]]:
    """Classes in first-seen order of the dataset's ``label`` field, with synonyms (vocabulary keyword)."""
    classes = list(dict.fromkeys(row["label"] for row in dataset_rows))
    synonyms = [[c] for c in classes]
    if vocab is not None:
        for row in dataset_rows:
            tokens = [t for t in vocab.tokens if t in row["messages"][1]["content"]]
            for token in tokens:
                keyword = vocab.as_dict()[token]
                group = synonyms[classes.index(row["label"])]
                if keyword not in group:
                    group.append(keyword)
    return classes, synonyms


def read_predictions(path: str | Path) -> list[dict]:
    """LF's ``generated_predictions.jsonl``: one object with string ``predict`` and ``label`` per line."""
    path = Path(path)
    rows = []
    for line, row in read_jsonl(path):
        missing = [k for k in PREDICTION_KEYS if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if missing:
            raise AttTokError(f"{path}: line {line}: a prediction needs the string field(s) {', '.join(missing)} "
                              "(as in LLaMA-Factory's generated_predictions.jsonl)")
        rows.append(row)
    if not rows:
        raise AttTokError(f"{path}: no predictions")
    return rows


def read_dataset(path: str | Path) -> list[dict]:
    """The sharegpt dataset JSON the predictions come from; each sample needs ``messages`` [user, assistant]."""
    rows = read_json(path)
    if not isinstance(rows, list):
        raise AttTokError(f"{path}: expected a JSON list of sharegpt samples, got {type(rows).__name__}")
    for index, row in enumerate(rows):
        turns = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(turns, list) or len(turns) < 2 or not all(
                isinstance(t, dict) and isinstance(t.get("content"), str) for t in turns[:2]):
            raise AttTokError(f"{path}: sample {index}: needs `messages` with a user and an assistant turn "
                              "(each with a string `content`)")
    return rows


def check_alignment(predictions: list[dict], dataset_rows: list[dict], where: str) -> None:
    """Same number of samples and, line by line, the same reference answer (after normalisation)."""
    if len(predictions) != len(dataset_rows):
        raise AttTokError(f"{where}: {len(predictions)} predictions for {len(dataset_rows)} dataset samples; "
                          "the predictions come from another dataset")
    for index, (pred, row) in enumerate(zip(predictions, dataset_rows, strict=True)):
        if normalize(pred["label"]) != normalize(row["messages"][1]["content"]):
            raise AttTokError(f"{where}: line {index + 1}: reference {pred['label'][:60]!r} does not match dataset "
                              f"sample {index} ({row['messages'][1]['content'][:60]!r}); ids do not match")


def score_generated(predictions_path: str | Path, dataset_json: str | Path,
                    vocab: AttributeVocab | None = None) -> ClassScores:
    predictions = read_predictions(predictions_path)
    rows = read_dataset(dataset_json)
    unlabelled = [i for i, row in enumerate(rows) if not isinstance(row.get("label"), str)]
    if unlabelled:
        raise AttTokError(f"{dataset_json}: sample {unlabelled[0]}: needs a string `label` field (written by "
                          "`attok data classify`)")
    check_alignment(predictions, rows, str(predictions_path))
    classes, synonyms = class_names(rows, vocab)
    truth = [classes.index(row["label"]) for row in rows]
    parsed = [parse_class(p["predict"], synonyms) for p in predictions]
    predicted = [-1 if p is None else p for p in parsed]  # unparseable: a class of its own, always wrong
    labels = list(range(len(classes)))
    per_class = f1_score(truth, predicted, labels=labels, average=None, zero_division=0)
    return ClassScores(
        classes=classes,
        accuracy=float(accuracy_score(truth, predicted)),
        macro_f1=float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)),
        per_class_f1={c: float(f) for c, f in zip(classes, per_class, strict=True)},
        confusion=confusion_matrix(truth, predicted, labels=[*labels, -1]).tolist()[: len(classes)],
        unparseable=int(sum(p is None for p in parsed)),
        total=len(rows),
    )


def arm_of(run: str) -> str:
    """``attok@2`` -> ``attok``: runs of one arm differ only by the ``@seed`` suffix."""
    return re.sub(r"@[^@]*$", "", run)


def mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0
