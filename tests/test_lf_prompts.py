"""Evaluation prompts are LF's training prompts: for every family, a dataset with a `system` message and a
non-default `default_system`, the ids `attok predict` feeds the model equal the ids LF's SFT preprocessing makes
for the same sample, cut at the first answer token (the attribute token)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import base_args

from llamafactory_attok.eval.attribute_classifier import encode_sample, prompt_encoder, read_samples
from llamafactory_attok.tiny import FAMILIES, TEMPLATES, build_tiny_model

SYSTEM_ENTRY = {"file_name": "sys_test.json", "formatting": "sharegpt",
                "columns": {"messages": "messages", "images": "images"},
                "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                         "assistant_tag": "assistant", "system_tag": "system"}}


@pytest.fixture(scope="module")
def system_data(sample_data, tmp_path_factory):
    """A copy of the AttTok test set whose samples open with a `system` message, registered in dataset_info."""
    rows = json.loads((sample_data / "retina_attok_test.json").read_text())[:6]
    for i, row in enumerate(rows):
        if i % 2 == 0:  # odd samples keep no system message: the template's (default_system) applies
            row["messages"].insert(0, {"role": "system", "content": f"You are reading fundus photo {i}."})
        row["images"] = [str(sample_data / image) for image in row["images"]]
    folder = tmp_path_factory.mktemp("sysdata")
    (folder / "sys_test.json").write_text(json.dumps(rows))
    (folder / "dataset_info.json").write_text(json.dumps({"sys_test": SYSTEM_ENTRY}))
    return folder


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("default_system", [None, "Answer like a careful ophthalmologist."])
def test_predict_ids_are_the_training_ids_cut_at_the_answer(family, default_system, system_data, sample_data,
                                                            tmp_path_factory, monkeypatch):
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.data import template as lf_template
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    # LF writes default_system into its global template objects: give each case its own copies
    monkeypatch.setattr(lf_template, "TEMPLATES", {k: copy.copy(v) for k, v in lf_template.TEMPLATES.items()})
    model = build_tiny_model(tmp_path_factory.mktemp(family) / "m", family)
    args = base_args(model, system_data, tmp_path_factory.mktemp("out") / "o", attok=True, dataset="sys_test",
                     attok_vocab=str(sample_data / "retina_vocab.yaml"), template=TEMPLATES[family],
                     **({"default_system": default_system} if default_system else {}))
    model_args, data_args, training_args, _, _ = get_train_args(args)
    modules = load_tokenizer(model_args)
    tokenizer = modules["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    train_set = get_dataset(template, model_args, data_args, training_args, "sft", **modules)["train_dataset"]
    token_ids = set(tokenizer.convert_tokens_to_ids(
        ["<|fundus_no_dr|>", "<|fundus_mild_dr|>", "<|fundus_moderate_dr|>", "<|fundus_severe_dr|>",
         "<|fundus_proliferative_dr|>"]))

    encoder = prompt_encoder(modules["processor"], TEMPLATES[family], default_system)
    samples = read_samples(system_data / "sys_test.json")
    assert len(samples) == len(train_set) == 6
    for sample, trained in zip(samples, train_set, strict=True):
        cut = next(i for i, label in enumerate(trained["labels"]) if label in token_ids)
        encoded = encode_sample(encoder, sample, token_ids)
        assert encoded.input_ids == trained["input_ids"][:cut], (family, sample.index)
        text = tokenizer.decode(encoded.input_ids)
        if sample.index % 2 == 0:
            assert f"You are reading fundus photo {sample.index}." in text
        elif default_system and family.startswith("qwen2"):
            assert default_system in text
    batch = encoder.batch([encoded], "cpu")
    assert batch["input_ids"][0].tolist() == encoded.input_ids


def test_retrieval_reads_the_head_rows_it_used_to_materialise(tiny_models):
    """`head_rows` (K rows, PEFT trainable-token deltas applied) equals the old `head(eye(d))` read, bit for bit,
    on a PEFT model with trained attribute rows and after merging."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from llamafactory_attok.attach import base_model_of
    from llamafactory_attok.eval.attribute_classifier import retrieval_scores
    from llamafactory_attok.rows import head_rows

    base = AutoModelForImageTextToText.from_pretrained(tiny_models["qwen2_vl"])
    rows = [3, 5, 7]
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"],
                                            trainable_token_indices={"embed_tokens": rows, "lm_head": rows}))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dim() == 2 and p.shape[0] == len(rows):
                p.normal_()  # trained deltas, unlike the base rows
    token_ids = [5, 3, 2, 9]  # trained rows (any order) and ordinary rows
    head = base_model_of(model).get_output_embeddings()
    with torch.no_grad():
        old = head(torch.eye(base.config.get_text_config().hidden_size)).T[token_ids]
    assert torch.equal(head_rows(base_model_of(model), token_ids), old)
    assert not torch.equal(old[0], head.token_adapter.base_layer.weight[5])  # the delta really is in use
    hidden = torch.randn(3, old.shape[1])
    expected = torch.nn.functional.normalize(hidden, dim=-1) @ torch.nn.functional.normalize(old, dim=-1).T
    torch.testing.assert_close(retrieval_scores(model, hidden, token_ids), expected)
    merged = model.merge_and_unload()
    assert torch.equal(head_rows(merged, token_ids), old)
