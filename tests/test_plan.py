"""Batch plan: ACM anchors (each occurrence), per-image attributes, LF's dummy image detected."""

import torch

from llamafactory_attok.plan import build_plan, find_anchors

IGNORE = -100
IMG = 9
ATTR = [50, 51]


def test_anchors_are_positions_before_each_attribute_label():
    labels = torch.tensor([[IGNORE, IGNORE, 50, 7, 51, 8], [IGNORE, IGNORE, IGNORE, 51, 3, IGNORE]])
    batch, pos, classes = find_anchors(labels, ATTR)
    assert batch.tolist() == [0, 0, 1] and pos.tolist() == [1, 3, 2] and classes.tolist() == [0, 1, 1]


def test_plan_maps_images_to_samples_and_flags_dummy():
    # sample 0: one real image (4 tokens) and attribute 0; sample 1: LF's dummy image (mask 0) and attribute 1
    input_ids = torch.tensor([[1, IMG, IMG, IMG, IMG, 2, 50, 3], [IMG, IMG, IMG, IMG, 4, 51, 5, 0]])
    attention = torch.tensor([[1] * 8, [0, 0, 0, 0, 1, 1, 1, 0]])
    labels = torch.tensor([[IGNORE] * 6 + [50, 3], [IGNORE] * 5 + [51, 5, IGNORE]])
    inputs = {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
              "pixel_values": torch.zeros(32, 3), "image_grid_thw": torch.tensor([[1, 4, 4], [1, 4, 4]])}
    plan = build_plan(inputs, ATTR, IMG, merge_size=2)
    assert plan.image_sizes == [4, 4]
    assert plan.image_real.tolist() == [True, False]
    assert plan.token_mask.tolist() == [True] * 4 + [False] * 4
    assert plan.image_labels.tolist() == [[1, 0], [0, 1]]
    assert plan.samples_with_attribute_no_image == 1


def test_plan_without_images():
    labels = torch.tensor([[IGNORE, 50, 1]])
    plan = build_plan({"input_ids": torch.tensor([[1, 50, 1]]), "labels": labels}, ATTR, IMG, 2)
    assert plan.token_mask is None and plan.image_sizes == [] and plan.samples_with_attribute_no_image == 1
