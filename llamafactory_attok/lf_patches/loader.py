"""``model.loader``: attribute tokens in the tokenizer, their rows in the model, row-only training, and the AttTok
module (books, ACC, θ) on the model before any Trainer exists (paper §4.1, Eq. 5-9)."""

from __future__ import annotations

import contextlib
import functools

from ..attach import attach, load_state
from ..context import AttTokContext
from ..filenames import STATE_FILE_NAME
from ..generation import generate_with_training_positions
from ..peft_compat import zero3_trainable_tokens_on_any_device
from ..rows import check_rows_trainable, is_zero3, mask_non_attribute_gradients, trainable_token_indices
from ..sparse_rows import use_sparse_rows
from .adapter import TOKEN_INDICES
from .parser import context_of


def _wrap_patch_tokenizer(original):
    @functools.wraps(original)
    def patch_tokenizer(tokenizer, model_args, *args, **kwargs):
        original(tokenizer, model_args, *args, **kwargs)
        context = context_of(model_args)
        if context is not None:
            context.setup_tokenizer(tokenizer)

    return patch_tokenizer


def _wrap_patch_model(original):
    @functools.wraps(original)
    def patch_model(model, tokenizer, model_args, *args, **kwargs):
        original(model, tokenizer, model_args, *args, **kwargs)
        context = context_of(model_args)
        if context is not None:
            context.setup_model(model, tokenizer)
        wanted = context.args.attok_training_positions if context is not None else getattr(
            model_args, "_attok_training_positions", False)
        if wanted:
            generate_with_training_positions(model)

    return patch_model


def _wrap_init_adapter(original):
    @functools.wraps(original)
    def init_adapter(config, model, model_args, finetuning_args, is_trainable, *args, **kwargs):
        context = context_of(finetuning_args)
        if context is None:
            return original(config, model, model_args, finetuning_args, is_trainable, *args, **kwargs)
        indices = trainable_token_indices(model, context.token_ids) if is_trainable else None
        token = TOKEN_INDICES.set(indices)
        try:
            with zero3_trainable_tokens_on_any_device() if is_zero3() else contextlib.nullcontext():
                model = original(config, model, model_args, finetuning_args, is_trainable, *args, **kwargs)
        finally:
            TOKEN_INDICES.reset(token)
        use_sparse_rows(model)  # LoRA: PEFT's trainable-token layers without V×d copies (no-op otherwise)
        if is_trainable and finetuning_args.finetuning_type in ("full", "freeze"):
            mask_non_attribute_gradients(model, context.token_ids)
        if is_trainable:  # verified once, before step 1: the rows AttTok trains really are trainable
            check_rows_trainable(model, context.token_ids, finetuning_args.finetuning_type)
        _attach_module(model, context, is_trainable)
        return model

    return init_adapter


def _attach_module(model, context: AttTokContext, is_trainable: bool) -> None:
    """Books, ACC and θ on the model (before any Trainer exists), restored from a saved run when loading."""
    import torch

    module = attach(model, context.args, context.token_ids, context.keyword_ids, seed=torch.initial_seed())
    saved = context.saved
    if saved is not None:
        load_state(module, saved.folder / STATE_FILE_NAME)  # a missing or unreadable file is an error naming it
    module.requires_grad_(is_trainable)
    module.expects_trainer = is_trainable and context.training


def patch(module, patch_tokenizer, patch_model, init_adapter) -> None:
    module.patch_tokenizer = _wrap_patch_tokenizer(patch_tokenizer)
    module.patch_model = _wrap_patch_model(patch_model)
    module.init_adapter = _wrap_init_adapter(init_adapter)
