"""AttTok arguments: every ``attok_*`` key, its default (from the paper) and strict validation.

Keys arrive from a YAML recipe, from ``--attok_x value`` on the command line, or from the dict LLaMA-Factory's
WebUI writes. Unknown ``attok_*`` keys are an error that names the key and lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import AttTokError

ACM_SCHEDULES = ("linear", "cosine", "constant")


TAU_MIN, TAU_MAX = 0.01, 100.0  # ACM temperature (Eq. 9): similarities in [-1, 1] → logits in [-100, 100] at most

@dataclass
class AttTokArguments:
    """Settings of the AttTok method (paper §4); saved next to every checkpoint."""

    attok: bool = field(default=False, metadata={"help": "Turn AttTok on."})
    attok_vocab: str | None = field(
        default=None,
        metadata={"help": "YAML mapping attribute token -> keyword. Absent: derived from `<|…|>` tokens in answers."},
    )
    attok_acc: bool = field(default=True, metadata={"help": "Use the ACC adapter on visual tokens (Eq. 6-7)."})
    attok_acc_gamma: float = field(default=0.1, metadata={"help": "ACC residual scale γ (Eq. 7), ≥ 0."})
    attok_acm: bool = field(default=True, metadata={"help": "Add the ACM contrastive loss (Eq. 8-9)."})
    attok_acm_weight: float = field(default=1.0, metadata={"help": "Initial ACM weight λ, ≥ 0 (§4.3)."})
    attok_acm_schedule: Literal["linear", "cosine", "constant"] = field(
        default="linear", metadata={"help": "How λ decays to 0 by the last step: linear | cosine | constant."}
    )
    attok_tau: float = field(default=1.0, metadata={"help": "ACM temperature τ (Eq. 9), > 0."})
    attok_ema: float = field(default=0.99, metadata={"help": "Visual-prototype EMA momentum μ (Eq. 5), in [0, 1)."})
    attok_show_tokens: bool = field(
        default=False, metadata={"help": "Show attribute tokens in chat answers (hidden by default)."}
    )
    attok_training_positions: bool = field(
        default=True,
        metadata={"help": "Generate with the positions used in training (M-RoPE of Qwen2-VL / Qwen2.5-VL / Qwen3-VL, "
                          "which LF 0.9.5 + transformers 5.x drop: LF #10817). Always on in AttTok runs; given "
                          "without `attok: true`, it applies this fix alone to a vanilla model."},
    )

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):  # annotations are strings (``from __future__ import annotations``)
            value = getattr(self, item.name)
            if item.type == "float" and not math.isfinite(value):
                raise AttTokError(f"{item.name} must be a finite number, got {value!r}.")
        if self.attok_acc_gamma < 0:
            raise AttTokError(f"attok_acc_gamma must be >= 0, got {self.attok_acc_gamma}.")
        if not 0.0 <= self.attok_ema < 1.0:
            raise AttTokError(f"attok_ema must be in [0, 1), got {self.attok_ema}.")
        if not TAU_MIN <= self.attok_tau <= TAU_MAX:
            raise AttTokError(f"attok_tau must be > 0, at least {TAU_MIN} and at most {TAU_MAX} (the paper: 1), got "
                              f"{self.attok_tau}: cosine similarities divided by a tinier τ overflow the ACM loss "
                              "(Eq. 9), a huger one flattens it to a constant.")
        if self.attok_acm_weight < 0:
            raise AttTokError(f"attok_acm_weight must be >= 0, got {self.attok_acm_weight}.")
        if self.attok_acm_schedule not in ACM_SCHEDULES:
            raise AttTokError(
                f"attok_acm_schedule must be one of {', '.join(ACM_SCHEDULES)}, got {self.attok_acm_schedule!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


VALID_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(AttTokArguments))
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(AttTokArguments)}


def is_attok_key(key: str) -> bool:
    return key == "attok" or key.startswith("attok_")


def _coerce(key: str, value: Any) -> Any:
    """Turn a CLI string (or YAML scalar) into the field's type, with an error naming the key."""
    kind = _FIELD_TYPES[key]
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no"):
            return False
        raise AttTokError(f"{key} must be true or false, got {value!r}.")
    if kind == "float":
        if isinstance(value, bool):
            raise AttTokError(f"{key} must be a number, got {value!r}.")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise AttTokError(f"{key} must be a number, got {value!r}.") from None
    if kind == "str | None":
        if value is not None and not str(value).strip():  # `attok_vocab=` would silently mean "derive it"
            raise AttTokError(f"{key} is empty; give a file, or remove the key to derive the vocabulary from the "
                              "answers.")
        return None if value is None else str(value)
    return str(value)  # Literal choices are checked in AttTokArguments.__post_init__


def _closest_key(key: str) -> list[str]:
    """Closest valid key, comparing also the last word (``attok_gama`` -> ``attok_acc_gamma``, not ``attok_ema``)."""
    tail = key.rsplit("_", 1)[-1]
    by_tail = {k.rsplit("_", 1)[-1]: k for k in VALID_KEYS if "_" in k}
    hit = difflib.get_close_matches(tail, list(by_tail), n=1, cutoff=0.75) if "_" in key else []
    if hit:
        return [by_tail[hit[0]]]
    return difflib.get_close_matches(key, VALID_KEYS, n=1)


def unknown_key_message(key: str) -> str:
    hint = _closest_key(key)
    suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
    return f"Unknown AttTok argument {key!r}.{suggestion} Valid keys: {', '.join(VALID_KEYS)}."


def parse_attok_dict(raw: dict[str, Any]) -> AttTokArguments:
    """Build :class:`AttTokArguments` from ``attok*`` keys, rejecting unknown ones."""
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in VALID_KEYS:
            raise AttTokError(unknown_key_message(key))
        values[key] = _coerce(key, value)
    return AttTokArguments(**values)


def split_attok_dict(args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a LLaMA-Factory argument dict into (AttTok keys, everything else)."""
    ours = {k: v for k, v in args.items() if is_attok_key(k)}
    rest = {k: v for k, v in args.items() if not is_attok_key(k)}
    return ours, rest


def split_attok_cli(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``--attok_x value`` / ``--attok_x=value`` / bare ``--attok`` flags out of a CLI list."""
    ours: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        item = argv[i]
        name = item[2:].split("=", 1)[0] if item.startswith("--") else ""
        if not is_attok_key(name):
            rest.append(item)
            i += 1
            continue
        if "=" in item:
            ours[name] = item.split("=", 1)[1]
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            ours[name] = argv[i + 1]
            i += 2
        else:  # a bare flag means true, like HfArgumentParser's booleans
            ours[name] = "true"
            i += 1
    return ours, rest
