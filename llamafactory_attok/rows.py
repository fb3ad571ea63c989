"""Attribute rows (paper §4.1, A.1): add the tokens, size the embedding, initialise their rows, train only them.

Under LoRA the rows train through PEFT's ``trainable_token_indices`` (the K rows are their own parameter and
are written in with ``index_copy``, so every other row is untouched by construction). Under full / freeze
fine-tuning the embedding and head stay whole parameters: a gradient hook zeroes every non-attribute row and the
trainer puts them in a weight-decay-0 group, so AdamW never moves those rows (zero gradient from the first step
keeps both moments at zero, and without decoupled decay the update is exactly zero).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
from tokenizers import AddedToken

from .errors import AttTokError
from .vocab import AttributeVocab


def add_attribute_tokens(tokenizer, vocab: AttributeVocab, special: bool = True) -> tuple[list[int], list[int]]:
    """Add the tokens (special by default, so ``skip_special_tokens`` hides them in decoded answers);
    return (all attribute ids, ids newly added now). Ids do not depend on ``special``."""
    before = set(tokenizer.get_vocab())
    new = [tok for tok in vocab.tokens if tok not in before]
    if new:
        added = [AddedToken(t, special=special, normalized=False) for t in new]
        tokenizer.add_tokens(added, special_tokens=special)
    ids = tokenizer.convert_tokens_to_ids(list(vocab.tokens))
    new_ids = tokenizer.convert_tokens_to_ids(new) if new else []
    return list(ids), list(new_ids)


def show_attribute_tokens(tokenizer, tokens: Sequence[str]) -> None:
    """Make ``tokens`` non-special in a tokenizer that already holds them as special (a merged / full-fine-tuned
    AttTok folder), so ``skip_special_tokens`` keeps them in decoded answers (``attok_show_tokens``). The Rust
    tokenizer cannot re-flag an added token in place: its serialised state is edited and loaded again."""
    import json

    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise AttTokError("attok_show_tokens needs a fast (Rust) tokenizer to show tokens it holds as special.")
    state = json.loads(backend.to_str())
    wanted = set(tokens)
    flipped = [t for t in state.get("added_tokens", []) if t["content"] in wanted and t.get("special")]
    if not flipped:
        return
    for token in flipped:
        token["special"] = False
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(state))


def keyword_token_ids(tokenizer, vocab: AttributeVocab, excluded_ids: Sequence[int]) -> list[list[int]]:
    """Token ids of each keyword text, without attribute ids; a keyword with none left is an error."""
    excluded = set(excluded_ids)
    result = []
    for token, keyword in zip(vocab.tokens, vocab.keywords, strict=True):
        ids = [i for i in tokenizer(keyword, add_special_tokens=False)["input_ids"] if i not in excluded]
        if not ids:
            raise AttTokError(
                f"attribute vocabulary: the keyword {keyword!r} of {token} tokenises to nothing usable "
                "(no ordinary token ids); give it a descriptive text."
            )
        result.append(ids)
    return result


def is_zero3() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


@contextmanager
def gathered(params: Sequence[torch.nn.Parameter], modify: bool) -> Iterator[None]:
    """Full parameters under ZeRO-3 (rank 0 may modify, then broadcasts); a no-op otherwise."""
    if is_zero3():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params), modifier_rank=0 if modify else None):
            yield
    else:
        with nullcontext():
            yield


def stored_weight(module) -> torch.nn.Parameter:
    """The weight parameter a module stores — for PEFT's trainable-token wrapper its base layer's, since the
    wrapper's ``.weight`` merges the deltas into a new tensor (which fails on an empty ZeRO-3 partition)."""
    adapter = getattr(module, "token_adapter", None)
    if adapter is not None and hasattr(adapter, "base_layer"):
        return adapter.base_layer.weight
    base = getattr(module, "base_layer", None)
    if type(module).__name__ == "TrainableTokensLayer" and base is not None:
        return base.weight
    return module.weight


def embedding_and_head(model) -> tuple[torch.nn.Parameter, torch.nn.Parameter | None]:
    """Input-embedding weight and, when untied, the output-head weight (stored parameters, PEFT wrappers seen
    through)."""
    embed = stored_weight(model.get_input_embeddings())
    head_module = model.get_output_embeddings()
    head = None if head_module is None or stored_weight(head_module) is embed else stored_weight(head_module)
    return embed, head


def resize_if_needed(model, tokenizer) -> bool:
    """Grow the embedding (padded to a multiple of 64) only when the tokenizer no longer fits in it.

    ``model.config.vocab_size`` is deliberately not set on composite configs: PEFT's save path then reloads the
    base config to compare vocab sizes and crashes on Qwen2-VL configs, which have no top-level vocab_size.
    """
    embed, _ = embedding_and_head(model)
    with gathered([embed], modify=False):
        rows = embed.size(0)
    if len(tokenizer) <= rows:
        return False
    if getattr(model, "quantization_method", None):
        raise AttTokError("attribute tokens need new embedding rows, which a quantized model cannot get.")
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    return True


@torch.no_grad()
def init_attribute_rows(model, token_ids: Sequence[int], keyword_ids: Sequence[Sequence[int]]) -> None:
    """Row ``token_ids[k]`` := mean of the rows of ``keyword_ids[k]``, in the embedding and the untied head.

    Rows are addressed by token id (not "the last N rows"), so spare rows and resizes cannot shift them.
    """
    embed, head = embedding_and_head(model)
    params = [embed] + ([head] if head is not None else [])
    with gathered(params, modify=True):
        if not is_zero3() or torch.distributed.get_rank() == 0:
            for weight in params:
                for row, ids in zip(token_ids, keyword_ids, strict=True):
                    weight.data[row] = weight.data[list(ids)].float().mean(0).to(weight.dtype)


