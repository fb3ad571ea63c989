"""AttTok trainer behaviour (paper §4.3) as a mixin over LLaMA-Factory's SFT trainer (composed in
``lf_patches.workflow``).

Kept free of LF imports: it only overrides Hugging Face ``Trainer`` hooks. Loss = NTP + λ(t)·ACM; the
prototype EMA (Eq. 5) is updated after each training micro-batch from all-reduced per-class sums.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import torch
from torch import nn

from .acm import acm_loss
from .attach import base_model_of, load_state, module_of, save_state
from .books import PrototypeBank, all_reduce_sums
from .checkpoints import checkpoint_problems, last_complete_checkpoint, only_not_resumable, remove_stale_temp_files
from .context import AttTokContext
from .errors import AttTokError
from .filenames import STATE_FILE_NAME
from .log import get_logger
from .plan import BatchPlan, build_plan
from .rows import embedding_parameter_names
from .run_guards import lora_shape, refuse_changed_resume, run_lock
from .schedule import acm_weight
from .state import save_description
from .training_notes import acm_chance_note

if TYPE_CHECKING:
    from transformers import TrainerState

ROW_MASKED_TUNING = ("full", "freeze")
LOG_KEYS = ("loss_ntp", "loss_acm", "acm_weight")
logger = get_logger(__name__)


def _zero_participation(params) -> torch.Tensor:
    """0·Σp: keeps parameters in the graph of a micro-batch that does not use them (ZeRO-3 / DDP need it)."""
    return sum(p.sum() for p in params) * 0.0


def acm_term(module, plan: BatchPlan, device) -> torch.Tensor:
    """Eq. 9 over this forward's anchors (the final hidden states the head pre-hook kept)."""
    books, valid = plan.books if plan.books is not None else module.book_entries(device)
    if plan.hidden is None:
        anchors = books.new_zeros(0, books.shape[-1])
    else:
        anchors = plan.hidden[plan.anchor_batch, plan.anchor_pos]
    return acm_loss(anchors, plan.anchor_classes, books, valid, module.acm, module.acm.tau)


def update_prototypes(module, plan: BatchPlan, device) -> None:
    """Eq. 5 from this micro-batch's real images, token-weighted: per class, the sum of every visual token of the
    images carrying it and the number of those tokens (LF's dummy image excluded); sums and counts all-reduced
    first (every rank, every call), so f̃_k moves towards the mean over all tokens of all ranks."""
    bank = module.books.bank
    if plan.image_means is not None and plan.image_real.any():
        real = plan.image_real
        sums, counts = PrototypeBank.class_sums(plan.image_token_sums()[real], plan.image_labels[real],
                                                plan.image_token_counts()[real])
    else:
        sums = torch.zeros_like(bank.prototypes, device=device)
        counts = torch.zeros(bank.prototypes.shape[0], device=device)
    sums, counts = all_reduce_sums(sums.to(device), counts.to(device))
    bank.update(sums, counts)


def not_resumable_message(checkpoint, problems: list[str]) -> str:
    """A checkpoint with its weights but without optimizer / scheduler would restart both mid-run."""
    missing = "; ".join(p.split(": ", 1)[1] for p in problems)
    return (f"resume_from_checkpoint {checkpoint}: not a resumable checkpoint ({missing}): a final output folder or a "
            "checkpoint saved with `save_only_model: true`. Resuming it would restart the optimizer and the learning-"
            "rate schedule (warm-up again) in the middle of the run. Resume a checkpoint saved with its optimizer, or "
            "start a new run from these weights: `adapter_name_or_path` (LoRA) or `model_name_or_path` (full / "
            "freeze) with the same attok keys")


class _TrainingArgs(Protocol):
    """What the mixin reads of the trainer's ``TrainingArguments``."""

    @property
    def output_dir(self) -> str: ...  # TrainingArguments.__post_init__ replaces None by "trainer_output"

    @property
    def device(self) -> torch.device: ...

    @property
    def should_save(self) -> bool: ...

    @property
    def should_log(self) -> bool: ...


class _Trainer(Protocol):
    """What the mixin uses of transformers' ``Trainer``, the class it is composed with (``lf_patches.workflow``)."""

    model: nn.Module
    args: _TrainingArgs
    state: TrainerState

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]: ...

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None: ...

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None: ...

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None: ...


