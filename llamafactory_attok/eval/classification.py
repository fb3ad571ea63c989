"""Classification scores from generated text: accuracy, macro-F1, per-class F1 (Table 7), confusion matrix (Fig. 7).

Reads LF's ``generated_predictions.jsonl`` (one line per sample of the predicted dataset, in order) and the
dataset JSON it was made from, aligned by position and checked against the dataset's answers; the ids listed in
the result are 0-based sample positions (the dataset's sample index, the n-th prediction).

Two readings of each generation: by its *text* (the top-level fields, unchanged) and, for AttTok models, by its
first *attribute token* (``by_token``), with their ``agreement``. Token scoring needs the tokens in the file:
LF's ``skip_special_tokens`` (true by default) removes them, so predict with ``skip_special_tokens: false``.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.lf_format import read_json, read_jsonl
from ..errors import AttTokError
from ..extras import missing_extra
from ..vocab import AttributeVocab, tokens_in_text
from .normalize import class_tokens, normalize, parse_class

try:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
except ImportError as err:  # the `eval` extra
    raise missing_extra("scikit-learn", "eval", "scoring (attok eval classify)") from err

PREDICTION_KEYS = ("predict", "label")
LISTED_IDS = 50  # disagree_ids / multi_token_ids list at most this many sample ids (the counts are complete)
TOKEN_UNAVAILABLE = "unavailable: predictions carry no attribute tokens"
# why, from what the predictions show: other special tokens kept (so none were skipped), or no <|…|> text at all
NO_TOKEN_WRITTEN = ("they keep other special tokens ({seen}), so special tokens were not skipped: the model wrote "
                    "no attribute token")
NO_SPECIAL_AT_ALL = ("no <|…|> token appears in any prediction: either do_predict removed special tokens "
                     "(skip_special_tokens: true, LF's default; set it false to score by token) or the model wrote "
                     "none")
SPECIAL_TEXT = re.compile(r"<\|[^<>|\s]+\|>")
TOKEN_NOT_APPLICABLE = ("not applicable: no attribute token identifies a class of this dataset (its answers carry "
                        "none and no vocabulary was given)")


@dataclass
class ClassScores:
    classes: list[str]
    accuracy: float
    macro_f1: float
    balanced_accuracy: float
    per_class_f1: dict[str, float]
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    unparseable: int
    total: int
    token_scoring: str = TOKEN_NOT_APPLICABLE  # "available", or why by_token / agreement are null
    by_token: dict | None = None
    agreement: dict | None = None

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class TokenMap:
    """Attribute tokens of a dataset: ``classes`` token → class index (tokens that identify one class) and
    ``known`` every attribute token of the answers and the vocabulary (class tokens or not)."""

    classes: dict[str, int] = field(default_factory=dict)
    known: frozenset[str] = frozenset()


def token_map(dataset_rows: list[dict], classes: list[str], vocab: AttributeVocab | None,
              where: str = "dataset") -> TokenMap:
    """Token → class: a token in the answers of one class only is that class's token (a token shared by several
    classes, e.g. a modality token, identifies none); a vocabulary token in no answer maps through its keyword
    to the class of that label (or keyword). A vocabulary token that maps to no class is an error."""
    seen: dict[str, set[int]] = {}
    for row in dataset_rows:
        for token in tokens_in_text(row["messages"][1]["content"]):
            seen.setdefault(token, set()).add(classes.index(row["label"]))
    mapping = {t: next(iter(c)) for t, c in seen.items() if len(c) == 1}
    if vocab is None:
        return TokenMap(mapping, frozenset(seen))
    keywords = vocab.as_dict()
    names = {normalize(c): i for i, c in enumerate(classes)}
    names.update({normalize(keywords[t]): i for t, i in mapping.items() if t in keywords})
    for token, keyword in keywords.items():
        if token in seen:
            continue
        if normalize(keyword) not in names:
            shown = ", ".join(repr(c) for c in classes[:8]) + (" …" if len(classes) > 8 else "")
            raise AttTokError(
                f"{where}: vocabulary token {token} ({keyword!r}) maps to no class of the dataset: it is in no "
                f"answer and its keyword is no class label ({shown}); pass this dataset's vocabulary, or leave "
                "--vocab out to map tokens by the dataset's answers alone")
        mapping[token] = names[normalize(keyword)]
    return TokenMap(mapping, frozenset(seen) | frozenset(keywords))


def class_names(dataset_rows: list[dict], vocab: AttributeVocab | None,
                where: str = "dataset") -> tuple[list[str], list[list[str]]]:
    """Classes in first-seen order of the dataset's ``label`` field, with synonyms (vocabulary keyword of each
    class token)."""
    classes = list(dict.fromkeys(row["label"] for row in dataset_rows))
    return classes, _synonyms(classes, token_map(dataset_rows, classes, vocab, where), vocab)


def _synonyms(classes: list[str], tokens: TokenMap, vocab: AttributeVocab | None) -> list[list[str]]:
    """Each class's names: its label, plus its token's vocabulary keyword unless that keyword belongs to several
    classes (it would make a correct answer match two classes: unparseable); those are named in a note."""
    synonyms = [[c] for c in classes]
    keywords = vocab.as_dict() if vocab is not None else {}
    owners: dict[str, set[int]] = defaultdict(set)
    for token, index in tokens.classes.items():
        if token in keywords:
            owners[" ".join(keywords[token].split()).casefold()].add(index)
    shared = sorted(k for k, classes_of in owners.items() if len(classes_of) > 1)
    if shared:
        print(f"attok: note: vocabulary keyword(s) {', '.join(repr(k) for k in shared)} belong to several classes; "
              "they are not used as class synonyms (a correct answer would match two classes)", file=sys.stderr)
    for token, index in tokens.classes.items():
        keyword = keywords.get(token)
        if keyword and " ".join(keyword.split()).casefold() not in shared and keyword not in synonyms[index]:
            synonyms[index].append(keyword)
    return synonyms


def _is_dataset(path: Path) -> bool:
    """The whole file is one JSON array of samples with `messages` (a dataset given as predictions)."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "messages" in data[0]


