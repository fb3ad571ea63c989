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
from llamafactory_attok.testing import FAMILIES, TEMPLATES, build_tiny_model

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
    assert encoder.batch([encoded], "cpu")["input_ids"].dtype == torch.long
