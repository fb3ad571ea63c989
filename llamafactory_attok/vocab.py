"""Attribute vocabulary (paper §4.1): load, validate or derive the token → keyword mapping.

A vocabulary file is a YAML mapping in the shape LLaMA-Factory uses for ``new_special_tokens_config``::

    "<|fundus_severe_dr|>": "severe diabetic retinopathy"

Token names follow ``<|modality_concept|>``: lowercase letters and digits in words joined by single underscores;
single-modality sets (e.g. PathVQA) may leave the modality out (``<|tumor|>``). Without a file, the vocabulary is
derived from the answers of the training data (see :func:`derive_vocab`).
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import AttTokError

TOKEN_PATTERN = re.compile(r"^<\|[a-z0-9]+(?:_[a-z0-9]+)*\|>$")
TOKEN_IN_TEXT = re.compile(r"<\|[^|<>\s]+\|>")
# what a writer may have meant as a token: ``<|Fundus_Weird Token|>`` (capitals, spaces) too
TOKEN_LIKE = re.compile(r"<\|[^<>\n]{0,80}?\|>")
# markup a tokenizer may treat as one special token: <|im_end|>, <image>, </s>, <start_of_turn>, <IMG_CONTEXT>
SPECIAL_LIKE = re.compile(r"<\|[^<>\n]{0,80}?\|>|</?[A-Za-z_][^<>\s]{0,40}>")


@dataclass(frozen=True)
class AttributeVocab:
    """Ordered attribute tokens and their keyword texts; index k is the attribute's book index."""

    tokens: tuple[str, ...]
    keywords: tuple[str, ...]
    source: str = field(default="", compare=False)  # the file it was read from, for error messages
    lines: tuple[int, ...] = field(default=(), compare=False)  # the line of each token in that file (0: unknown)

    def where(self, token: str) -> str:
        """``file: line N`` of ``token`` (as far as known), for error messages."""
        index = self.tokens.index(token)
        line = self.lines[index] if index < len(self.lines) else 0
        return f"{self.source or 'attribute vocabulary'}" + (f": line {line}" if line else "")

    def __len__(self) -> int:
        return len(self.tokens)

    def as_dict(self) -> dict[str, str]:
        return dict(zip(self.tokens, self.keywords, strict=True))

    def index(self, token: str) -> int:
        return self.tokens.index(token)

    def modality(self, token: str) -> str:
        return token[2:-2].split("_", 1)[0]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.as_dict(), allow_unicode=True, sort_keys=False, width=1000)


class _TextLoader(yaml.BaseLoader):
    """A loader for files of text (vocabularies, class maps): every scalar stays the text written — YAML 1.1 would
    read the label ``01`` as the number 1, ``yes`` / ``no`` as booleans and ``1e3`` as a float, so that they no
    longer match the labels or keywords they spell — and a duplicated mapping key is refused (PyYAML silently
    keeps the last one). ``what`` names a key in that error."""

    what = "key"


