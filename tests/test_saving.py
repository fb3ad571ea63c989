"""Save → reload → equal outputs: adapter folder (chat / predict path) and LF's export (merged folder).
Also: ACC touches only real image tokens of the loaded model."""

import pytest
import torch
from conftest import base_args
from lf_inprocess import embeds_seen_by_llm, last_logits, run_sft
from PIL import Image

from llamafactory_attok.attach import base_model_of, module_of
from llamafactory_attok.eval.attribute_classifier import load_model_for_inference, read_samples
from llamafactory_attok.plan import build_plan
from llamafactory_attok.tiny import chat_inputs

pytestmark = pytest.mark.slow
TOKEN_IDS = [400, 401, 402, 403, 404]


@pytest.fixture(scope="module")
def trained(tiny_models, sample_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "adapter"
    probe = run_sft(base_args(tiny_models["qwen2_5_vl"], sample_data, out, attok=True, max_steps=8,
                              learning_rate=5e-3))
    return out, probe.model


def _inputs(processor, sample_data):
    sample = read_samples(sample_data / "retina_attok_test.json")[3]
    return chat_inputs(processor, Image.open(sample.image).convert("RGB"), sample.question)


def test_adapter_reload_gives_the_training_time_logits(trained, tiny_models, sample_data):
    out, training_model = trained
    model, tokenizer, processor = load_model_for_inference(str(tiny_models["qwen2_5_vl"]), adapter=str(out))
    assert tokenizer.convert_tokens_to_ids("<|fundus_no_dr|>") == 400
    inputs = _inputs(processor, sample_data)
    reloaded, original = last_logits(model, inputs), last_logits(training_model, inputs)
    torch.testing.assert_close(reloaded[TOKEN_IDS], original[TOKEN_IDS], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reloaded[:400], original[:400], atol=1e-5, rtol=1e-5)
    assert module_of(model).books.bank.seen.all()


def test_export_merges_into_a_folder_that_reloads_with_equal_logits(trained, tiny_models, sample_data, tmp_path):
    out, training_model = trained
    export = tmp_path / "merged"
    from llamafactory.train.tuner import export_model

    export_model({  # what `llamafactory-cli export CONFIG` runs, in this process
        "model_name_or_path": str(tiny_models["qwen2_5_vl"]), "adapter_name_or_path": str(out),
        "template": "qwen2_vl", "finetuning_type": "lora", "export_dir": str(export), "export_device": "cpu",
        "infer_dtype": "float32"})
    assert {"attok_state.safetensors", "attok_vocab.yaml", "attok_config.json"} <= {p.name for p in export.iterdir()}
    model, _, processor = load_model_for_inference(str(export))
    inputs = _inputs(processor, sample_data)
    torch.testing.assert_close(last_logits(model, inputs)[TOKEN_IDS], last_logits(training_model, inputs)[TOKEN_IDS],
                               atol=1e-5, rtol=1e-5)


def test_acc_changes_only_real_image_tokens(trained, tiny_models, sample_data):
    out, _ = trained
    model, tokenizer, processor = load_model_for_inference(str(tiny_models["qwen2_5_vl"]), adapter=str(out))
    inputs = _inputs(processor, sample_data)
    image_rows = inputs["input_ids"][0] == base_model_of(model).config.image_token_id
    acc = module_of(model).acc
    with_acc = embeds_seen_by_llm(model, inputs)
    acc.gamma = 0.0
    without_acc = embeds_seen_by_llm(model, inputs)
    acc.gamma = 0.1
    assert torch.equal(with_acc[~image_rows], without_acc[~image_rows])  # text untouched, bit for bit
    assert (with_acc[image_rows] != without_acc[image_rows]).any(-1).all()  # every image token changed
    # the same image as LF's dummy (attention mask 0 on its tokens): left exactly as the tower produced it
    dummy = dict(inputs)
    dummy["attention_mask"] = inputs["attention_mask"].masked_fill(image_rows.unsqueeze(0), 0)
    dummy["labels"] = torch.full_like(inputs["input_ids"], -100)
    plan = build_plan(dummy, TOKEN_IDS, base_model_of(model).config.image_token_id, 2)
    assert not plan.image_real.any()
    acc.gamma = 0.0
    reference = embeds_seen_by_llm(model, dummy)
    acc.gamma = 0.1
    assert torch.equal(embeds_seen_by_llm(model, dummy, plan), reference)
