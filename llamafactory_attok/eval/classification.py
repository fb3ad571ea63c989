"""Classification scores from generated text: accuracy, macro-F1, per-class F1 (Table 7), confusion matrix (Fig. 7).

Reads LF's ``generated_predictions.jsonl`` (one line per sample of the predicted dataset, in order) and the
dataset JSON it was made from; the ids are the line numbers, checked against the dataset's answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from ..errors import AttTokError
from ..vocab import AttributeVocab
from .normalize import normalize, parse_class


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
    path = Path(path)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise AttTokError(f"{path}: no predictions")
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
    rows = json.loads(Path(dataset_json).read_text(encoding="utf-8"))
    if any("label" not in row for row in rows):
        raise AttTokError(f"{dataset_json}: samples need a `label` field (written by `attok data classify`)")
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


def mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0
