"""One AttTok run: its arguments, resolved vocabulary and token ids, shared by every patched LF step.

Built once from the parsed arguments and attached to LF's ``model_args`` and ``finetuning_args`` (as
``_attok``), so each later step (tokenizer, model, adapter, trainer) reads the same object.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .args import AttTokArguments
from .base_model import weights_fingerprint
from .errors import AttTokError
from .families import check_widths
from .lf_data import DatasetUnreadable, iter_answers
from .log import get_logger
from .rows import (
    add_attribute_tokens,
    init_attribute_rows,
    keyword_token_ids,
    resize_if_needed,
    show_attribute_tokens,
)
from .state import SavedAttTok
from .vocab import (
    TOKEN_IN_TEXT,
    AttributeVocab,
    check_data_tokens,
    check_keywords_against,
    derive_vocab,
    load_vocab,
    shared_keywords,
)

logger = get_logger(__name__)


@dataclass
class AttTokContext:
    args: AttTokArguments
    training: bool
    saved: SavedAttTok | None = None
    dataset_dir: str | None = None
    datasets: list[str] = field(default_factory=list)
    finetuning_type: str = "lora"
    vocab: AttributeVocab | None = None
    token_ids: list[int] = field(default_factory=list)
    new_token_ids: list[int] = field(default_factory=list)
    keyword_ids: list[list[int]] = field(default_factory=list)
    attribute_occurrences: int = 0
    model_type: str | None = None
    base_weights: str | None = None  # :func:`~.base_model.weights_fingerprint` of the loaded base model
    # LF's own parsed arguments, so datasets are read by LF's loader exactly as the run reads them
    lf_args: dict[str, Any] = field(default_factory=dict)
    # resume_from_checkpoint as the user gave it (None: not given; LF may then pick the last checkpoint itself)
    explicit_resume: str | bool | None = None

    def _known_special(self, tokenizer, vocab_tokens: set[str]) -> set[str]:
        return {t for t in tokenizer.get_vocab() if TOKEN_IN_TEXT.fullmatch(t) and t not in vocab_tokens}

    def _answers(self):
        data_args = self.lf_args.get("data")
        if data_args is None:
            raise DatasetUnreadable("no LLaMA-Factory data arguments to read the datasets with")
        return iter_answers(self.datasets, data_args, self.lf_args.get("model"), self.lf_args.get("training"))

    def _resolve_vocab(self, tokenizer) -> AttributeVocab:
        if self.args.attok_vocab:
            return load_vocab(self.args.attok_vocab)
        if self.saved is not None:
            return self.saved.vocab
        if not self.datasets:
            raise AttTokError("attok: true needs `attok_vocab` or a training dataset to derive the vocabulary from.")
        return derive_vocab(self._answers(), self._known_special(tokenizer, set()))

    def resolved_vocab(self) -> AttributeVocab:
        """The vocabulary :meth:`setup_tokenizer` resolved; an error before it has run."""
        if self.vocab is None:
            raise AttTokError("AttTok: the attribute vocabulary is not resolved yet (setup_tokenizer has not run).")
        return self.vocab

    def _check_data(self, tokenizer) -> None:
        vocab = self.resolved_vocab()
        known = self._known_special(tokenizer, set(vocab.tokens))
        try:
            per_token: Counter = Counter()
            self.attribute_occurrences = check_data_tokens(self._answers(), vocab, known, per_token)
        except DatasetUnreadable as err:
            if not self.args.attok_vocab:
                raise
            logger.warning("AttTok: %s; with attok_vocab given the check of attribute tokens in the data is "
                           "skipped.", err)
            return
        if self.attribute_occurrences == 0:
            raise AttTokError(
                f"dataset {', '.join(self.datasets)} (in {self.dataset_dir}): zero attribute-token occurrences in the "
                f"answers; AttTok needs answers prefixed with tokens such as {vocab.tokens[0]}."
            )
        unused = [t for t in vocab.tokens if not per_token[t]]
        if unused:
            logger.warning("AttTok: %d attribute token(s) of %s appear in no training answer: %s. Their rows get no "
                           "next-token gradient and their books no prototype (Eq. 5); they stay as initialised. "
                           "Fine for a vocabulary shared with other datasets; else check the data or remove them.",
                           len(unused), vocab.source, ", ".join(unused[:8]) + (" …" if len(unused) > 8 else ""))

    def _check_new_tokens(self, tokenizer) -> None:
        """An explicit vocabulary may not take over tokens the tokenizer already has (``<|im_end|>``, …): their
        rows would train as attribute rows. Tokens of the saved run being loaded or continued are allowed."""
        own = set(self.saved.vocab.tokens) if self.saved is not None else set()
        existing = tokenizer.get_vocab()
        taken = [t for t in self.resolved_vocab().tokens if t in existing and t not in own]
        if taken:
            raise AttTokError(
                f"{self.args.attok_vocab}: attribute token(s) {', '.join(taken)} already exist in the tokenizer of "
                "the base model (id " + ", ".join(str(existing[t]) for t in taken) + "); an attribute token must be "
                "new, or its existing row would be retrained. Rename them.")

    def setup_tokenizer(self, tokenizer) -> None:
        """Resolve the vocabulary, check the data, add the tokens and look up keyword ids (§4.1)."""
        self.vocab = self._resolve_vocab(tokenizer)
        if self.args.attok_vocab:
            self._check_new_tokens(tokenizer)
        if self.training and self.datasets:
            self._check_data(tokenizer)
        special = not self.args.attok_show_tokens  # special tokens are hidden by skip_special_tokens
        self.token_ids, self.new_token_ids = add_attribute_tokens(tokenizer, self.vocab, special)
        if self.args.attok_show_tokens:  # tokens a saved folder's tokenizer holds as special are shown too
            show_attribute_tokens(tokenizer, self.vocab.tokens)
        if self.saved is not None and self.saved.token_ids != self.token_ids:
            raise AttTokError(
                f"{self.saved.folder}: its attribute tokens have ids {self.saved.token_ids} but the base tokenizer "
                f"gives {self.token_ids}: the adapter was trained on another base model or vocabulary."
            )
        check_keywords_against(self.vocab, tokenizer.all_special_tokens)  # no row starts from <|im_end|>'s
        for keyword, tokens in shared_keywords(self.vocab).items():
            logger.warning("AttTok: %s share the keyword %r: their keyword entries start equal (Eq. 5), and scoring "
                           "generated text cannot tell their classes apart by it; give each its own keyword unless "
                           "they are one concept in several modalities", ", ".join(tokens), keyword)
        self.keyword_ids = keyword_token_ids(tokenizer, self.vocab, self.token_ids)
        logger.info("AttTok: %d attribute tokens, ids %s", len(self.token_ids), self.token_ids)

    def setup_model(self, model, tokenizer) -> None:
        """Check the family, grow the embedding only if needed, initialise newly added rows by id."""
        check_widths(model.config, "attok")
        self.model_type = model.config.model_type
        self.base_weights = weights_fingerprint(getattr(model, "name_or_path", "") or "")
        resized = resize_if_needed(model, tokenizer)
        new = set(self.new_token_ids)
        rows = [(tid, kw) for tid, kw in zip(self.token_ids, self.keyword_ids, strict=True) if tid in new]
        embedding = "resized" if resized else "kept (spare rows)"
        if self.saved is not None:  # a trained folder: its rows come from the saved weights, nothing is initialised
            logger.info("AttTok: embedding %s for %d attribute tokens; their trained rows come from %s", embedding,
                        len(self.token_ids), self.saved.folder)
            return
        if rows:
            init_attribute_rows(model, [r[0] for r in rows], [r[1] for r in rows])
        logger.info("AttTok: embedding %s; %d new attribute row(s) initialised from their keyword embeddings",
                    embedding, len(rows))

    def description(self) -> dict:
        return {
            "args": self.args.to_dict(),
            "token_ids": self.token_ids,
            "model_type": self.model_type,
            "base_weights": self.base_weights,
            "finetuning_type": self.finetuning_type,
            # how prompts were built, so evaluation builds them the same way (attok predict / eval figures)
            "template": getattr(self.lf_args.get("data"), "template", None),
            "default_system": getattr(self.lf_args.get("data"), "default_system", None),
            "enable_thinking": getattr(self.lf_args.get("data"), "enable_thinking", None),
        }
