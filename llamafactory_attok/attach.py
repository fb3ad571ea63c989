"""Surgery: build the AttTok module (books, ACC, θ), hang it on a model and wire its hooks.

The module lives at ``<base model>.attok`` so the Trainer optimises it and DeepSpeed partitions it (it must
exist before the Trainer is built). Two hooks connect it to the model:

- a forward hook on the module whose output holds the visual tokens at LLM width — named by the model's family
  (:mod:`llamafactory_attok.families`: the Qwen merger, or the multi-modal projector of Gemma-3 / InternVL /
  LLaVA) — applies ACC (Eq. 6–7) to real image tokens and records per-image mean tokens for Eq. 5;
- a forward pre-hook on the output head records the final hidden states (f^a of Eq. 9), so the model is not
  asked for ``output_hidden_states`` of every layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .acc import ACCAdapter
from .acm import ACMProjection
from .args import AttTokArguments
from .books import AttributeBooks, check_ranks_agree
from .errors import AttTokError
from .families import VisionFamily, family_for
from .log import get_logger
from .plan import BatchPlan, image_means
from .rows import gathered, is_zero3

logger = get_logger(__name__)


def base_model_of(model: nn.Module) -> Any:
    """The transformers model under a PEFT wrapper (or the model itself); typed ``Any`` since transformers'
    ``PreTrainedModel`` API (``config``, ``get_input_embeddings`` …) is what callers use."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def family_of(base: nn.Module) -> VisionFamily:
    return family_for(base.config)


