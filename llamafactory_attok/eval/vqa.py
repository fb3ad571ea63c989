"""VQA scoring (paper §5.1): closed (yes/no) and open accuracy. Exact match after normalisation decides first;
when it fails, an LLM judge (any OpenAI-compatible endpoint, temperature 0, prompt from a file, replies cached by
(question, answer, prediction)) decides. The report counts what the rules and the judge decided and lists every
judge failure; with the judge endpoint down, scores are rules-only and flagged."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ValidationError
from tqdm import tqdm

from ..data.lf_format import read_json
from ..errors import AttTokError
from .classification import check_alignment, read_dataset, read_predictions
from .normalize import normalize

DEFAULT_PROMPT = Path(__file__).with_name("judge_prompt.txt")


class JudgeReply(BaseModel):
    correct: bool


@dataclass
class Judge:
    client: object  # openai.OpenAI
    model: str
    prompt: str
    cache_path: Path
    cache: dict[str, bool] = field(default_factory=dict)
    unavailable: str | None = None

    def __post_init__(self) -> None:
        if self.cache_path.exists():
            self.cache = read_json(self.cache_path)

    def decide(self, question: str, answer: str, prediction: str) -> bool:
        """True/False, or raises ValueError for a malformed reply; sets ``unavailable`` when the endpoint is down."""
        import openai

        from ..data.lf_format import write_atomic

        key = hashlib.sha256(json.dumps([question, answer, prediction]).encode()).hexdigest()
        if key in self.cache:
            return self.cache[key]
        text = self.prompt.format(question=question, answer=answer, prediction=prediction)
        try:
            reply = self.client.chat.completions.create(model=self.model, temperature=0,
                                                        messages=[{"role": "user", "content": text}])
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            self.unavailable = f"{type(err).__name__}: {err}"
            raise
        content = reply.choices[0].message.content or ""
        match = re.search(r"\{.*\}", content, re.DOTALL)
        try:
            verdict = JudgeReply.model_validate_json(match.group(0) if match else content).correct
        except ValidationError as err:
            raise ValueError(f"malformed judge reply {content[:80]!r}") from err
        self.cache[key] = verdict
        write_atomic(self.cache_path, json.dumps(self.cache, indent=1))
        return verdict


def exact_match(prediction: str, answer: str, closed: bool) -> bool:
    pred, ref = normalize(prediction), normalize(answer)
    if closed and ref in ("yes", "no"):
        return pred.split(" ")[:1] == [ref]
    return pred == ref


def score_vqa(predictions_path: str | Path, dataset_json: str | Path, judge: Judge | None) -> dict:
    import openai

    predictions = read_predictions(predictions_path)
    rows = read_dataset(dataset_json)
    check_alignment(predictions, rows, str(predictions_path))
    if any("answer_type" not in row for row in rows):
        raise AttTokError(f"{dataset_json}: samples need `answer_type` (closed/open), as `attok data vqa-rad` writes")
    totals = {kind: {"n": 0, "correct": 0} for kind in ("closed", "open")}
    by_rules = by_judge = 0
    failures: list[dict] = []
    for index, (pred, row) in enumerate(tqdm(list(zip(predictions, rows, strict=True)), desc="VQA scoring")):
        kind = "closed" if row["answer_type"] == "closed" else "open"
        question = row["messages"][0]["content"].replace("<image>", "").strip()
        answer = re.sub(r"<\|[^|<>]*\|>", "", row["messages"][1]["content"]).strip()
        correct = exact_match(pred["predict"], answer, kind == "closed")
        if correct:
            by_rules += 1
        elif judge is not None and judge.unavailable is None:
            try:
                correct = judge.decide(question, answer, pred["predict"])
                by_judge += 1
            except (ValueError, openai.APIError) as err:
                failures.append({"id": index, "error": str(err)})
        totals[kind]["n"] += 1
        totals[kind]["correct"] += int(correct)
    accuracy = {k: (v["correct"] / v["n"] if v["n"] else None) for k, v in totals.items()}
    n = sum(v["n"] for v in totals.values())
    return {
        "closed_accuracy": accuracy["closed"], "open_accuracy": accuracy["open"],
        "accuracy": sum(v["correct"] for v in totals.values()) / n, "counts": totals,
        "decided_by_rules": by_rules, "decided_by_judge": by_judge, "judge_failures": failures,
        "judge": "none" if judge is None else (f"unavailable ({judge.unavailable}); scores are rules-only"
                                               if judge.unavailable else judge.model),
        "protocol": "exact match after normalisation first; LLM judge only when that fails (the paper's wording)",
    }
