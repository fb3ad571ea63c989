"""Exact resume of full / freeze fine-tunes: load a checkpoint's weights the way ``from_pretrained`` would.

The upstream bug (transformers 5.6, any composite model with a weight-conversion mapping, e.g. Qwen2-VL /
Qwen2.5-VL, LLaVA-likes, Gemma-3):

- Saving: ``Trainer._save`` → ``PreTrainedModel.save_pretrained(save_original_format=True)`` runs
  ``core_model_loading.revert_weight_conversion``, which writes the *original (hub) key layout*
  (``model.layers.*``, ``visual.*``) instead of the in-memory one (``model.language_model.layers.*``,
  ``model.visual.*``). ``from_pretrained`` undoes that with the same ``conversion_mapping`` renamings.
- Resuming: ``Trainer._load_from_checkpoint`` reads ``model.safetensors`` and calls plain
  ``model.load_state_dict(state_dict, False)`` (or ``trainer_utils.load_sharded_checkpoint`` for sharded
  folders), which applies no conversion. Every renamed key is "missing" and "unexpected"; strict=False turns that
  into a warning (``Trainer._issue_warnings_after_load``), training continues from the *base* weights with the
  checkpoint's optimizer state, and the run exits 0.

:class:`ExactResumeMixin` replaces only ``_load_from_checkpoint`` for non-PEFT ``PreTrainedModel`` s: the saved
keys are mapped back with transformers' own conversion objects (``rename_source_key`` +
``WeightRenaming``/``WeightConverter.convert``, the same steps ``convert_and_load_state_dict_in_model`` runs in
``from_pretrained``), copied in place with ``load_state_dict`` (parameters, gradient hooks and devices are kept),
and any key still missing or unexpected raises :class:`~llamafactory_attok.errors.AttTokError`.

Untouched paths: PEFT models (adapter files, loaded by ``load_adapter``), FSDP, SageMaker MP, and DeepSpeed. Under
DeepSpeed, ``Trainer.train`` never calls ``_load_from_checkpoint`` on resume; ``_prepare_for_training`` calls
``integrations.deepspeed.deepspeed_load_checkpoint`` → ``engine.load_checkpoint(global_step*/)``, which restores the
module's own ``state_dict`` keys (ZeRO-1/2) or the fp32 partitions (ZeRO-3), never the ``save_pretrained`` file.
"""

from __future__ import annotations

import copy
import json
import os
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import nn

from .errors import AttTokError
from .log import get_logger

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = get_logger(__name__)

SHOWN_KEYS = 5


def _weight_files(folder: str) -> list[str]:
    """The model weight files of a checkpoint folder (safetensors preferred, shards via their index)."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    for single, index in ((SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME), (WEIGHTS_NAME, WEIGHTS_INDEX_NAME)):
        if os.path.isfile(os.path.join(folder, single)):
            return [os.path.join(folder, single)]
        if os.path.isfile(os.path.join(folder, index)):
            with open(os.path.join(folder, index)) as handle:
                shards = sorted(set(json.load(handle)["weight_map"].values()))
            return [os.path.join(folder, shard) for shard in shards]
    return []


def _read_state_dict(files: list[str]) -> dict[str, torch.Tensor]:
    import safetensors.torch

    state_dict: dict[str, torch.Tensor] = {}
    for path in files:
        if path.endswith(".safetensors"):
            state_dict.update(safetensors.torch.load_file(path, device="cpu"))
        else:
            state_dict.update(torch.load(path, map_location="cpu", weights_only=True))
    return state_dict


def saved_conversions(model: PreTrainedModel) -> list:
    """The weight transforms ``save_pretrained`` reverted when it wrote this model (same choice as
    ``core_model_loading.revert_weight_conversion``): those ``from_pretrained`` used, else the registered ones."""
    from transformers.conversion_mapping import get_model_conversion_mapping

    from .transformers_compat import without_prefix_changes

    conversions = getattr(model, "_weight_conversions", None)
    if conversions is None:
        conversions = without_prefix_changes(get_model_conversion_mapping(model, add_legacy=False))
    return copy.deepcopy(list(conversions))  # renaming marks transforms as used: keep the model's own untouched


def convert_saved_state_dict(
    model: PreTrainedModel, state_dict: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Saved (original-format) keys → the model's own keys, as ``from_pretrained`` maps them.

    Returns the converted state dict and the saved keys that map to no key of ``model``.
    """
    from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

    conversions = saved_conversions(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    pattern_to_converter = {p: c for c in converters for p in c.source_patterns}
    expected = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "") or None

    to_load: dict[str, Any] = {}
    unexpected: list[str] = []
    for key, tensor in sorted(state_dict.items(), key=lambda kv: dot_natural_key(kv[0])):
        renamed, pattern = rename_source_key(key, renamings, converters, prefix, expected)
        if renamed not in expected and key in expected:  # as from_pretrained: the key was right as it was
            renamed, pattern = rename_source_key(key, [], [], prefix, expected)
        if renamed not in expected:
            unexpected.append(key)
            continue
        if pattern is not None:
            mapping = to_load.setdefault(renamed, copy.deepcopy(pattern_to_converter[pattern]))
        else:
            mapping = to_load.setdefault(renamed, WeightRenaming(key, renamed))
            pattern = key
        mapping.add_tensor(renamed, key, pattern, tensor)

    converted: dict[str, torch.Tensor] = {}
    for first_name, mapping in to_load.items():
        for name, value in mapping.convert(first_name, model=model, config=getattr(model, "config", None)).items():
            converted[name] = value[0] if isinstance(value, list) else value
    return converted, unexpected


