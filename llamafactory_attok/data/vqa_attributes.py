"""`attok data vqa-attributes`: LLM-extracted attribute tokens for VQA (paper A.2, §5.5), through the `openai`
client against any OpenAI-compatible endpoint.

1. per QA: conclusive keywords from question, answer and metadata (modality, organ);
2. aggregate: drop rare terms (``min_count``), then the LLM drops non-discriminative (position, shape, colour,
   size) and redundant ones — a small rule list drops the same categories again, as a guard;
3. per QA: keywords from the refined set assigned back.

Every reply is validated (pydantic); a malformed one is asked again, then listed as a failure in the report —
never dropped silently, never invented. Replies are cached in a JSON file keyed by (model, step, prompt), saved
after every call, so a rerun repeats no call and an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError, field_validator
from tqdm import tqdm

from ..errors import AttTokError
from ..vocab import tokens_in_text
from .lf_format import attribute_token, read_json, slug, write_atomic

if TYPE_CHECKING:
    import openai  # the eval extra; imported where the keyword LLM runs

NON_DISCRIMINATIVE = re.compile(
    r"\b(left|right|upper|lower|anterior|posterior|medial|lateral|bilateral|small|large|big|round|oval|"
    r"irregular|bright|dark|white|black|hyperdense|hypodense|size|shape|colou?r|location|position)\b")
SYSTEM = "You extract medical attribute keywords. Reply with JSON only, exactly {\"keywords\": [\"...\"]}."
STEP1 = ("Question: {question}\nAnswer: {answer}\nModality: {modality}\nOrgan: {organ}\n"
         "List 1-3 conclusive medical keywords (findings, diseases, structures) that this QA establishes.")
STEP2 = ("Candidate keywords (with counts): {candidates}\nKeep only discriminative clinical concepts: drop terms "
         "about position, shape, colour or size, and merge redundant synonyms (keep one spelling). "
         "Use only candidates.")
STEP3 = ("Question: {question}\nAnswer: {answer}\nModality: {modality}\nOrgan: {organ}\nAllowed keywords: {allowed}\n"
         "Which allowed keywords does this QA establish? Use only allowed keywords; an empty list is fine.")


RETRY_NOTE = '\nYour previous reply was not valid. Reply with JSON only: {"keywords": ["..."]}.'


class KeywordReply(BaseModel):
    keywords: list[str]

    @field_validator("keywords")
    @classmethod
    def _clean(cls, values: list[str]) -> list[str]:
        cleaned = [re.sub(r"\s+", " ", v).strip().lower() for v in values]
        if any(not v or len(v) > 60 for v in cleaned):
            raise ValueError("keywords must be non-empty phrases of at most 60 characters")
        return list(dict.fromkeys(cleaned))


def parse_reply(text: str | None, allowed: set[str] | None = None) -> KeywordReply:
    """The first JSON object in ``text`` as a :class:`KeywordReply` (subset of ``allowed`` if given)."""
    match = re.search(r"\{.*\}", text or "", re.DOTALL)
    if match is None:
        raise ValueError(f"no JSON object in reply {str(text)[:80]!r}")
    reply = KeywordReply.model_validate(json.loads(match.group(0)))
    if allowed is not None and not set(reply.keywords) <= allowed:
        raise ValueError(f"keywords outside the allowed set: {sorted(set(reply.keywords) - allowed)}")
    return reply


class ReplyCache:
    """Thread-safe JSON cache of raw replies, rewritten atomically after every new entry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, str] = read_json(path) if path.exists() else {}
        self.lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self.lock:
            return self.entries.get(key)

    def put(self, key: str, reply: str) -> None:
        with self.lock:
            self.entries[key] = reply
            write_atomic(self.path, json.dumps(self.entries, indent=1, ensure_ascii=False))


@dataclass
class Failure:
    item: str
    step: str
    error: str


