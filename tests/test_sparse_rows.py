"""The row-sparse trainable-token forward gives PEFT's results without V×d copies: same logits and Δ
gradients on untied, tied (Qwen2-VL-2B style) and scaled-embedding (Gemma-3) heads, and the same per-step losses in
an LF LoRA run; PEFT's saved format is untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import base_args, log_history
from lf_inprocess import run_sft

from llamafactory_attok.sparse_rows import use_sparse_rows
from llamafactory_attok.tiny import build_tiny_model


@pytest.mark.parametrize(("family", "tied"), [("qwen2_vl", False), ("qwen2_vl", True), ("gemma3", None)])
def test_same_logits_and_delta_gradients_as_peft(family, tied, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(build_tiny_model(tmp_path / "m", family, tied=tied),
                                                       dtype=torch.float32)
    ids = [5, 17, 300]
    tied_head = base.config.get_text_config().tie_word_embeddings
    indices = ids if tied_head else {"embed_tokens": ids, "lm_head": ids}
    torch.manual_seed(0)
    dense = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj"],
                                                           trainable_token_indices=indices))
    with torch.no_grad():
        for name, param in dense.named_parameters():
            if "trainable_tokens_delta" in name:
                param.add_(torch.randn_like(param) * 0.1)  # rows that differ from the base
    sparse = copy.deepcopy(dense)
    assert use_sparse_rows(sparse) == 2
    assert sparse.state_dict().keys() == dense.state_dict().keys()  # PEFT's format, unchanged
    tokens = torch.tensor([[1, 5, 9, 300, 17, 2, 5]])
    logits = [model(input_ids=tokens).logits for model in (dense, sparse)]
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=1e-5)
    for value in logits:
        value.square().mean().backward()
    grads = [{n: p.grad for n, p in model.named_parameters() if p.grad is not None} for model in (dense, sparse)]
    assert grads[0].keys() == grads[1].keys() and any("trainable_tokens_delta" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("model_key", ["qwen2_vl", "qwen2_vl_tied"])
def test_lf_lora_run_has_the_same_losses_as_with_peft_forward(model_key, tiny_models, sample_data, tmp_path,
                                                               monkeypatch):
    args = dict(attok=True, max_steps=3, attok_vocab=str(sample_data / "retina_vocab.yaml"))
    run_sft(base_args(tiny_models[model_key], sample_data, tmp_path / "sparse", **args))
    import llamafactory_attok.lf_patches.loader as loader

    monkeypatch.setattr(loader, "use_sparse_rows", lambda model: 0)  # PEFT 0.18's own forward
    run_sft(base_args(tiny_models[model_key], sample_data, tmp_path / "dense", **args))
    sparse, dense = log_history(tmp_path / "sparse"), log_history(tmp_path / "dense")
    assert len(sparse) == len(dense) == 3
    for a, b in zip(sparse, dense, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"],
                                                                                                   rel=1e-4)
