"""VQA scoring (paper §5.1, Table 2): closed, open and overall accuracy under two protocols side by side — the
paper's (exact match first, LLM judge only when it fails) and MedEvalKit's (every open question judged); see
:mod:`.vqa_protocols`. The judge is any OpenAI-compatible endpoint (temperature 0, prompt from a file, replies
cached by (judge model, prompt, question, answer, prediction), one cache per protocol). The result counts what the
rules and the judge decided and lists every judge failure; with the judge endpoint down, scores are rules-only and
flagged."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError
from tqdm import tqdm

from ..data.lf_format import read_json
from ..errors import AttTokError
from .classification import check_alignment, read_dataset, read_predictions
from .normalize import normalize
from .vqa_protocols import BREAKDOWN_FIELDS, PROTOCOLS, VERDICT, VqaItem, tally

if TYPE_CHECKING:
    import openai  # the eval extra; imported where the judge runs

DEFAULT_PROMPT = Path(__file__).with_name("judge_prompt.txt")
MEDEVALKIT_PROMPT = Path(__file__).with_name("judge_prompt_medevalkit.txt")
ATTRIBUTE_TOKEN = re.compile(r"<\|[^|<>]*\|>")


class JudgeReply(BaseModel):
    correct: bool


def parse_verdict(content: str) -> bool:
    """``<judge>0</judge>`` (MedEvalKit: 0 = correct, 1 = wrong) or ``{"correct": true|false}``; else ValueError."""
    tag = re.search(r"<judge>\s*([01])\s*</judge>", content)
    if tag:
        return tag.group(1) == "0"
    match = re.search(r"\{.*\}", content, re.DOTALL)
    try:
        return JudgeReply.model_validate_json(match.group(0) if match else content).correct
    except ValidationError as err:
        raise ValueError(f"malformed judge reply {content[:80]!r}") from err


@dataclass
class Judge:
    client: openai.OpenAI
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

        # the judge model and its prompt are part of the key: another judge's verdicts are never reused
        key = hashlib.sha256(json.dumps([self.model, self.prompt, question, answer, prediction]).encode()).hexdigest()
        if key in self.cache:
            return self.cache[key]
        text = self.prompt.format(question=question, answer=answer, prediction=prediction)
        try:
            reply = self.client.chat.completions.create(model=self.model, temperature=0,
                                                        messages=[{"role": "user", "content": text}])
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            self.unavailable = f"{type(err).__name__}: {err}"
            raise
        verdict = parse_verdict(reply.choices[0].message.content or "")
        self.cache[key] = verdict
        write_atomic(self.cache_path, json.dumps(self.cache, indent=1))
        return verdict


def load_items(predictions_path: str | Path, dataset_json: str | Path) -> list[VqaItem]:
    """Predictions aligned with the dataset line by line; each sample needs ``answer_type`` (closed/open)."""
    predictions = read_predictions(predictions_path)
    rows = read_dataset(dataset_json)
    check_alignment(predictions, rows, str(predictions_path))
    untyped = [i for i, row in enumerate(rows) if row.get("answer_type") not in ("closed", "open")]
    if untyped:
        raise AttTokError(f"{dataset_json}: sample {untyped[0]}: needs `answer_type` closed or open, as `attok data "
                          "vqa-rad` / `slake` / `pathvqa` write")
    answers = [ATTRIBUTE_TOKEN.sub("", row["messages"][1]["content"]).strip() for row in rows]
    empty = [i for i, answer in enumerate(answers) if not normalize(answer)]
    if empty:
        raise AttTokError(f"{dataset_json}: sample(s) {', '.join(map(str, empty[:10]))}"
                          f"{' …' if len(empty) > 10 else ''}: the reference answer is empty (no letter or digit "
                          "once attribute tokens are removed); it cannot be scored: remove those samples")
    return [VqaItem(index, row["messages"][0]["content"].replace("<image>", "").strip(),
                    answers[index], pred["predict"],
                    row["answer_type"] == "closed",
                    {k: str(row[k]).strip() for k in BREAKDOWN_FIELDS if row.get(k) is not None})
            for index, (pred, row) in enumerate(zip(predictions, rows, strict=True))]


def _judge_state(judge: Judge | None) -> str:
    if judge is None:
        return "none"
    return f"unavailable ({judge.unavailable}); scores are rules-only" if judge.unavailable else judge.model


def _score(items: list[VqaItem], protocol: str, judge: Judge | None) -> dict:
    import openai

    failures: list[dict] = []

    def ask(item: VqaItem, prediction: str) -> bool | None:
        if judge is None or judge.unavailable is not None:
            return None
        try:
            return judge.decide(item.question, item.answer, prediction)
        except (ValueError, openai.APIError) as err:
            failures.append({"id": item.index, "error": str(err)})
            return None

    verdicts = [VERDICT[protocol](item, ask) for item in tqdm(items, desc=f"VQA scoring ({protocol})")]
    return {**tally(items, verdicts, protocol), "judge": _judge_state(judge), "judge_failures": failures}


def score_vqa(predictions_path: str | Path, dataset_json: str | Path, judges: dict[str, Judge | None],
              name: str | None = None) -> dict:
    """Scores under every protocol in ``judges`` (protocol -> its judge, or None for rules only)."""
    unknown = sorted(set(judges) - set(PROTOCOLS))
    if unknown:
        raise AttTokError(f"unknown VQA protocol(s) {', '.join(unknown)}; known: {', '.join(PROTOCOLS)}")
    items = load_items(predictions_path, dataset_json)
    return {"name": name or Path(dataset_json).stem, "dataset": str(dataset_json),
            "predictions": str(predictions_path), "samples": len(items),
            "protocols": {p: _score(items, p, judges[p]) for p in PROTOCOLS if p in judges}}