def read_predictions(path: str | Path) -> list[dict]:
    """LF's ``generated_predictions.jsonl``: one object with string ``predict`` and ``label`` per line."""
    path = Path(path)
    rows: list[dict] = []
    if path.is_file() and path.read_bytes()[:1] == b"[" and _is_dataset(path):
        raise AttTokError(f"{path}: a sharegpt dataset (a JSON array of samples with `messages`), not LF's "
                          "generated_predictions.jsonl (one JSON object with `predict` and `label` per line, written "
                          "by do_predict with predict_with_generate)")
    for line, row in read_jsonl(path):
        if isinstance(row, dict) and "top_k" in row and "probabilities" in row:
            raise AttTokError(f"{path}: rows of `attok predict` (one forward, no generated text): their metrics "
                              "are already in <out>.metrics.json; `attok eval classify` scores LF's generated text")
        missing = [k for k in PREDICTION_KEYS if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if missing or not isinstance(row, dict):  # not a dict: every key is missing
            found = (f"got a JSON {type(row).__name__}, not an object" if not isinstance(row, dict) else
                     "; ".join(f"{k} is {'missing' if k not in row else type(row[k]).__name__}" for k in missing))
            raise AttTokError(f"{path}: line {line}: a prediction needs the string field(s) {', '.join(missing)} "
                              f"(as in LLaMA-Factory's generated_predictions.jsonl); {found}")
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


def _scores(truth: list[int], predicted: list[int], classes: list[str]) -> dict:
    """Accuracy, macro-F1, balanced accuracy (mean per-class recall) and per-class precision / recall / F1 /
    support over ``classes``; -1 (no answer) is a class of its own, always wrong. ``confusion``: rows = truth,
    columns = ``classes`` then the no-answer column."""
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=labels,
                                                                     zero_division=0)
    return {"accuracy": float(accuracy_score(truth, predicted)),
            "macro_f1": float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)),
            "balanced_accuracy": float(np.mean(recall)),
            "per_class_f1": {c: float(v) for c, v in zip(classes, f1, strict=True)},
            "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                              "support": int(support[i])} for i, c in enumerate(classes)},
            "confusion": confusion_matrix(truth, predicted, labels=[*labels, -1]).tolist()[: len(classes)]}