class _AttTokTrainer(_Trainer, Protocol):
    """A trainer with the mixin: the Trainer's parts, the run's AttTok context and the mixin's logging sums."""

    attok: AttTokContext
    _attok_totals: dict[str, float] | None
    _attok_no_image: int


class AttTokTrainerMixin:
    """NTP + λ·ACM, prototype updates, AttTok state saved / resumed with every checkpoint."""

    attok: AttTokContext

    # ---- optimizer -------------------------------------------------------------------------------------

    def get_decay_parameter_names(self: _AttTokTrainer, model: nn.Module) -> list[str]:
        names = cast(_Trainer, super()).get_decay_parameter_names(model)
        if self.attok.finetuning_type not in ROW_MASKED_TUNING:
            return names
        # Decoupled weight decay would shrink rows whose gradient is masked to zero (paper A.1's "frozen" rows).
        excluded = embedding_parameter_names(model)
        return [n for n in names if n not in excluded]

    # ---- loss ------------------------------------------------------------------------------------------

    def current_acm_weight(self: _AttTokTrainer) -> float:
        args = self.attok.args
        return acm_weight(args.attok_acm_weight, args.attok_acm_schedule, self.state.global_step, self.state.max_steps)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        module = module_of(self.model)
        if module is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if inputs.get("pixel_values_videos") is not None:
            from .compat import VIDEO_REASON

            raise AttTokError(f"step {self.state.global_step + 1}: the batch carries videos: {VIDEO_REASON}.")
        config = base_model_of(self.model).config
        plan = build_plan(inputs, module.token_ids, module.family.image_token_id(config),
                          image_sizes=module.family.image_sizes(inputs, config))
        module.plan = plan
        try:
            result = super().compute_loss(model, inputs, True, num_items_in_batch)
        finally:
            module.plan = None
        if not (isinstance(result, tuple) and len(result) == 2):
            raise AttTokError(
                "LLaMA-Factory's compute_loss returned no model outputs (a custom loss such as use_asft_loss?); "
                "AttTok needs (loss, outputs) to add λ·ACM.")
        ntp, outputs = result
        if module.acm is not None and plan.anchor_pos.numel() and plan.hidden is None:
            raise AttTokError(
                f"step {self.state.global_step + 1}: the batch has {plan.anchor_pos.numel()} attribute-token "
                "positions but the output head never saw the hidden states (ACM anchors, Eq. 9). Likely cause: a "
                "fused-loss kernel that skips lm_head(...), such as enable_liger_kernel; turn it off.")
        total = ntp
        acm_value = ntp.new_zeros(())
        weight = self.current_acm_weight() if module.acm is not None else 0.0
        if module.acm is not None:
            acm_value = acm_term(module, plan, ntp.device)
            total = total + weight * acm_value
        if module.acc is not None and plan.visual_calls == 0:
            total = total + _zero_participation(module.acc.parameters())
        update_prototypes(module, plan, ntp.device)
        self._attok_record(ntp, acm_value, weight, plan)
        return (total, outputs) if return_outputs else total

    # ---- logging ---------------------------------------------------------------------------------------

    def _attok_record(self: _AttTokTrainer, ntp, acm_value, weight: float, plan: BatchPlan) -> None:
        totals = getattr(self, "_attok_totals", None)
        if totals is None:
            totals = self._attok_totals = {"loss_ntp": 0.0, "loss_acm": 0.0, "acm_weight": 0.0, "n": 0}
        values = {"loss_ntp": float(ntp.detach()), "loss_acm": float(acm_value.detach())}
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:  # stop before the optimizer step writes non-finite weights (and before any save)
            raise AttTokError(
                f"step {self.state.global_step + 1}: {', '.join(f'{k} = {v}' for k, v in bad.items())}; stopping "
                f"instead of training (and saving) a broken model. Lower the learning rate or check the data.")
        totals["loss_ntp"] += values["loss_ntp"]
        totals["loss_acm"] += values["loss_acm"]
        totals["acm_weight"] += weight
        totals["n"] += 1
        self._attok_no_image = getattr(self, "_attok_no_image", 0) + plan.samples_with_attribute_no_image

    def log(self: _AttTokTrainer, logs: dict, *args, **kwargs) -> None:
        totals = getattr(self, "_attok_totals", None)
        if "loss" in logs and totals and totals["n"]:
            packed = torch.tensor([totals[k] for k in LOG_KEYS] + [totals["n"]], dtype=torch.float64)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                packed = packed.to(self.args.device)
                torch.distributed.all_reduce(packed)
            values = (packed[:-1] / packed[-1]).tolist()
            logs.update(dict(zip(LOG_KEYS, values, strict=True)))
            logs["attok_samples_without_image"] = self._attok_no_image
            self._attok_totals = None
        cast(_Trainer, super()).log(logs, *args, **kwargs)

    # ---- save / resume ---------------------------------------------------------------------------------

    def _complete_checkpoint(self, requested):
        """The checkpoint to resume from: an explicit one only when complete (else an error naming what is
        missing); LF's or transformers' automatic choice replaced by the newest complete checkpoint, the
        incomplete ones skipped by name (see :mod:`.checkpoints`)."""
        explicit = self.attok.explicit_resume
        if requested and explicit not in (None, True) and requested is not True:
            problems = checkpoint_problems(requested)
            if only_not_resumable(problems):
                raise AttTokError(not_resumable_message(requested, problems))
            if problems:
                complete, _ = last_complete_checkpoint(Path(requested).parent)
                hint = f"resume from {complete}, the last complete one" if complete else "no complete one is there"
                raise AttTokError(f"resume_from_checkpoint {requested}: an incomplete checkpoint (a save that did not "
                                  f"finish): {'; '.join(problems)}. {hint[0].upper() + hint[1:]}.")
            return requested
        if not requested:
            return requested
        chosen, skipped = last_complete_checkpoint(self.args.output_dir)
        weights_only = [(folder, problems) for folder, problems in skipped if only_not_resumable(problems)]
        if chosen is None and weights_only:
            raise AttTokError(not_resumable_message(*weights_only[0]) + " (auto-resume of output_dir "
                              f"{self.args.output_dir}; `overwrite_output_dir: true` starts the run over)")
        for folder, problems in skipped:
            why = "no optimizer / scheduler to resume with" if only_not_resumable(problems) else \
                "its save did not finish, or a file of it was damaged since"
            logger.warning("AttTok: skipping the checkpoint %s (%s): %s.", folder, "; ".join(problems), why)
        if chosen is None:
            logger.warning("AttTok: no complete checkpoint in %s; training starts from step 0.", self.args.output_dir)
            return None
        if skipped:
            logger.warning("AttTok: resuming from %s, the last complete checkpoint.", chosen)
        return str(chosen)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """One run per output folder (a lock), and a resume only of a complete checkpoint with this run's AttTok
        setup."""
        checkpoint = resume_from_checkpoint = self._complete_checkpoint(resume_from_checkpoint)
        if checkpoint:
            peft_config = getattr(self.model, "peft_config", {}).get("default")
            refuse_changed_resume(checkpoint, self.attok.resolved_vocab(), self.attok.token_ids,
                                  self.attok.args.to_dict(), self.attok.finetuning_type,
                                  lora_shape(peft_config) if peft_config is not None else None,
                                  self.attok.model_type, self.attok.base_weights,
                                  {k: v for k, v in self.attok.description().items()
                                   if k in ("template", "default_system", "enable_thinking")})
        lock = run_lock(self.args.output_dir) if self.args.should_save else contextlib.nullcontext()
        with lock:
            if self.args.should_save:
                for stale in remove_stale_temp_files(self.args.output_dir):
                    logger.warning("AttTok: removed %s, a temp file an interrupted save left behind.", stale)
            result = super().train(resume_from_checkpoint, *args, **kwargs)
        note = acm_chance_note(self.state.log_history, len(self.attok.token_ids))
        if note is not None and self.args.should_log:
            logger.info(note)
        return result

    def save_model(self: _AttTokTrainer, output_dir: str | None = None, _internal_call: bool = False) -> None:
        cast(_Trainer, super()).save_model(output_dir, _internal_call)
        folder = Path(output_dir or self.args.output_dir)
        module = module_of(self.model)
        if module is not None:
            save_state(module, folder / STATE_FILE_NAME, self.args.should_save)
        if self.args.should_save:
            description = {**self.attok.description(), "global_step": self.state.global_step}
            save_description(folder, self.attok.resolved_vocab(), description)

    def _load_optimizer_and_scheduler(self: _AttTokTrainer, checkpoint: str | None) -> None:
        cast(_Trainer, super())._load_optimizer_and_scheduler(checkpoint)
        module = module_of(self.model)
        if checkpoint is not None and module is not None:
            load_state(module, Path(checkpoint) / STATE_FILE_NAME)  # missing / unreadable: an error naming it