def _construct_unique_mapping(loader: _TextLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise AttTokError(
                f"{loader.name}: line {key_node.start_mark.line + 1}: duplicated {loader.what} {key!r} "
                f"(first defined on line {seen[key]})."
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_TextLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_text_yaml(text: str, name: str, what: str = "key") -> object:
    """``text`` (the file ``name``) parsed with every scalar kept as text and duplicated keys refused (naming
    ``what`` and the lines); a malformed file is a ``yaml.YAMLError`` whose marks name ``name``."""
    loader = _TextLoader(text)
    loader.name = name
    loader.what = what
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _line_of(text: str, token: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if token in line:
            return number
    return 0


def validate_token_name(token: object, where: str) -> str:
    if not isinstance(token, str) or not TOKEN_PATTERN.match(token):
        raise AttTokError(
            f"{where}: attribute token {token!r} breaks the naming rule <|modality_concept|> "
            "(lowercase letters and digits, words joined by single underscores; e.g. <|fundus_severe_dr|>)."
        )
    return token


def _check_keyword(token: str, keyword: object, where: str) -> None:
    """A keyword is plain words: its token embeddings initialise the attribute row (§4.1), so markup a tokenizer
    reads as one special token (``<|im_end|>``, ``<image>``, ``</s>``) would start the row from that token."""
    if not isinstance(keyword, str) or not keyword.strip():
        raise AttTokError(f"{where}: attribute token {token} needs a non-empty keyword text, got {keyword!r}.")
    special = SPECIAL_LIKE.search(keyword)
    if special:
        raise AttTokError(f"{where}: the keyword {keyword!r} of {token} contains {special.group(0)!r}, which looks "
                          "like a special token of a tokenizer; the attribute row would start from that token's "
                          "embedding. Write the keyword as plain words.")


def vocab_from_mapping(mapping: dict, source: str, text: str = "") -> AttributeVocab:
    """Validate a token → keyword mapping; ``source``/``text`` locate errors by file and line."""
    if not mapping:
        raise AttTokError(f"{source}: the attribute vocabulary is empty.")
    lines = []
    for token, keyword in mapping.items():
        lines.append(_line_of(text, str(token)) if text else 0)
        where = f"{source}: line {lines[-1]}" if text else source
        validate_token_name(token, where)
        _check_keyword(token, keyword, where)
    return AttributeVocab(tuple(mapping), tuple(str(v).strip() for v in mapping.values()), source, tuple(lines))


def shared_keywords(vocab: AttributeVocab) -> dict[str, list[str]]:
    """Keywords given to several attribute tokens (case and spacing ignored) -> those tokens. Legitimate for tokens
    of one concept in several modalities (``<|ct_abdomen|>`` / ``<|mri_abdomen|>``: "abdomen"), but their keyword
    entries then start equal (Eq. 5) and the keyword cannot tell their classes apart in generated text."""
    by_keyword: dict[str, list[str]] = defaultdict(list)
    for token, keyword in zip(vocab.tokens, vocab.keywords, strict=True):
        by_keyword[" ".join(keyword.split()).casefold()].append(token)
    return {keyword: tokens for keyword, tokens in by_keyword.items() if len(tokens) > 1}


def check_keywords_against(vocab: AttributeVocab, special_tokens: Iterable[str]) -> None:
    """Refuse a keyword that is, or contains, a special token of the tokenizer (any spelling, e.g. ``[CLS]``),
    naming the vocabulary file and line; call it where the tokenizer is at hand (keyword ids are computed)."""
    specials = [t for t in special_tokens if t and t.strip()]
    for token, keyword in zip(vocab.tokens, vocab.keywords, strict=True):
        found = next((t for t in specials if t in keyword), None)
        if found is not None:
            raise AttTokError(f"{vocab.where(token)}: the keyword {keyword!r} of {token} contains {found!r}, a "
                              "special token of the tokenizer; the attribute row would start from its embedding. "
                              "Write the keyword as plain words.")


def read_text(path: str | os.PathLike[str]) -> str:
    """The UTF-8 text of ``path``; a missing or non-UTF-8 file is an :class:`AttTokError` naming it."""
    path = Path(path)
    if path.is_dir():
        raise AttTokError(f"{path}: a folder, not a file; give the file itself.")
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise AttTokError(f"{path}: file does not exist.") from err
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        if data[:4] == b"PK\x03\x04":  # a zip archive: a .npz given where text is read
            raise AttTokError(f"{path}: a zip archive (a .npz?), not a text file; a MedMNIST .npz is read with "
                              "--format npz.") from err
        line = data[: err.start].count(b"\n") + 1
        raise AttTokError(f"{path}: line {line}: not UTF-8 text (byte {data[err.start]:#04x}: {err.reason}); "
                          "save the file as UTF-8.") from err


def load_vocab(path: str | Path) -> AttributeVocab:
    """Read and validate a vocabulary YAML file; errors name the file and line."""
    path = Path(path)
    if path.is_dir():
        raise AttTokError(f"attok_vocab: {path} is a folder; give the vocabulary YAML file itself (e.g. "
                          f"{path / 'NAME_vocab.yaml'}).")
    if not path.is_file():
        raise AttTokError(f"attok_vocab: file {path} does not exist.")
    text = read_text(path)
    try:  # marks (and the duplicate-key error) name the file, not "<unicode string>"
        mapping = load_text_yaml(text, str(path), "attribute token")
    except yaml.YAMLError as err:
        raise AttTokError(f"{path}: malformed vocabulary YAML: {err}") from err
    if not isinstance(mapping, dict):
        kind = type(mapping).__name__
        raise AttTokError(f"{path}: the vocabulary must be a YAML mapping token -> keyword, got {kind}.")
    return vocab_from_mapping(mapping, str(path), text)


def tokens_in_text(text: str) -> list[str]:
    """Every ``<|…|>`` token in ``text``, in order, with repeats."""
    return TOKEN_IN_TEXT.findall(text)


def refuse_malformed_tokens(text: str, known_special: set[str], where: str) -> None:
    """Anything written like a token (``<|…|>``, spaces and capitals included) must be a known special token or
    follow the naming rule; else it would train as plain text and teach no attribute: an error naming ``where``."""
    for token in TOKEN_LIKE.findall(text):
        if token not in known_special:
            validate_token_name(token, where)


def keyword_after(text: str, token: str) -> str:
    """The text after ``token`` up to the next ``<|…|>`` token or the end, stripped of spaces and ``,;.``."""
    start = text.index(token) + len(token)
    following = TOKEN_IN_TEXT.search(text, start)
    end = following.start() if following else len(text)
    return text[start:end].strip().strip(",;.").strip()


def derive_vocab(answers: Iterable[tuple[str, str]], known_special: set[str]) -> AttributeVocab:
    """Derive the vocabulary from ``(where, answer)`` pairs of the training data.

    Rule: every ``<|…|>`` token in an answer that the tokenizer does not already know is an attribute token;
    its keyword is the text that follows it in the answer, up to the next attribute token; when the answers
    disagree, the most frequent text wins (ties: first seen). Tokens are ordered by first appearance.
    """
    keyword_counts: dict[str, Counter] = defaultdict(Counter)
    for where, answer in answers:
        refuse_malformed_tokens(answer, known_special, where)
        for token in tokens_in_text(answer):
            if token in known_special:
                continue
            validate_token_name(token, where)
            keyword_counts[token][keyword_after(answer, token)] += 1
    mapping = {}
    for token, counts in keyword_counts.items():
        keyword = next((k for k, _ in counts.most_common() if k), "")
        if not keyword:
            raise AttTokError(f"attribute token {token} is never followed by keyword text in the answers.")
        mapping[token] = keyword
    if not mapping:
        raise AttTokError("no <|modality_concept|> attribute token found in the training answers.")
    return vocab_from_mapping(mapping, "training answers")


def check_data_tokens(answers: Iterable[tuple[str, str]], vocab: AttributeVocab, known_special: set[str],
                      per_token: Counter | None = None) -> int:
    """Count attribute occurrences (``per_token``, when given, gets them per token); an unknown ``<|…|>`` token in
    an answer is an error naming the sample."""
    valid = set(vocab.tokens)
    occurrences = 0
    for where, answer in answers:
        refuse_malformed_tokens(answer, known_special, where)
        for token in tokens_in_text(answer):
            if token in valid:
                occurrences += 1
                if per_token is not None:
                    per_token[token] += 1
            elif token not in known_special:
                raise AttTokError(
                    f"{where}: attribute token {token} appears in the data but not in the attribute vocabulary "
                    f"({len(vocab)} tokens: {', '.join(vocab.tokens[:8])}{' …' if len(vocab) > 8 else ''})."
                )
    return occurrences
