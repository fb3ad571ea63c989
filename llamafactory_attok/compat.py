"""Which LLaMA-Factory options AttTok supports, refuses, or has not tested (README "Compatibility with LF options").

Pure Python over LF's parsed argument objects (no LF import): ``lf_patches.parser`` calls :func:`check_lf_options`
while parsing, so an option AttTok cannot honour stops the run before anything is loaded, with the option named and
the reason given. An option is refused when AttTok would otherwise silently train something other than what the YAML
asks (paper §4: NTP + λ·ACM on attribute rows, ACC on visual tokens).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AttTokError

SUPPORTED_FINETUNING = ("lora", "full", "freeze")
_PACKING = (
    "packing concatenates several samples into one row, so one row's attribute tokens, images and ACM anchors "
    "(Eq. 5, 9) would belong to different samples"
)
_OWN_OPTIMIZER = (
    "it builds its own optimizer; AttTok's full/freeze row freezing needs embed/head in a weight-decay-0 group "
    "(paper A.1), and the combination is untested"
)
_OWN_TOKENS = (
    "AttTok adds its own tokens and trains only their rows; LF's token options put the whole embed and head into "
    "training (and crash PEFT's save under LoRA). Put your tokens into the attribute vocabulary (attok_vocab) instead"
)


def _on(value: Any) -> bool:
    return bool(value)


def _set(value: Any) -> bool:
    return value is not None and value != "" and value != []


@dataclass(frozen=True)
class Rule:
    group: str  # "model" | "data" | "finetuning" | "training"
    option: str
    refused_when: Callable[[Any], bool]
    reason: str
    message: str = "attok: true cannot be combined with `{option}: {value}`: {reason}."


_EMBED_TARGETS = frozenset({"embed_tokens", "lm_head", "wte", "output"})

REFUSED: tuple[Rule, ...] = (
    Rule("finetuning", "stage", lambda v: v != "sft", "AttTok is an SFT method (paper §4.3)",
         "attok: true needs `stage: sft`, got stage {value!r}."),
    Rule("finetuning", "additional_target", lambda v: bool(set(v or []) & _EMBED_TARGETS),
         "AttTok trains only the attribute rows of embed/lm_head",
         "attok: true trains only the attribute rows of embed/lm_head; remove them from `additional_target`."),
    Rule("model", "enable_liger_kernel", _on,
         "Liger's fused linear-cross-entropy never calls the output head, so the final hidden states of Eq. 9 "
         "are never captured and ACM would be 0 every step"),
    Rule("model", "use_unsloth", _on,
         "unsloth builds its LoRA model without LF's LoraConfig, so the attribute rows would not train"),
    # most specific first: LF derives add_special_tokens from new_special_tokens_config
    Rule("model", "new_special_tokens_config", _set, _OWN_TOKENS),
    Rule("model", "add_special_tokens", _set, _OWN_TOKENS),
    Rule("model", "resize_vocab", _on, _OWN_TOKENS),
    Rule("model", "quantization_bit", _set,
         "QLoRA (bitsandbytes) is untested with AttTok: it needs CUDA, which this project's test machines lack, "
         "and a quantized model cannot grow embedding rows for new tokens"),
    Rule("model", "use_kt", _on, "KTransformers replaces the model's modules; untested with AttTok's hooks"),
    Rule("data", "neat_packing", _on, _PACKING),  # before packing: LF sets packing when neat_packing is on
    Rule("data", "packing", _on, _PACKING),
    Rule("finetuning", "use_mca", _on,
         "MCore-Adapter replaces the transformers model and trainer that AttTok hooks into"),
    Rule("finetuning", "use_megatron_bridge", _on,  # LF main (0.9.6.dev0): also refused at its own parser
         "Megatron Bridge replaces the transformers model and trainer that AttTok hooks into"),
    Rule("finetuning", "use_hyper_parallel", _on,
         "HyperParallel trains with its own SFT loop (train/hyper_parallel), bypassing the trainer AttTok hooks into"),
    Rule("finetuning", "use_asft_loss", _on,
         "its compute_loss returns a bare loss from a reference-model objective; AttTok adds λ·ACM to the NTP loss "
         "and needs the model outputs"),
    Rule("finetuning", "use_dft_loss", _on,
         "it rescales the NTP loss per token (and by world size with average_tokens_across_devices) while ACM is "
         "not, so λ's meaning would change with the loss and the number of GPUs; untested"),
    Rule("finetuning", "use_eaft_loss", _on,
         "it rescales the NTP loss per token (and by world size with average_tokens_across_devices) while ACM is "
         "not, so λ's meaning would change with the loss and the number of GPUs; untested"),
    Rule("finetuning", "finetuning_type", lambda v: v not in SUPPORTED_FINETUNING,
         "only lora (PEFT trainable_token_indices), full and freeze (row-masked gradients) train the attribute "
         "rows; oft has neither"),
    Rule("training", "load_best_model_at_end", _on,
         "transformers reloads the best checkpoint without AttTok's state (ACC, books) and, for full/freeze, "
         "without its key conversion (the weights stay the last step's); pick the best checkpoint folder yourself"),
    Rule("finetuning", "use_galore", _on, _OWN_OPTIMIZER),
    Rule("finetuning", "use_apollo", _on, _OWN_OPTIMIZER),
    Rule("finetuning", "use_badam", _on, _OWN_OPTIMIZER),
    Rule("finetuning", "use_adam_mini", _on, _OWN_OPTIMIZER),
    Rule("finetuning", "use_muon", _on, _OWN_OPTIMIZER),
)

# Known to interact, and tested (see README): not refused.
SUPPORTED = (
    "finetuning_type: lora / full / freeze", "deepspeed ZeRO-2 / ZeRO-3", "multi-GPU DDP", "gradient_checkpointing",
    "do_eval / do_predict + predict_with_generate", "resume_from_checkpoint", "llamafactory-cli export / chat / api",
)
# Known to touch what AttTok touches, but neither tested here nor refused.
UNTESTED = ("use_dora", "pissa_init", "loraplus_lr_ratio", "use_rslora", "use_llama_pro", "freeze_vision_tower: false")


def check_lf_options(groups: dict[str, Any]) -> None:
    """Raise :class:`AttTokError` for the first LF option (in ``REFUSED``) set in a way AttTok cannot honour.

    ``groups`` maps "model" / "data" / "finetuning" / "training" to LF's parsed argument objects (absent: skipped).
    """
    for rule in REFUSED:
        args = groups.get(rule.group)
        if args is None or not hasattr(args, rule.option):
            continue
        value = getattr(args, rule.option)
        if rule.refused_when(value):
            raise AttTokError(rule.message.format(option=rule.option, value=value, reason=rule.reason))


def check_no_video_columns(dataset_dir: str | None, datasets: list[str]) -> None:
    """Refuse datasets whose ``dataset_info.json`` entry maps a ``videos`` column (ACC runs on images only)."""
    if not dataset_dir or not datasets:
        return
    info_path = Path(dataset_dir) / "dataset_info.json"
    if not info_path.is_file():
        return
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AttTokError(f"{info_path}: unreadable dataset_info.json: {err}") from err
    for name in datasets:
        columns = (info.get(name) or {}).get("columns") or {}
        if isinstance(columns, dict) and columns.get("videos"):
            raise AttTokError(f"{info_path}: dataset {name!r} maps a `videos` column: {VIDEO_REASON}")


VIDEO_REASON = (
    "AttTok does not support video inputs: ACC (Eq. 6-7) and the prototypes (Eq. 5) are defined on image tokens, "
    "and video frames would be refined at inference but not in training; use images (e.g. key frames)"
)
