"""AttTok trainer behaviour as a mixin over LLaMA-Factory's SFT trainer (composed in ``integration``).

Kept free of LF imports: it only overrides Hugging Face ``Trainer`` hooks.
"""

from __future__ import annotations

import os

from .context import AttTokContext
from .rows import embedding_parameter_names
from .state import save_description

ROW_MASKED_TUNING = ("full", "freeze")


class AttTokTrainerMixin:
    """Weight-decay-0 group for masked embed/head rows; AttTok files written with every save."""

    attok: AttTokContext

    def get_decay_parameter_names(self, model) -> list[str]:
        names = super().get_decay_parameter_names(model)
        if self.attok.finetuning_type not in ROW_MASKED_TUNING:
            return names
        # Decoupled weight decay would shrink rows whose gradient is masked to zero (paper A.1's "frozen" rows).
        excluded = embedding_parameter_names(model)
        return [n for n in names if n not in excluded]

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        save_description(output_dir or self.args.output_dir, self.attok.vocab, self.attok.description())