@dataclass
class KeywordLLM:
    client: openai.OpenAI
    model: str
    cache: ReplyCache
    max_attempts: int = 3
    calls: int = 0
    failures: list[Failure] = field(default_factory=list)

    def ask(self, item: str, step: str, prompt: str, allowed: set[str] | None = None) -> list[str] | None:
        """Validated keywords, or ``None`` after ``max_attempts`` bad replies (recorded as a failure)."""
        import openai

        error = ""
        for attempt in range(self.max_attempts):
            asked = prompt if attempt == 0 else prompt + RETRY_NOTE
            key = hashlib.sha256(f"{self.model}\x00{step}\x00{asked}".encode()).hexdigest()
            reply = self.cache.get(key)
            if reply is None:
                try:
                    response = self.client.chat.completions.create(
                        model=self.model, temperature=0,
                        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": asked}])
                except openai.APIError as err:  # retries/timeouts already spent by the client
                    self.failures.append(Failure(item, step, f"{type(err).__name__}: {err}"))
                    return None
                with self.cache.lock:
                    self.calls += 1
                reply = response.choices[0].message.content or ""
                self.cache.put(key, reply)
            try:
                return parse_reply(reply, allowed).keywords
            except (ValueError, ValidationError, json.JSONDecodeError) as err:
                error = f"malformed reply after {attempt + 1} attempt(s): {err}"
        self.failures.append(Failure(item, step, error))
        return None


@dataclass
class ExtractionResult:
    rows: list[dict]
    vocab: dict[str, str]
    report: dict


SHOWN_SAMPLES = 10  # samples named in an error listing several


def check_rows(rows: object, source: Path) -> list[dict]:
    """The input of `attok data vqa-attributes`: a non-empty list of sharegpt samples, each with a question and an
    answer that has a letter or digit (an empty answer would become a bare ``<|token|> `` answer); else an error
    naming the file and the samples."""
    if not isinstance(rows, list) or not rows:
        raise AttTokError(f"{source}: expected a non-empty JSON list of sharegpt samples")
    bad, empty, tagged = [], [], []
    for index, row in enumerate(rows):
        turns = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(turns, list) or len(turns) < 2 or not all(
                isinstance(t, dict) and isinstance(t.get("content"), str) for t in turns[:2]):
            bad.append(index)
        elif not any(ch.isalnum() for ch in turns[1]["content"]):
            empty.append(f"{index} (qid {row.get('qid', index)}: {turns[1]['content']!r})")
        elif tokens_in_text(turns[1]["content"]):
            tagged.append(f"{index} ({turns[1]['content'][:40]!r})")
    if tagged:
        raise AttTokError(f"{source}: sample(s) {_listed(tagged)} already carry attribute tokens in their answers "
                          "(an earlier `vqa-attributes` output?): tokens would be added twice; give the dataset "
                          "without tokens (e.g. the builder's slake_train.json)")
    if bad:
        raise AttTokError(f"{source}: sample(s) {_listed(bad)} need `messages` with a user and an assistant turn "
                          "(each with a string `content`)")
    if empty:
        raise AttTokError(f"{source}: sample(s) {_listed(empty)} have an empty answer (no letter or digit); remove "
                          "them — an attribute token would become the whole answer")
    return rows


def _listed(items: list) -> str:
    shown = ", ".join(str(i) for i in items[:SHOWN_SAMPLES])
    return shown + (f" … ({len(items)} in all)" if len(items) > SHOWN_SAMPLES else "")


def _meta(row: dict) -> dict:
    turns = row["messages"]
    organ = row.get("organ") or row.get("location")  # SLAKE names the body region `location`
    return {"question": turns[0]["content"].replace("<image>", "").strip(), "answer": turns[1]["content"],
            "modality": row.get("modality") or "unknown", "organ": organ or "unknown"}


def with_tokens(row: dict, tokens: list[str]) -> dict:
    """A copy of ``row`` whose answer starts with ``tokens`` (listed again in ``attributes``)."""
    new_row = json.loads(json.dumps(row))
    if tokens:
        new_row["messages"][1]["content"] = " ".join(tokens) + " " + row["messages"][1]["content"]
    new_row["attributes"] = tokens
    return new_row


def extract_attributes(rows: list[dict], llm: KeywordLLM, min_count: int = 2, concurrency: int = 4,
                       single_modality: bool = False, default_modality: str = "rad") -> ExtractionResult:
    ids = [str(row.get("qid", index)) for index, row in enumerate(rows)]

    def parallel(fn, desc):
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(tqdm(pool.map(fn, range(len(rows))), total=len(rows), desc=desc))

    step1 = parallel(lambda i: llm.ask(ids[i], "keywords", STEP1.format(**_meta(rows[i]))), "1/3 keywords")
    counts = Counter(k for keywords in step1 if keywords for k in keywords)
    frequent = {k: c for k, c in counts.items() if c >= min_count and not NON_DISCRIMINATIVE.search(k)}
    refined: set[str] = set()
    if frequent:
        listing = ", ".join(f"{k} ({c})" for k, c in sorted(frequent.items(), key=lambda kv: (-kv[1], kv[0])))
        answer = llm.ask("<aggregate>", "refine", STEP2.format(candidates=listing), allowed=set(frequent))
        refined = {k for k in (answer or []) if not NON_DISCRIMINATIVE.search(k)}
    allowed_text = ", ".join(sorted(refined))
    step3 = parallel(lambda i: llm.ask(ids[i], "assign", STEP3.format(allowed=allowed_text, **_meta(rows[i])),
                                       allowed=refined) if refined else None, "3/3 assign")
    vocab: dict[str, str] = {}
    out_rows = []
    unusable: set[str] = set()
    for row, keywords in zip(rows, step3, strict=True):
        single = single_modality or row.get("single_modality")  # PathVQA rows: `<|concept|>`
        modality = None if single else (row.get("modality") or default_modality)
        tokens = []
        for keyword in keywords or []:
            if not slug(keyword):  # no latin letter or digit (e.g. a Chinese keyword): no valid token name
                unusable.add(keyword)
                continue
            token = attribute_token(keyword, modality)
            vocab.setdefault(token, keyword)
            tokens.append(token)
        out_rows.append(with_tokens(row, tokens))
    report = {
        "samples": len(rows), "calls": llm.calls, "step1_candidates": len(counts), "frequent": len(frequent),
        "refined": sorted(refined), "samples_with_attributes": sum(bool(r["attributes"]) for r in out_rows),
        "unusable_keywords": sorted(unusable),
        "failures": [f.__dict__ for f in llm.failures],
    }
    return ExtractionResult(out_rows, vocab, report)
