"""Judge-free text overlap for open VQA answers, as MedEvalKit reports them next to its judged accuracy.

Both work on the words of :func:`~llamafactory_attok.eval.normalize.normalize` (attribute tokens removed,
lowercase, punctuation as spaces), so ``"Liver."`` and ``"liver"`` are the same answer.
"""

from __future__ import annotations

import math
from collections import Counter

from .normalize import normalize


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the *sets* of words (MedEvalKit's ``calculate_f1``); 0 when either side has no word."""
    pred, ref = set(normalize(prediction).split()), set(normalize(reference).split())
    common = len(pred & ref)
    if not pred or not ref or not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def bleu1(prediction: str, reference: str) -> float:
    """Sentence BLEU-1 against one reference: clipped unigram precision times the brevity penalty
    ``exp(1 - r/c)`` when the prediction (c words) is shorter than the reference (r words) — what NLTK's
    ``sentence_bleu([ref], pred, weights=(1,))`` gives (MedEvalKit's ``bleu1``)."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return 0.0
    clipped = sum((Counter(pred) & Counter(ref)).values())
    penalty = 1.0 if len(pred) > len(ref) else math.exp(1 - len(ref) / len(pred))
    return penalty * clipped / len(pred)