def agreement(by_token: list[int | None], by_text: list[int | None]) -> dict:
    """How the token reading and the text reading of each generation relate (ids: dataset sample indices)."""
    pairs = list(zip(by_token, by_text, strict=True))
    disagree = [i for i, (t, x) in enumerate(pairs) if t is not None and x is not None and t != x]
    return {"both_agree": sum(t is not None and t == x for t, x in pairs),
            "disagree": len(disagree),
            "disagree_ids": disagree[:LISTED_IDS],
            "token_only": sum(t is not None and x is None for t, x in pairs),
            "text_only": sum(t is None and x is not None for t, x in pairs),
            "neither": sum(t is None and x is None for t, x in pairs)}


def score_generated(predictions_path: str | Path, dataset_json: str | Path,
                    vocab: AttributeVocab | None = None) -> ClassScores:
    """Text scores (top-level fields) and, where the dataset has class tokens, token scores (``by_token``) and
    the ``agreement`` of the two. ``token_scoring`` says "available" or why those two are null; when the
    predictions carry no attribute token at all, a note goes to stderr as well."""
    predictions = read_predictions(predictions_path)
    rows = read_dataset(dataset_json)
    unlabelled = [i for i, row in enumerate(rows) if not isinstance(row.get("label"), str)]
    if unlabelled:
        raise AttTokError(f"{dataset_json}: sample {unlabelled[0]}: needs a string `label` field (written by "
                          "`attok data classify`)")
    check_alignment(predictions, rows, str(predictions_path))
    classes = list(dict.fromkeys(row["label"] for row in rows))
    tokens = token_map(rows, classes, vocab, str(dataset_json))
    synonyms = _synonyms(classes, tokens, vocab)
    truth = [classes.index(row["label"]) for row in rows]
    parsed = [parse_class(p["predict"], synonyms) for p in predictions]
    text = _scores(truth, [-1 if p is None else p for p in parsed], classes)  # unparseable: own column
    scores = ClassScores(classes=classes, unparseable=int(sum(p is None for p in parsed)), total=len(rows), **text)
    if not tokens.classes:
        return scores
    if not any(set(tokens_in_text(p["predict"])) & tokens.known for p in predictions):
        scores.token_scoring = f"{TOKEN_UNAVAILABLE}: {_why_no_token(predictions)}"
        print(f"attok: note: {predictions_path}: token scoring {scores.token_scoring}", file=sys.stderr)
        return scores
    found = [class_tokens(p["predict"], tokens.classes) for p in predictions]
    first = [f[0] if f else None for f in found]
    multi = [i for i, f in enumerate(found) if len(set(f)) > 1]
    scores.token_scoring = "available"
    scores.by_token = {**_scores(truth, [-1 if f is None else f for f in first], classes),
                       "no_token": sum(f is None for f in first), "multi_token": len(multi),
                       "multi_token_ids": multi[:LISTED_IDS]}
    scores.agreement = agreement(first, parsed)
    return scores


def _why_no_token(predictions: list[dict]) -> str:
    """The hint that follows from the predictions themselves (never a guess about a setting they disprove)."""
    seen = sorted({m for p in predictions for m in SPECIAL_TEXT.findall(p["predict"])})
    return NO_TOKEN_WRITTEN.format(seen=", ".join(seen[:3])) if seen else NO_SPECIAL_AT_ALL


def arm_of(run: str) -> str:
    """``attok@2`` -> ``attok``: runs of one arm differ only by the ``@seed`` suffix."""
    return re.sub(r"@[^@]*$", "", run)


def mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0
