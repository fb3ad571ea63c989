"""Only attribute rows train: SHA-256 of every other row of embed and head is unchanged after 6 AdamW steps with
weight decay 0.1 (LoRA via PEFT trainable_token_indices, full / freeze via gradient masks + a wd-0 group). A leak
shows from the first step: decoupled weight decay moves every non-zero row it reaches, and the rows of every token
in a batch get a gradient; a masked row has zero gradient and zero Adam moments, so its update stays exactly 0 at
every later step."""

from pathlib import Path

import pytest
import torch
from conftest import base_args
from lf_inprocess import run_sft
from safetensors.torch import load_file

from llamafactory_attok.tiny import build_tiny_tokenizer

ATTRIBUTE_IDS = list(range(400, 405))  # the tiny tokenizer has 400 tokens; the 5 RetinaMNIST tokens follow

CASES = {
    "qwen2_vl-lora": ("qwen2_vl", {"finetuning_type": "lora"}),
    "qwen2_vl-full": ("qwen2_vl", {"finetuning_type": "full"}),
    "qwen2_vl-freeze": ("qwen2_vl", {"finetuning_type": "freeze", "freeze_trainable_layers": 1}),
    "qwen2_vl_tied-lora": ("qwen2_vl_tied", {"finetuning_type": "lora"}),
    "qwen2_5_vl-lora": ("qwen2_5_vl", {"finetuning_type": "lora"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_only_attribute_rows_change(case, tiny_models, sample_data, tmp_path):
    model_key, overrides = CASES[case]
    args = base_args(tiny_models[model_key], sample_data, tmp_path / "out", attok=True, max_steps=6,
                     weight_decay=0.1, attok_vocab=str(sample_data / "retina_vocab.yaml"), **overrides)
    probe = run_sft(args)
    for start, end in zip(probe.start, probe.end, strict=True):
        changed = [i for i, (a, b) in enumerate(zip(start, end, strict=True)) if a != b]
        assert changed == ATTRIBUTE_IDS


def _keyword_mean(weight: torch.Tensor, keyword: str) -> torch.Tensor:
    ids = build_tiny_tokenizer()(keyword, add_special_tokens=False)["input_ids"]
    return weight[ids].float().mean(0)


@pytest.mark.parametrize(("model_key", "rows_after"), [("qwen2_vl", 448), ("qwen2_5_vl_spare", 464)])
def test_rows_initialised_from_keywords_by_token_id(model_key, rows_after, tiny_models, sample_data, tmp_path):
    """With a resize (400 -> 448) and without one (spare rows: 464 stay 464, LF would skip initialisation)."""
    args = base_args(tiny_models[model_key], sample_data, tmp_path / "out", attok=True, max_steps=1,
                     learning_rate=0.0, attok_vocab=str(sample_data / "retina_vocab.yaml"))
    probe = run_sft(args, keep_start_rows=True)
    original = load_file(str(Path(tiny_models[model_key]) / "model.safetensors"))
    embed_key = next(k for k in original if k.endswith("embed_tokens.weight"))
    head_key = next(k for k in original if k.endswith("lm_head.weight"))
    embed_rows, head_rows = probe.start_rows
    assert embed_rows.shape[0] == rows_after
    keywords = [line.split(": ", 1)[1].strip().strip('"') for line in
                (sample_data / "retina_vocab.yaml").read_text().splitlines() if line.startswith('"')]
    for token_id, keyword in zip(ATTRIBUTE_IDS, keywords, strict=True):
        torch.testing.assert_close(embed_rows[token_id], _keyword_mean(original[embed_key], keyword))
        torch.testing.assert_close(head_rows[token_id], _keyword_mean(original[head_key], keyword))
    torch.testing.assert_close(embed_rows[:400], original[embed_key][:400].float())
