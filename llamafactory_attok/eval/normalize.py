"""Answer normalisation for scoring generated text (written down in README, "Evaluation").

Text rules:

1. attribute tokens ``<|…|>`` and LF special tokens are removed;
2. lowercase; every character that is not a letter or digit (of any script) becomes a space; spaces collapse;
3. a class matches when one of its names (display name, vocabulary keyword, extra synonyms) occurs as a whole
   word sequence; exactly one matching class is the prediction — none or several is *unparseable* (and wrong).
   A longer name contained in the text wins over a shorter name it contains ("no diabetic retinopathy" over
   "diabetic retinopathy" style overlaps are resolved by keeping only maximal matches).

Token rule (AttTok models, whose attribute token *is* the answer): the ``<|…|>`` tokens of the generation are read
in order, tokens that identify no class (template tokens, attribute tokens shared by several classes, unknown
tokens) are skipped, and the first *class token* is the prediction; no class token is a miss of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..vocab import tokens_in_text

SPECIAL = re.compile(r"<\|[^|<>]*\|>")


def normalize(text: str) -> str:
    """Rules 1-2: letters and digits of any script are kept (SLAKE's Chinese answers must not normalise to
    nothing, which would make every Chinese or empty prediction equal to every Chinese reference)."""
    text = SPECIAL.sub(" ", text or "").lower()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def matching_classes(text: str, names: list[list[str]]) -> list[int]:
    """Indices of the classes whose (normalised) names occur in ``text`` as maximal whole-word matches."""
    padded = f" {normalize(text)} "
    spans: list[tuple[int, int, int]] = []  # (start, end, class)
    for index, synonyms in enumerate(names):
        for name in {normalize(n) for n in synonyms if normalize(n)}:
            for match in re.finditer(re.escape(f" {name} "), padded):
                spans.append((match.start(), match.end(), index))
    maximal = [s for s in spans if not any(o[0] <= s[0] and s[1] <= o[1] and (o[1] - o[0]) > (s[1] - s[0])
                                           for o in spans)]
    return sorted({s[2] for s in maximal})


def parse_class(text: str, names: list[list[str]]) -> int | None:
    found = matching_classes(text, names)
    return found[0] if len(found) == 1 else None


def class_tokens(text: str, token_classes: Mapping[str, int]) -> list[int]:
    """Classes of the class tokens in ``text``, in order of appearance (repeats kept); other tokens skipped."""
    return [token_classes[t] for t in tokens_in_text(text or "") if t in token_classes]


def parse_token(text: str, token_classes: Mapping[str, int]) -> int | None:
    """The class of the first class token in ``text`` (the token rule), or None when there is none."""
    found = class_tokens(text, token_classes)
    return found[0] if found else None
