"""The two VQA scoring protocols, item by item, and their tallies (closed / open / overall, per-type breakdowns).

``paper`` (the paper's wording, §5.1): a closed yes/no question is right when the prediction's *first word* is
the reference; any other question when the normalised prediction equals the normalised reference. Only when that
fails does the LLM judge decide. Under both protocols a prediction that normalises to nothing is wrong, decided by
the rules (a judge is never asked about an empty answer).

``medevalkit`` (Lingshu's MedEvalKit, which most medical-VLM papers report): the answer is first taken out of
``\\boxed{…}``, ``<answer>…</answer>`` or the text after "answer:" / "answer is"; a closed yes/no question is right
when the first *yes/no word* of the prediction is the reference (``"The answer is yes"`` counts), another closed
question by exact match; *every* open question goes to the judge (with a MedEvalKit-style ``<judge>0/1</judge>``
prompt). Without a judge verdict an open question falls back to exact match (as MedEvalKit does when its judge
call fails) and is counted as such. Token F1 and BLEU-1 of open answers are reported either way.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from .normalize import normalize
from .text_metrics import bleu1, token_f1

YES_NO = ("yes", "no")
BREAKDOWN_FIELDS = ("content_type", "question_type")  # SLAKE, VQA-RAD
PROTOCOLS = ("paper", "medevalkit")
DESCRIPTION = {
    "paper": "paper: exact match after normalisation first (closed yes/no: first word); LLM judge only when that "
             "fails (the paper's wording)",
    "medevalkit": "medevalkit: closed yes/no by the first yes/no word, other closed by exact match; every open "
                  "question sent to the LLM judge (MedEvalKit); token F1 / BLEU-1 of open answers without a judge",
}


@dataclass(frozen=True)
class VqaItem:
    """One scored question: reference without attribute tokens, the model's text, its breakdown groups."""

    index: int
    question: str
    answer: str
    prediction: str
    closed: bool
    groups: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    correct: bool
    by: str  # "rules" | "judge" | "fallback" (open question without a judge verdict, medevalkit)


Ask = Callable[[VqaItem, str], "bool | None"]  # the judge's verdict on (item, prediction); None: no verdict


def exact_match(prediction: str, answer: str, closed: bool) -> bool:
    """The paper's rule: closed yes/no by the first word, everything else by equality after normalisation; an
    empty prediction (nothing left after normalisation) is wrong."""
    pred, ref = normalize(prediction), normalize(answer)
    if not pred:
        return False
    if closed and ref in YES_NO:
        return pred.split(" ")[:1] == [ref]
    return pred == ref


def paper_verdict(item: VqaItem, ask: Ask) -> Verdict:
    if not normalize(item.prediction):  # nothing to judge: wrong, without asking the judge
        return Verdict(False, "rules")
    if exact_match(item.prediction, item.answer, item.closed):
        return Verdict(True, "rules")
    verdict = ask(item, item.prediction)
    return Verdict(False, "rules") if verdict is None else Verdict(verdict, "judge")


def extract_answer(text: str) -> str:
    """The answer part of a reply, the way MedEvalKit parses it (boxed, answer tags, "answer:" / "answer is")."""
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    if boxed:
        return boxed[-1]
    tagged = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if tagged:
        return " ".join(tagged)
    parts = re.split(r"answer is|answer\s*:", text, flags=re.IGNORECASE)
    return parts[-1] if len(parts) > 1 else text


def first_yes_no(text: str) -> str | None:
    return next((word for word in normalize(text).split() if word in YES_NO), None)


def medevalkit_verdict(item: VqaItem, ask: Ask) -> Verdict:
    prediction = extract_answer(item.prediction)
    reference = normalize(item.answer)
    if not normalize(prediction):  # an empty answer is wrong, whatever a judge would say
        return Verdict(False, "rules")
    if item.closed:
        if reference in YES_NO:
            return Verdict(first_yes_no(prediction) == reference, "rules")
        return Verdict(normalize(prediction) == reference, "rules")
    verdict = ask(item, prediction)
    if verdict is None:
        return Verdict(normalize(prediction) == reference, "fallback")
    return Verdict(verdict, "judge")


VERDICT = {"paper": paper_verdict, "medevalkit": medevalkit_verdict}


def _accuracy(correct: int, n: int) -> float | None:
    return correct / n if n else None


def _counts(pairs: list[tuple[VqaItem, Verdict]]) -> dict:
    closed = [v.correct for i, v in pairs if i.closed]
    opened = [v.correct for i, v in pairs if not i.closed]
    return {"n": len(pairs), "accuracy": _accuracy(sum(closed) + sum(opened), len(pairs)),
            "closed": {"n": len(closed), "correct": sum(closed), "accuracy": _accuracy(sum(closed), len(closed))},
            "open": {"n": len(opened), "correct": sum(opened), "accuracy": _accuracy(sum(opened), len(opened))}}


def breakdowns(pairs: list[tuple[VqaItem, Verdict]]) -> dict[str, dict[str, dict]]:
    """``by_<field>``: value -> counts, for each breakdown field the dataset has (SLAKE, VQA-RAD)."""
    result = {}
    for name in BREAKDOWN_FIELDS:
        groups: dict[str, list] = defaultdict(list)
        for item, verdict in pairs:
            if name in item.groups:
                groups[item.groups[name]].append((item, verdict))
        if groups:
            result[f"by_{name}"] = {value: _counts(group) for value, group in sorted(groups.items())}
    return result


def open_text_scores(items: list[VqaItem]) -> dict[str, float | None]:
    """Mean token F1, BLEU-1 and exact match of the (extracted) answers to open questions."""
    pairs = [(extract_answer(i.prediction), i.answer) for i in items]
    if not pairs:
        return {"f1": None, "bleu1": None, "exact_match": None}
    return {"f1": sum(token_f1(p, a) for p, a in pairs) / len(pairs),
            "bleu1": sum(bleu1(p, a) for p, a in pairs) / len(pairs),
            "exact_match": sum(normalize(p) == normalize(a) for p, a in pairs) / len(pairs)}


def tally(items: list[VqaItem], verdicts: list[Verdict], protocol: str) -> dict:
    """Closed / open / overall accuracy (Table 2's columns), who decided, per-type breakdowns; for
    ``medevalkit`` also the mean token F1, BLEU-1 and exact match of open answers."""
    pairs = list(zip(items, verdicts, strict=True))
    counts = _counts(pairs)
    scores = {"protocol": DESCRIPTION[protocol], "closed_accuracy": counts["closed"]["accuracy"],
              "open_accuracy": counts["open"]["accuracy"], "accuracy": counts["accuracy"],
              "counts": {k: {"n": counts[k]["n"], "correct": counts[k]["correct"]} for k in ("closed", "open")},
              "decided_by_rules": sum(v.by == "rules" for v in verdicts),
              "decided_by_judge": sum(v.by == "judge" for v in verdicts)}
    if protocol == "medevalkit":
        scores["open_without_judge_verdict"] = sum(v.by == "fallback" for v in verdicts)
        scores["open_text"] = open_text_scores([i for i in items if not i.closed])
    return {**scores, **breakdowns(pairs)}
