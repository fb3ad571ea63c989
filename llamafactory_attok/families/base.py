"""The per-family seam: what AttTok needs to know about one vision-language architecture.

AttTok touches a model in two places that differ between families (the rest is plain torch):

- the module whose forward output holds the visual tokens at LLM width d (the input of Eq. 6–7 and of the
  prototypes, Eq. 5) — a merger inside the vision tower (Qwen) or a multi-modal projector after it (Gemma-3,
  InternVL, LLaVA) — and how to read those tokens from, and write them back into, its output;
- how the visual tokens of one forward split into images (for the per-image token sums and counts of Eq. 5, the
  dummy-image mask and ACC maps), and which token id marks their places in ``input_ids``.

A family is a :class:`VisionFamily` subclass in its own module under ``llamafactory_attok/families/``, registered
with :func:`register_family` under the ``model_type`` values of the configs it serves. Whether the output head is
tied to the input embedding is read from the loaded weights (``rows.embedding_and_head``), which covers every
family; :meth:`VisionFamily.tied` reports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..plan import qwen_image_sizes

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class VisionFamily:
    """Base class of a family (see module docstring). Subclasses set ``name`` / ``model_types`` and override."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()  # LF templates that train it
    feature_path: str = ""  # dotted path from the transformers model to the module whose output is hooked

    # ---- where the visual tokens at LLM width are produced -------------------------------------------------

    def feature_module(self, base: nn.Module) -> nn.Module:
        """The module hooked by ACC and the prototypes (``feature_path`` from the base model)."""
        module = base
        for part in self.feature_path.split("."):
            child = getattr(module, part, None)
            if child is None:
                raise ValueError(f"{type(base).__name__} has no `{self.feature_path}` ({self.name} family)")
            module = child
        return module

    def read_features(self, output) -> torch.Tensor | None:
        """(N_visual, d) visual tokens of the hooked output, in the order they fill image-token positions."""
        raise NotImplementedError

    def write_features(self, output, features: torch.Tensor):
        """The hooked output with its visual tokens replaced by ``features`` (same layout as read)."""
        raise NotImplementedError

    # ---- widths ---------------------------------------------------------------------------------------------

    def text_width(self, config) -> int:
        return int(config.get_text_config().hidden_size)

    def feature_width(self, config) -> int:
        """Width of the visual tokens the hooked module emits (must equal :meth:`text_width`)."""
        return self.text_width(config)

    # ---- images of one batch --------------------------------------------------------------------------------

    def image_token_id(self, config) -> int:
        return int(getattr(config, "image_token_id", None) or config.image_token_index)

    def image_sizes(self, inputs: dict, config) -> list[int] | None:
        """Visual tokens per image, in feature order; None when the batch carries no pixels."""
        raise NotImplementedError

    def token_grids(self, inputs: dict, sizes: list[int], config) -> list[tuple[int, int] | None]:
        """(rows, cols) of each image's visual tokens for ACC maps (``sizes`` from :meth:`image_sizes`), None
        for an image whose tokens are not one grid."""
        return [None] * len(sizes)

    # ---- embeddings -----------------------------------------------------------------------------------------

    @staticmethod
    def tied(model: PreTrainedModel) -> bool:
        head = model.get_output_embeddings()
        from ..rows import stored_weight

        return head is not None and stored_weight(head) is stored_weight(model.get_input_embeddings())


class MergerFamily(VisionFamily):
    """Qwen-style: the vision tower's ``pooler_output`` is the merger output, flat (N_visual, d), at LLM width."""

    feature_path = "model.visual"

    def read_features(self, output) -> torch.Tensor | None:
        features = getattr(output, "pooler_output", None)
        return features if torch.is_tensor(features) else None

    def write_features(self, output, features: torch.Tensor):
        output.pooler_output = features
        return output

    def merge_size(self, config) -> int:
        return int(config.vision_config.spatial_merge_size)

    def image_sizes(self, inputs: dict, config) -> list[int] | None:
        return qwen_image_sizes(inputs, self.merge_size(config))

    def token_grids(self, inputs: dict, sizes: list[int], config) -> list[tuple[int, int] | None]:
        merge = self.merge_size(config)
        return [(h // merge, w // merge) for _, h, w in inputs["image_grid_thw"].tolist()]


class ProjectorFamily(VisionFamily):
    """LLaVA-style: a multi-modal projector maps (N_image, T, d_vision) to (N_image, T, d) at LLM width."""

    feature_path = "model.multi_modal_projector"

    def read_features(self, output) -> torch.Tensor | None:
        return output.reshape(-1, output.shape[-1]) if torch.is_tensor(output) else None

    def write_features(self, output, features: torch.Tensor):
        return features.reshape(output.shape)

    def tokens_per_image(self, inputs: dict, config) -> int:
        raise NotImplementedError

    def image_sizes(self, inputs: dict, config) -> list[int] | None:
        pixels = inputs.get("pixel_values")
        if pixels is None:
            return None
        return [self.tokens_per_image(inputs, config)] * int(pixels.shape[0])

    def token_grids(self, inputs: dict, sizes: list[int], config) -> list[tuple[int, int] | None]:
        sides = [int(round(size ** 0.5)) for size in sizes]
        return [(side, side) if side * side == size else None for side, size in zip(sides, sizes, strict=True)]