class AttTokModule(nn.Module):
    """Books, ACC and θ of one run, plus the per-forward :class:`BatchPlan` the hooks fill."""

    def __init__(self, args: AttTokArguments, token_ids: list[int], keyword_init: torch.Tensor, seed: int) -> None:
        super().__init__()
        dim = keyword_init.shape[1]
        generator = torch.Generator().manual_seed(seed)  # identical on every rank: ZeRO needs equal replicas
        self.args = args
        self.dim = dim
        self.token_ids = list(token_ids)
        self.books = AttributeBooks(keyword_init, momentum=args.attok_ema)
        self.acc = ACCAdapter(dim, args.attok_acc_gamma, generator) if args.attok_acc else None
        self.acm = ACMProjection(dim, args.attok_tau) if args.attok_acm else None
        self.plan: BatchPlan | None = None
        self.family: VisionFamily | None = None  # set by attach()
        self.expects_trainer = False  # a training run: every training forward must come through the AttTok trainer
        self._embedding: list[nn.Module] = []  # a plain list: the model's embedding must not become our submodule

    @property
    def embedding(self) -> nn.Module:
        return self._embedding[0]

    def book_entries(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """B (K, 3, d) and validity, with a_k read through the (possibly PEFT-wrapped) input embedding."""
        ids = torch.tensor(self.token_ids, dtype=torch.long, device=device)
        return self.books(self.embedding(ids))

    # ---- hooks ------------------------------------------------------------------------------------------

    def on_visual_output(self, module, args, kwargs, output):
        """Vision-tower forward hook: ACC on real image tokens; per-image means for the prototypes."""
        features = self.family.read_features(output)
        if features is None:
            return output
        if features.shape[-1] != self.dim:
            raise AttTokError(
                f"{self.family.name}: visual tokens are {features.shape[-1]} wide but the language model is "
                f"{self.dim} wide; AttTok needs the vision output at LLM width.")
        plan = self.plan
        if plan is not None:
            plan.visual_calls += 1
            if plan.visual_calls > 1:  # a video call, or a gradient-checkpoint recompute: leave untouched
                return output
            if plan.image_sizes:
                plan.image_means = image_means(features, plan.image_sizes)
        if self.acc is None:
            return output
        books, valid = self.book_entries(features.device)
        token_mask = plan.token_mask if plan is not None else None
        refined, _ = self.acc(features, books, valid, token_mask)
        if plan is not None:
            plan.books = (books, valid)
        return self.family.write_features(output, refined)

    def on_head_input(self, module, args):
        """Output-head pre-hook: keep the final hidden states for the ACM anchors.

        In a training run, a training-mode forward without a batch plan means LF's trainer is not the AttTok
        trainer (the trainer swap was bypassed): stop instead of training without ACM and prototypes.
        """
        if self.plan is None:
            if self.expects_trainer and module.training and torch.is_grad_enabled():
                raise AttTokError(
                    "a training forward reached the model outside the AttTok trainer (LLaMA-Factory's "
                    "CustomSeq2SeqTrainer was not replaced): ACM and the prototypes would silently not train.")
            return
        if self.acm is not None and args:
            self.plan.hidden = args[0]

    def on_model_input(self, module, args, kwargs):
        """Model forward pre-hook: refuse videos, in training and at inference alike (see ``compat.VIDEO_REASON``)."""
        if kwargs.get("pixel_values_videos") is not None:
            from .compat import VIDEO_REASON

            raise AttTokError(f"a batch carries videos (pixel_values_videos): {VIDEO_REASON}.")

    # ---- state -----------------------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Parameters plus prototype statistics, as CPU fp32 tensors (call inside :func:`gathered` under ZeRO-3)."""
        state = {f"param.{n}": p.detach().float().cpu().clone() for n, p in self.named_parameters()}
        state.update({f"bank.{k}": v for k, v in self.books.bank.state_dict().items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters())
        missing = sorted(set(params) - {k[len("param."):] for k in state if k.startswith("param.")})
        if missing:
            raise ValueError(f"AttTok state lacks {', '.join(missing)} (saved with other attok_acc/attok_acm?)")
        with torch.no_grad():
            for name, param in params.items():
                param.data.copy_(state[f"param.{name}"].to(param.dtype))
        self.books.bank.load_state_dict({"prototypes": state["bank.prototypes"], "seen": state["bank.seen"]})


def keyword_embeddings(model: Any, keyword_ids: list[list[int]]) -> torch.Tensor:
    """(K, d) mean of each keyword's input embeddings (§4.1's e_ind initialisation).

    Rows are scaled like the embedding module scales them on lookup (Gemma's √d ``embed_scale``; 1 elsewhere),
    so e_ind starts where the text the model reads lives.
    """
    from .rows import stored_weight

    embedding = model.get_input_embeddings()
    scale = float(getattr(embedding, "embed_scale", 1.0))
    weight = stored_weight(embedding)  # keyword rows are never attribute rows: the stored rows are the ones used
    with gathered([weight], modify=False):
        return torch.stack([weight.data[list(ids)].float().mean(0) * scale for ids in keyword_ids]).cpu()


def attach(model: nn.Module, args: AttTokArguments, token_ids: list[int], keyword_ids: list[list[int]],
           seed: int) -> AttTokModule:
    """Create ``<base>.attok`` and register the hooks (idempotent per model)."""
    base = base_model_of(model)
    existing = getattr(base, "attok", None)
    if isinstance(existing, AttTokModule):
        return existing
    module = AttTokModule(args, token_ids, keyword_embeddings(base, keyword_ids), seed)
    module.family = family_for(base.config)
    module.to(next(base.parameters()).device)
    if module.acc is not None and is_zero3():  # ACC may read W_K outside attok_k's forward (see acc.py)
        import deepspeed

        deepspeed.zero.register_external_parameter(module.acc, module.acc.attok_k.weight)
    base.attok = module
    module._embedding.append(base.get_input_embeddings())
    object.__setattr__(module, "_hooks", [
        module.family.feature_module(base).register_forward_hook(module.on_visual_output, with_kwargs=True),
        base.get_output_embeddings().register_forward_pre_hook(module.on_head_input),
        # the inner model (PEFT calls the outer model's .forward directly, which skips hooks on it)
        getattr(base, "model", base).register_forward_pre_hook(module.on_model_input, with_kwargs=True),
    ])
    logger.info("AttTok: family %s, visual tokens hooked at %s, output head %s", module.family.name,
                module.family.feature_path, "tied to the embedding" if module.family.tied(base) else "untied")
    # never written into model weights by save_pretrained: it has its own file
    ignore = list(getattr(base, "_keys_to_ignore_on_save", None) or [])
    base._keys_to_ignore_on_save = ignore + [f"attok.{name}" for name in module.state_dict()]
    return module


def module_of(model: nn.Module) -> AttTokModule | None:
    return getattr(base_model_of(model), "attok", None)


def save_state(module: AttTokModule, path, should_write: bool) -> None:
    """Gather (collective under ZeRO-3: call on every rank) and write the AttTok state atomically."""
    from safetensors.torch import save

    from .state import atomic_write_bytes

    with gathered(list(module.parameters()), modify=False):
        state = module.trainable_state()
    ranks = check_ranks_agree(module.books.bank)
    if ranks > 1:
        logger.info("AttTok prototypes identical on %d ranks", ranks)
    if should_write:
        atomic_write_bytes(path, save(state))


def load_state(module: AttTokModule, path) -> None:
    """Load the state file into ``module`` (collective under ZeRO-3: rank 0 writes, then broadcasts)."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise AttTokError(f"{path}: AttTok state file missing; without it ACC and the books would start fresh.")
    try:
        state = load_file(str(path))
    except Exception as err:  # SafetensorError, OSError, ...: re-raised with the file named
        raise AttTokError(f"{path}: unreadable AttTok state ({type(err).__name__}: {err}).") from err
    try:
        with gathered(list(module.parameters()), modify=True):
            module.load_trainable_state(state)
    except (KeyError, ValueError, RuntimeError) as err:
        raise AttTokError(f"{path}: AttTok state does not fit this run ({type(err).__name__}: {err}).") from err
