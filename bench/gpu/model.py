"""The model the GPU check trains: random weights at a published config's dimensions (or the tiny scaling of it).

No weights are downloaded: the tokenizer is the offline stand-in of ``llamafactory_attok.tiny`` (a ~400-token
byte-level BPE with Qwen's special tokens), its ids written into the config; the embedding keeps the config's
``vocab_size`` rows, so the attribute tokens fit in spare rows as with the real tokenizer. The image processor is
pinned to exactly ``image_size``² (min = max pixels).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from .common import lf_dtype, sync, torch_dtype

# LLM width 64, two layers, a two-block vision tower whose merger reaches width 64 (as the repo's tiny Qwen models)
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_window_layers": 2, "vocab_size": 1024,
             "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}
TINY_VISION = {
    "qwen2_5_vl": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                   "fullatt_block_indexes": [1]},
    "qwen2_vl": {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2},
}
PROCESSORS = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen2_vl": "Qwen2VLProcessor"}
# config key -> the stand-in tokenizer's token
TOKEN_IDS = {"bos_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>", "pad_token_id": "<|endoftext|>",
             "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>",
             "vision_token_id": "<|vision_pad|>", "image_token_id": "<|image_pad|>",
             "video_token_id": "<|video_pad|>"}


def model_config(config_path: Path, tokenizer: Any, tiny: bool, dtype: str) -> Any:
    """The published config (dims kept, or scaled down with ``tiny``), token ids of the stand-in tokenizer."""
    from transformers import AutoConfig

    raw = json.loads(config_path.read_text())
    model_type = raw.pop("model_type")
    for key in ("architectures", "transformers_version", "torch_dtype"):
        raw.pop(key, None)
    if tiny:
        raw.update(copy.deepcopy(TINY_TEXT))
        raw["vision_config"].update(TINY_VISION[model_type])
    raw.update({key: tokenizer.convert_tokens_to_ids(token) for key, token in TOKEN_IDS.items()})
    if raw["vocab_size"] < len(tokenizer) + 64:
        raise SystemExit(f"{config_path}: vocab_size {raw['vocab_size']} leaves no room for the tokenizer")
    config = AutoConfig.for_model(model_type, **raw)
    config.dtype = lf_dtype(dtype)
    return config


def build_processor(model_type: str, tokenizer: Any, image_size: int) -> Any:
    """Qwen's processor with images pinned to exactly ``image_size``² (so every path sees the same tokens)."""
    import transformers
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    pixels = {"min_pixels": image_size * image_size, "max_pixels": image_size * image_size}
    image_processor = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2, **pixels)
    video_processor = Qwen2VLVideoProcessor(**pixels)
    cls = getattr(transformers, PROCESSORS[model_type])
    return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
               chat_template=tokenizer.chat_template)


def build_model(config_path: Path, model_dir: Path, *, tiny: bool, dtype: str, device: str, image_size: int) -> dict:
    """Random weights at the config's dims, created directly on ``device`` in ``dtype``, saved to ``model_dir``;
    returns what was built (the ``model`` entry of results.json)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from llamafactory_attok.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(family="qwen2_vl")
    config = model_config(config_path, tokenizer, tiny, dtype)
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch_dtype(dtype))
    sync(device)
    built = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    devices = sorted({str(p.device) for p in model.parameters()})
    start = time.perf_counter()
    model.save_pretrained(model_dir)
    build_processor(config.model_type, tokenizer, image_size).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    saved = time.perf_counter() - start
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    size = sum(f.stat().st_size for f in model_dir.iterdir() if f.is_file())
    return {"model_type": config.model_type, "parameters": params, "param_dtypes": dtypes, "built_on": devices,
            "hidden_size": config.text_config.hidden_size, "layers": config.text_config.num_hidden_layers,
            "vocab_rows": config.text_config.vocab_size, "tokenizer_size": len(tokenizer),
            "tied": bool(config.tie_word_embeddings), "build_s": round(built, 2), "save_s": round(saved, 2),
            "disk_gib": round(size / 2**30, 3)}