def _aliased_keys(model: nn.Module) -> dict[str, set[str]]:
    """For each state-dict key, the other keys that are the very same tensor (tied weights)."""
    groups: dict[tuple, set[str]] = defaultdict(set)
    for name, tensor in model.state_dict(keep_vars=True).items():
        if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
            ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            groups[ident].add(name)
    return {name: group - {name} for group in groups.values() for name in group}


def _shown(keys: list[str]) -> str:
    more = f" … (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(sorted(keys)[:SHOWN_KEYS]) + more


def load_checkpoint_weights(model: PreTrainedModel, folder: str) -> None:
    """Load a Trainer checkpoint's ``save_pretrained`` weights into ``model`` in place, every key or an error."""
    files = _weight_files(folder)
    if not files:
        raise AttTokError(f"{folder}: no model weights (model.safetensors / pytorch_model.bin, or their index)")
    converted, unexpected = convert_saved_state_dict(model, _read_state_dict(files))
    result = model.load_state_dict(converted, strict=False)  # copy_ into the existing parameters
    unexpected += list(result.unexpected_keys)
    loaded = set(converted)
    aliases = _aliased_keys(model)
    ignored = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    missing = [k for k in result.missing_keys if k not in ignored and not (aliases.get(k, set()) & loaded)]
    if missing or unexpected:
        raise AttTokError(
            f"{folder}: resuming would not restore the trained weights: "
            + (f"{len(missing)} model key(s) missing from the checkpoint ({_shown(missing)})" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"{len(unexpected)} checkpoint key(s) match no model key ({_shown(unexpected)})" if unexpected else "")
        )
    if ignored & set(result.missing_keys) and hasattr(model, "tie_weights"):
        model.tie_weights()
    logger.info("Restored %d weight tensors of %s from %s.", len(loaded), type(model).__name__, folder)


class _Trainer(Protocol):
    """What :class:`ExactResumeMixin` uses of transformers' ``Trainer``, the class it is composed with."""

    model: nn.Module

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None: ...


class ExactResumeMixin:
    """Trainer mixin: resuming a non-PEFT model really loads its checkpoint weights (see module docstring)."""

    def _load_from_checkpoint(self: _Trainer, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        from transformers import PreTrainedModel
        from transformers.trainer_utils import _is_peft_model
        from transformers.utils import is_sagemaker_mp_enabled

        target = self.model if model is None else model
        if (
            getattr(self, "is_deepspeed_enabled", False)
            or getattr(self, "is_fsdp_enabled", False)
            or is_sagemaker_mp_enabled()
            or _is_peft_model(target)
            or not isinstance(target, PreTrainedModel)
            or not _weight_files(resume_from_checkpoint)
        ):
            cast(_Trainer, super())._load_from_checkpoint(resume_from_checkpoint, model)
            return
        logger.info("Loading model weights from %s (with transformers' key conversions).", resume_from_checkpoint)
        load_checkpoint_weights(target, resume_from_checkpoint)
