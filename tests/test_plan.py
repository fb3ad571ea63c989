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


def test_real_qwen2_vl_forward_with_two_image_sizes_gives_the_token_weighted_prototype(tmp_path):
    """A tiny Qwen2-VL forward, one 56² image (4 visual tokens) and one 112² image (16) in one batch, both carrying
    attribute 0: the prototype moves to μ·old + (1−μ)·(sum of the 20 pre-ACC visual tokens / 20)."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from llamafactory_attok.args import AttTokArguments
    from llamafactory_attok.attach import attach
    from llamafactory_attok.tiny import build_tiny_model, chat_text
    from llamafactory_attok.trainer import update_prototypes

    folder = build_tiny_model(tmp_path / "qwen2_vl", "qwen2_vl")
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    token_ids = [300, 301]  # two existing rows stand in for attribute tokens (no vocabulary change needed here)
    module = attach(model, AttTokArguments(attok=True), token_ids, [[10, 11], [12]], seed=0)
    images = [Image.new("RGB", (56, 56), (200, 30, 30)), Image.new("RGB", (112, 112), (20, 90, 220))]
    inputs = processor(text=[chat_text("what is shown?")] * 2, images=[[images[0]], [images[1]]], padding=True,
                       return_tensors="pt")
    labels = torch.full_like(inputs["input_ids"], IGNORE)
    labels[:, -1] = token_ids[0]  # both answers carry attribute 0
    inputs["labels"] = labels
    plan = build_plan(inputs, token_ids, model.config.image_token_id, merge_size=2)
    assert plan.image_sizes == [4, 16] and plan.image_real.all()

    captured = []
    model.model.visual.register_forward_hook(lambda mod, args, out: captured.append(out.pooler_output.detach()),
                                             prepend=True)  # before ACC's hook: the tokens Eq. 5 reads
    bank = module.books.bank
    old = torch.linspace(-1.0, 1.0, module.dim)
    bank.prototypes[0] = old
    bank.seen[0] = True
    module.plan = plan
    with torch.no_grad():
        model(**{k: v for k, v in inputs.items() if k != "labels"})
    module.plan = None
    update_prototypes(module, plan, torch.device("cpu"))

    tokens = captured[0]
    assert tokens.shape == (20, module.dim)
    mu = module.args.attok_ema
    expected = mu * old + (1 - mu) * tokens.sum(0) / 20
    torch.testing.assert_close(bank.prototypes[0], expected, atol=1e-6, rtol=1e-6)
    per_image = mu * old + (1 - mu) * (tokens[:4].mean(0) + tokens[4:].mean(0)) / 2
    assert (bank.prototypes[0] - per_image).abs().max() > 1e-4  # the per-image-mean reading differs here
    assert not bank.seen[1]
