"""Where the attributes and the images of one batch are (plain torch; no model code).

From ``input_ids`` / ``attention_mask`` / ``labels`` and the visual tokens per image it finds, for one forward pass:
which visual tokens belong to which image, which images are real (LF's collator inserts a dummy 64×64 image
with attention mask 0 into image-free batches), which attributes each image carries, and the positions whose
next-token label is an attribute token (the ACM anchors f^a, Eq. 9).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BatchPlan:
    token_mask: torch.Tensor | None  # (N_visual,) bool: visual tokens of real images (None: all tokens)
    image_sizes: list[int]  # visual tokens per image, in pooler order
    image_real: torch.Tensor  # (N_img,) bool
    image_labels: torch.Tensor  # (N_img, K) multi-hot
    anchor_batch: torch.Tensor  # (M,) batch index of each anchor position
    anchor_pos: torch.Tensor  # (M,) position t with labels[t + 1] an attribute token
    anchor_classes: torch.Tensor  # (M,) attribute index k
    samples_with_attribute_no_image: int = 0
    # filled during the forward by the model hooks
    image_means: torch.Tensor | None = None  # (N_img, d) fp32 mean visual token per image (pre-ACC)
    books: tuple[torch.Tensor, torch.Tensor] | None = None
    hidden: torch.Tensor | None = None
    visual_calls: int = 0

    def image_token_counts(self) -> torch.Tensor:
        """(N_img,) fp32: visual tokens of each image (``image_sizes``; differ under Qwen's dynamic resolution)."""
        device = self.image_means.device if self.image_means is not None else self.image_real.device
        return torch.tensor(self.image_sizes, dtype=torch.float32, device=device)

    def image_token_sums(self) -> torch.Tensor:
        """(N_img, d) fp32 sum of each image's visual tokens: mean × token count (the mean is an fp32 sum / n,
        so this gives the fp32 sum back to rounding). Eq. 5 averages over these tokens, not over images."""
        if self.image_means is None:
            raise ValueError("no visual tokens were recorded in this forward")
        return self.image_means * self.image_token_counts().unsqueeze(1)


def attribute_ids(token_ids: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(token_ids, dtype=torch.long, device=device)


def find_anchors(labels: torch.Tensor, token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch, position, class) of every position whose next-token label is attribute k (each occurrence)."""
    ids = attribute_ids(token_ids, labels.device)
    next_labels = labels[:, 1:]
    hits = torch.isin(next_labels, ids).nonzero(as_tuple=False)
    classes = (next_labels[hits[:, 0], hits[:, 1]].unsqueeze(1) == ids.unsqueeze(0)).float().argmax(1)
    return hits[:, 0], hits[:, 1], classes


def sample_attributes(labels: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """(B, K) multi-hot: which attribute tokens appear in each sample's labels."""
    ids = attribute_ids(token_ids, labels.device)
    return (labels.unsqueeze(-1) == ids.view(1, 1, -1)).any(1).to(torch.long)


def image_layout(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int, image_sizes: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample index and realness of each image: images fill image-token positions in row-major order."""
    positions = (input_ids == image_token_id).nonzero(as_tuple=False)  # row-major, like masked_scatter
    starts = torch.tensor([0, *image_sizes[:-1]], dtype=torch.long).cumsum(0).to(input_ids.device)
    if positions.shape[0] != sum(image_sizes):
        raise ValueError(f"{positions.shape[0]} image tokens in input_ids but the images give {sum(image_sizes)}")
    first = positions[starts]
    real = attention_mask[first[:, 0], first[:, 1]].bool()
    return first[:, 0], real


def qwen_image_sizes(inputs: dict, merge_size: int) -> list[int] | None:
    """Visual tokens per image of a Qwen-style batch: ``image_grid_thw`` over the merge window."""
    grid = inputs.get("image_grid_thw")
    if grid is None or inputs.get("pixel_values") is None:
        return None
    return (grid.prod(-1) // merge_size**2).tolist()


def build_plan(inputs: dict, token_ids: list[int], image_token_id: int, merge_size: int = 2,
               image_sizes: list[int] | None = None) -> BatchPlan:
    """The plan of one batch. ``image_sizes`` (visual tokens per image, from the model's family) defaults to the
    Qwen rule with ``merge_size``; None there, or no pixels, means a batch without images."""
    labels = inputs["labels"]
    anchor_batch, anchor_pos, anchor_classes = find_anchors(labels, token_ids)
    per_sample = sample_attributes(labels, token_ids)
    sizes = image_sizes if image_sizes is not None else qwen_image_sizes(inputs, merge_size)
    if sizes is None or inputs.get("pixel_values") is None:
        empty = torch.zeros(0, dtype=torch.bool, device=labels.device)
        return BatchPlan(
            token_mask=None, image_sizes=[], image_real=empty, image_labels=per_sample[:0],
            anchor_batch=anchor_batch, anchor_pos=anchor_pos, anchor_classes=anchor_classes,
            samples_with_attribute_no_image=int((per_sample.sum(1) > 0).sum()),
        )
    attention = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
    image_sample, image_real = image_layout(inputs["input_ids"], attention, image_token_id, sizes)
    token_mask = torch.repeat_interleave(image_real, torch.tensor(sizes, device=image_real.device))
    has_real_image = torch.zeros(labels.shape[0], dtype=torch.bool, device=labels.device)
    has_real_image[image_sample[image_real]] = True
    return BatchPlan(
        token_mask=token_mask,
        image_sizes=sizes,
        image_real=image_real,
        image_labels=per_sample[image_sample],
        anchor_batch=anchor_batch,
        anchor_pos=anchor_pos,
        anchor_classes=anchor_classes,
        samples_with_attribute_no_image=int(((per_sample.sum(1) > 0) & ~has_real_image).sum()),
    )


def image_means(visual: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """(N_img, d) fp32 mean visual token of each image (detached: prototypes are statistics).

    Accumulated in fp32 whatever the model dtype (bf16 training included), so ``BatchPlan.image_token_sums``
    recovers each image's token sum for the token-weighted prototype update (Eq. 5)."""
    return torch.stack([chunk.sum(0, dtype=torch.float32) / chunk.shape[0]
                        for chunk in torch.split(visual.detach(), sizes)])