def full_rows(weight: torch.Tensor) -> int:
    """Rows of an embedding weight; under ZeRO-3 the partitioned tensor is empty and ``ds_shape`` is the truth."""
    shape = getattr(weight, "ds_shape", None)
    return int(shape[0]) if shape is not None else int(weight.size(0))


def row_mask(num_rows: int, token_ids: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(num_rows, 1, dtype=like.dtype, device=like.device)
    mask[list(token_ids)] = 1
    return mask


def _mask_gradient(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if grad.shape[0] != mask.shape[0]:
        raise AttTokError(
            f"embedding gradient has {grad.shape[0]} rows but the attribute-row mask {mask.shape[0]}: cannot keep "
            "the non-attribute rows frozen (paper A.1).")
    return grad * mask.to(device=grad.device, dtype=grad.dtype)


def mask_non_attribute_gradients(model, token_ids: Sequence[int]) -> list:
    """Make embed/head trainable with a hook that zeroes the gradient of every non-attribute row.

    The gradient a hook sees is full-sized under ZeRO-3 too (it is computed on the gathered weight before
    DeepSpeed reduce-scatters it), so the mask has the full row count (``ds_shape``), not the partition's.
    """
    handles = []
    for weight in (w for w in embedding_and_head(model) if w is not None):
        weight.requires_grad_(True)
        mask = row_mask(full_rows(weight), token_ids, weight)
        handles.append(weight.register_hook(functools.partial(_mask_gradient, mask=mask)))
    return handles


def check_rows_trainable(model, token_ids: Sequence[int], finetuning_type: str) -> None:
    """After LF's adapter setup, before step 1: the attribute rows of embed (and an untied head) must train.

    LoRA: PEFT trainable-token layers cover exactly ``token_ids`` with a trainable delta; full / freeze: the whole
    embed / head weights require grad (their other rows are masked). Anything else is an error naming the cause.
    """
    ids = sorted(token_ids)
    if finetuning_type in ("full", "freeze"):
        for weight in (w for w in embedding_and_head(model) if w is not None):
            if not weight.requires_grad:
                raise AttTokError("attribute rows are not trainable after LLaMA-Factory's adapter setup "
                                  f"({finetuning_type}): the embedding/head weight does not require grad.")
        return
    layers = [m for m in model.modules() if type(m).__name__ == "TrainableTokensLayer"]
    covered = [m for m in layers if any(sorted(v) == ids for v in getattr(m, "token_indices", {}).values())]
    trainable = [m for m in covered if any(p.requires_grad for p in m.trainable_tokens_delta.parameters())]
    base = getattr(model, "get_base_model", lambda: model)()
    _, head = embedding_and_head(base)
    needed = 1 if head is None else 2
    if len(trainable) < needed:
        raise AttTokError(
            f"attribute rows are not trainable after LLaMA-Factory's adapter setup ({finetuning_type}): found "
            f"{len(trainable)} trainable-token layer(s) over the attribute ids, need {needed} (embed"
            f"{'' if head is None else ' and lm_head'}). LF built its PEFT config without AttTok's "
            "trainable_token_indices (an option such as use_unsloth, or an LF change).")


def trainable_token_indices(model, token_ids: Sequence[int]) -> dict[str, list[int]] | list[int]:
    """PEFT ``trainable_token_indices``: dict form for an untied head, list form when tied."""
    embed, head = embedding_and_head(model)
    ids = list(token_ids)
    if head is None:
        return ids
    names = {}
    for name, module in model.named_modules():
        if module is model.get_input_embeddings():
            names["embed"] = name.split(".")[-1]
        elif module is model.get_output_embeddings():
            names["head"] = name.split(".")[-1]
    return {names["embed"]: ids, names["head"]: ids}


def embedding_parameter_names(model) -> set[str]:
    """Names of the embed/head weights (for the weight-decay-0 optimizer group)."""
    targets = {id(p) for p in embedding_and_head(model) if p is not None}
    return {name for name, p in model.named_parameters() if id(p) in targets}


def _token_layer(module):
    """PEFT's trainable-token layer inside ``module`` (the wrapper's ``token_adapter``), or None."""
    layer = getattr(module, "token_adapter", module)
    return layer if type(layer).__name__ == "TrainableTokensLayer" else None


@torch.no_grad()
def head_rows(model, token_ids: Sequence[int]) -> torch.Tensor:
    """(K, d) rows of the output head the model really uses for ``token_ids`` — without materialising the head.

    Base rows, replaced by the PEFT trainable-token deltas of the active adapters where they cover a row (what
    ``TrainableTokensLayer.forward`` does to the whole weight); gathered under ZeRO-3.
    """
    head = model.get_output_embeddings()
    layer = _token_layer(head)
    base = layer.base_layer if layer is not None else head
    weight = base.weight
    with gathered([weight], modify=False):
        rows = weight[list(token_ids)].detach().clone()
    if layer is not None and not layer.merged and not layer.disable_adapters:
        position = {token: k for k, token in enumerate(token_ids)}
        for adapter in layer.active_adapters:
            delta = layer.trainable_tokens_delta[adapter]
            with gathered([delta], modify=False):
                for i, token in enumerate(layer.token_indices[adapter]):
                    if token in position:
                        rows[position[token]] = delta[i].to(rows)
    return rows
