"""Attribute tokens from a dataset's own structured fields — no LLM, no endpoint, deterministic.

Beyond the paper (whose VQA attributes come from the LLM workflow of Appendix A.2, :mod:`.vqa_attributes`): for
datasets that carry structured fields, ``--from-fields modality,location`` (SLAKE) or ``modality,organ``
(VQA-RAD) gives every QA ``<|modality_concept|>`` tokens straight from them. The first field is the token's
modality part (a sample without a value there takes ``default_modality``, as VQA-RAD's samples do), each further
field gives one concept: SLAKE's ``modality: CT, location: Lung`` → ``<|ct_lung|>`` (keyword ``lung``). With
``single_modality`` (or rows marked ``single_modality``, as PathVQA's are) every listed field is a concept and
tokens have no modality part. A sample without a value for a concept field gets no token for it and is listed
by id in the report; a field that no sample has is an error (a typo would otherwise tag nothing).
"""

from __future__ import annotations

from collections import defaultdict

from ..errors import AttTokError
from .lf_format import attribute_token, slug
from .vqa_attributes import ExtractionResult, with_tokens

# Abbreviated field values spelled out for the keyword text (the token keeps the value's own slug)
KEYWORD_SPELLING = {"abd": "abdomen"}  # VQA-RAD's image_organ code
EMPTY_VALUES = {"", "null", "none", "n/a"}


def parse_fields(text: str) -> list[str]:
    """``"modality,location"`` → ``["modality", "location"]``; empty names or repeats are an error."""
    fields = [f.strip() for f in text.split(",")]
    if not all(fields) or len(set(fields)) != len(fields):
        raise AttTokError(f"--from-fields {text!r}: expected distinct comma-separated field names, e.g. "
                          "modality,location")
    return fields


def keyword_of(value: object) -> str:
    """The vocabulary text of a field value: underscores as spaces, lowercase (``Brain_Tissue`` → ``brain tissue``)."""
    text = " ".join(str(value).replace("_", " ").split()).lower()
    return KEYWORD_SPELLING.get(text, text)


def _values(value: object) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [str(v).strip() for v in items if v is not None and str(v).strip().lower() not in EMPTY_VALUES]


def _check_fields(rows: list[dict], fields: list[str], single_modality: bool, source: str) -> None:
    if not single_modality and len(fields) < 2:
        raise AttTokError(f"--from-fields {','.join(fields)}: the first field gives the modality part, so at least "
                          "one concept field must follow (e.g. modality,location), or pass --single-modality")
    present = {key for row in rows for key in row}
    absent = [f for f in fields if f not in present]
    if absent:
        found = sorted(present - {"messages", "images"})
        raise AttTokError(f"{source}: field(s) {', '.join(absent)} in no sample (sample fields: {', '.join(found)})")


def attributes_from_fields(rows: list[dict], fields: list[str], source: str, single_modality: bool = False,
                           default_modality: str = "rad") -> ExtractionResult:
    """Tokens for every row from ``fields``; the vocabulary in first-seen order (the same input, the same output)."""
    _check_fields(rows, fields, single_modality, source)
    vocab: dict[str, str] = {}
    missing: dict[str, list[str]] = defaultdict(list)
    out_rows = []
    for index, row in enumerate(rows):
        single = single_modality or row.get("single_modality")
        modality = None if single else next((v for v in _values(row.get(fields[0])) if slug(v)), default_modality)
        tokens: list[str] = []
        for name in fields if single else fields[1:]:
            concepts = [v for v in _values(row.get(name)) if slug(v)]  # a value without latin letters or digits
            if not concepts:  # cannot name a token
                missing[name].append(str(row.get("qid", index)))
            for concept in concepts:
                token = attribute_token(concept, modality)
                vocab.setdefault(token, keyword_of(concept))
                if token not in tokens:
                    tokens.append(token)
        out_rows.append(with_tokens(row, tokens))
    report = {"samples": len(rows), "source": f"fields {','.join(fields)} (no LLM)", "calls": 0,
              "tokens": len(vocab), "samples_with_attributes": sum(bool(r["attributes"]) for r in out_rows),
              "missing_values": dict(missing), "failures": []}
    return ExtractionResult(out_rows, vocab, report)
