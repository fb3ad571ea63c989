"""Tiny offline Qwen2-VL / Qwen2.5-VL models for tests, the demo and benchmarks.

Nothing here touches the network: the tokenizer is a byte-level BPE trained with ``tokenizers`` on a small
built-in corpus and wrapped in ``Qwen2TokenizerFast`` with the Qwen special tokens; the weights are random
(seeded). LLaMA-Factory loads the result with ``template: qwen2_vl``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

Family = Literal["qwen2_vl", "qwen2_5_vl"]
FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl")

QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

_CORPUS = """
system user assistant you are a helpful assistant. what is shown in this image? which disease does this image show?
answer with one of the following options. the answer is. choose from the candidates below.
fundus image retina diabetic retinopathy no mild moderate severe proliferative grade grading
chest x-ray pneumonia normal lung lungs opacity consolidation infiltrate breast ultrasound malignant benign tumor
mass lesion ct mri brain head abdomen kidney liver heart cardiomegaly effusion pleural fracture hemorrhage
yes no left right upper lower is there a in the of and with without evidence present absent
modality organ finding abnormality image shows this patient diagnosis severity level stage
0 1 2 3 4 5 6 7 8 9 , . : ; ? ! ( ) - _ / < > | [ ]
"""

SPECIAL_IDS_CONFIG_KEYS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}


def build_tiny_tokenizer(vocab_size: int = 400):
    """Train a byte-level BPE on the built-in corpus and wrap it as a Qwen2 fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=bpe,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    tokenizer.chat_template = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
        "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}"
        "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tokenizer


def _text_config(vocab_size: int, tokenizer, tied: bool) -> dict:
    return {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "tie_word_embeddings": tied,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    }


def build_tiny_config(family: Family, tokenizer, tied: bool = False, spare_rows: int = 0):
    """Config of a ~200k-parameter model whose vision tower outputs LLM width (64)."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    vocab_size = len(tokenizer) + spare_rows
    text = _text_config(vocab_size, tokenizer, tied)
    special_ids = {key: tokenizer.convert_tokens_to_ids(tok) for key, tok in SPECIAL_IDS_CONFIG_KEYS.items()}
    if family == "qwen2_vl":
        vision = {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
                  "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
        cls = Qwen2VLConfig
    elif family == "qwen2_5_vl":
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                  "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
                  "fullatt_block_indexes": [1]}
        cls = Qwen2_5_VLConfig
    else:
        raise ValueError(f"Unknown tiny-model family {family!r}; choose from {', '.join(FAMILIES)}.")
    return cls(text_config=text, vision_config=vision, tie_word_embeddings=tied, **special_ids)


def build_tiny_processor(family: Family, tokenizer):
    """Image processor (small pixel budget), video processor and tokenizer bundled as the family's processor."""
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    video_processor = Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    cls = Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor
    return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
               chat_template=tokenizer.chat_template)


def build_tiny_model(
    out_dir: str | os.PathLike,
    family: Family = "qwen2_vl",
    tied: bool = False,
    seed: int = 0,
    spare_rows: int = 0,
) -> Path:
    """Write a tiny model folder (config, seeded random weights, tokenizer, processors) and return its path.

    ``spare_rows`` adds unused embedding rows beyond the tokenizer, like Qwen2.5-VL's 151936 rows for
    151665 tokens, so that new tokens fit without a resize. The folder is written atomically.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    out = Path(out_dir)
    tokenizer = build_tiny_tokenizer()
    config = build_tiny_config(family, tokenizer, tied=tied, spare_rows=spare_rows)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    processor = build_tiny_processor(family, tokenizer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def chat_text(question: str, answer_prefix: str = "") -> str:
    """One image + question in the Qwen chat layout LF's ``qwen2_vl`` template produces."""
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n{answer_prefix}"
    )


def chat_inputs(processor, image, question: str, answer_prefix: str = ""):
    """Model inputs for one image + question (see :func:`chat_text`)."""
    return processor(text=[chat_text(question, answer_prefix)], images=[image], return_tensors="pt")
