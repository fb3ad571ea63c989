"""Per-family recipes for the tiny offline models of :mod:`llamafactory_attok.tiny.models`.

Each :class:`TinySpec` says which special tokens the family's tokenizer carries, how its config and processor are
built at toy size (LLM width 64, a two-layer vision tower whose output reaches width 64, images of a few visual
tokens) and how one image + question is laid out in the chat format of the LF template named in ``template``.
Qwen2-VL / Qwen2.5-VL keep the ``Qwen2TokenizerFast`` wrapping they always had; the other families wrap the same
byte-level BPE in the generic fast tokenizer with the named special tokens their processors read
(``tokenizer.image_token``, ``tokenizer.boi_token`` …).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from transformers import (
        BaseVideoProcessor,
        PreTrainedConfig,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        ProcessorMixin,
    )

WIDTH = 64  # LLM hidden size of every tiny model

QWEN_SPECIALS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)


@dataclass(frozen=True)
class TinySpec:
    """How to build one family's tiny model (see module docstring)."""

    family: str
    template: str  # LF template that loads it
    specials: tuple[str, ...]  # special tokens, the first ids of the vocabulary
    pad: str
    eos: str
    bos: str | None
    named: dict[str, str] = field(default_factory=dict)  # tokenizer attributes processors read (image_token …)
    # (tokenizer, vocab_size, tied, spec, **sizes) -> PretrainedConfig
    config: Callable[..., PreTrainedConfig] = field(kw_only=True)
    # (tokenizer, chat_template) -> ProcessorMixin
    processor: Callable[[PreTrainedTokenizerBase, str], ProcessorMixin] = field(kw_only=True)
    # (question, answer_prefix, template) -> chat text with one image placeholder
    prompt: Callable[[str, str, str | None], str] = field(kw_only=True)
    default_tied: bool = False
    finish: Callable[[PreTrainedModel], None] | None = None  # (model) -> None: fix-ups of the random weights


def _id(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


def _ids(tokenizer, **tokens: str) -> dict[str, int]:
    return {key: _id(tokenizer, tok) for key, tok in tokens.items()}


def _text(tokenizer, vocab_size: int, tied: bool, spec: TinySpec, **extra) -> dict:
    ids = _ids(tokenizer, pad_token_id=spec.pad, eos_token_id=spec.eos, bos_token_id=spec.bos or spec.pad)
    return {"vocab_size": vocab_size, "hidden_size": WIDTH, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
            "tie_word_embeddings": tied, **ids, **extra}


# ---- Qwen2-VL / Qwen2.5-VL / Qwen3-VL ----------------------------------------------------------------------

QWEN_IMAGE_IDS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                  "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}


class _QwenImageIds(TypedDict):
    """The ids of QWEN_IMAGE_IDS, as the keyword arguments of the Qwen-VL configs."""

    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int


def _qwen_image_ids(tokenizer) -> _QwenImageIds:
    ids = _ids(tokenizer, **QWEN_IMAGE_IDS)
    return _QwenImageIds(image_token_id=ids["image_token_id"], video_token_id=ids["video_token_id"],
                        vision_start_token_id=ids["vision_start_token_id"],
                        vision_end_token_id=ids["vision_end_token_id"])


def _qwen_prompt(question: str, answer_prefix: str = "", template: str | None = None) -> str:
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            f"<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n{answer_prefix}")


def _qwen3_prompt(question: str, answer_prefix: str = "", template: str | None = "qwen3_vl") -> str:
    """LF's reasoning template ``qwen3_vl`` puts an empty thought before a CoT-free answer; ``qwen3_vl_nothink``
    does not."""
    thought = "<think>\n\n</think>\n\n" if template in (None, "qwen3_vl") else ""
    return ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
            f"{question}<|im_end|>\n<|im_start|>assistant\n{thought}{answer_prefix}")


WIDE_HEAD_DIM = 32  # head size of a widened tiny Qwen2-VL (``width`` other than WIDTH)
SIZED_FAMILIES: tuple[str, ...] = ("qwen2_vl",)  # families whose tiny LLM accepts ``width`` / ``layers``


def _qwen2_vl_config(tokenizer, vocab_size: int, tied: bool, spec: TinySpec, width: int | None = None,
                     layers: int | None = None):
    """``width`` (LLM hidden size, a multiple of 32; default WIDTH) and ``layers`` (default 2) make a wider / deeper
    LLM for compute-bound timings: at a width other than WIDTH, heads of 32 (half as many KV heads), an MLP of 4 ×
    width, mrope [4, 6, 6]; the vision tower stays toy-sized, its merger projecting to ``width``."""
    from transformers import Qwen2VLConfig

    width = WIDTH if width is None else width
    sized: dict = {} if layers is None else {"num_hidden_layers": layers}
    mrope = [2, 3, 3]
    if width != WIDTH:
        if width <= 0 or width % WIDE_HEAD_DIM:
            raise ValueError(f"width must be a positive multiple of {WIDE_HEAD_DIM}, got {width}")
        heads = width // WIDE_HEAD_DIM
        sized |= {"hidden_size": width, "intermediate_size": 4 * width, "num_attention_heads": heads,
                  "num_key_value_heads": heads // 2 if heads % 2 == 0 else heads}
        mrope = [4, 6, 6]  # sums to WIDE_HEAD_DIM / 2
    if layers is not None and layers <= 0:
        raise ValueError(f"layers must be positive, got {layers}")
    text = _text(tokenizer, vocab_size, tied, spec, rope_scaling={"type": "mrope", "mrope_section": mrope}, **sized)
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": width, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2}
    return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tied,
                         **_qwen_image_ids(tokenizer))


def _qwen2_5_vl_config(tokenizer, vocab_size: int, tied: bool, spec: TinySpec):
    from transformers import Qwen2_5_VLConfig

    text = _text(tokenizer, vocab_size, tied, spec, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": WIDTH,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
              "fullatt_block_indexes": [1]}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tied,
                            **_qwen_image_ids(tokenizer))


def _qwen3_vl_config(tokenizer, vocab_size: int, tied: bool, spec: TinySpec):
    from transformers import Qwen3VLConfig

    text = _text(tokenizer, vocab_size, tied, spec, head_dim=16,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                  "mrope_interleaved": True})
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": WIDTH,
              "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 64,
              "deepstack_visual_indexes": [0]}
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tied,
                         **_qwen_image_ids(tokenizer))


def _qwen_processor(cls_name: str, patch_size: int):
    def build(tokenizer, chat_template: str):
        import transformers
        from transformers import Qwen2VLImageProcessor, Qwen3VLVideoProcessor

        side = patch_size * 2
        pixels = {"min_pixels": (side * 2) ** 2, "max_pixels": (side * 4) ** 2}
        image_processor = Qwen2VLImageProcessor(patch_size=patch_size, **pixels)
        if cls_name == "Qwen3VLProcessor":
            size = {"shortest_edge": pixels["min_pixels"], "longest_edge": pixels["max_pixels"]}
            video_processor: BaseVideoProcessor = Qwen3VLVideoProcessor(patch_size=patch_size, size=size)
        else:
            # exported at runtime, but missing from transformers' TYPE_CHECKING imports (what type checkers read)
            video_processor = transformers.Qwen2VLVideoProcessor(**pixels)  # type: ignore[attr-defined]
        cls = getattr(transformers, cls_name)
        return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                   chat_template=chat_template)

    return build


# ---- Gemma-3 (MedGemma) -------------------------------------------------------------------------------------

GEMMA3_TOKENS_PER_IMAGE = 4


def _gemma3_config(tokenizer, vocab_size: int, tied: bool, spec: TinySpec):
    from transformers import Gemma3Config

    text = _text(tokenizer, vocab_size, tied, spec, head_dim=16, query_pre_attn_scalar=16, sliding_window=64,
                 layer_types=["sliding_attention", "full_attention"])
    text["hidden_activation"] = "gelu_pytorch_tanh"
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 56, "patch_size": 14}
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=GEMMA3_TOKENS_PER_IMAGE,
                        tie_word_embeddings=tied,
                        boi_token_index=_id(tokenizer, "<start_of_image>"),
                        eoi_token_index=_id(tokenizer, "<end_of_image>"),
                        image_token_index=_id(tokenizer, "<image_soft_token>"))


def _gemma3_finish(model) -> None:
    """transformers initialises Gemma-3's projection to zeros (real checkpoints overwrite it); a random tiny model
    would then feed all-zero visual tokens and no image could ever be told from another."""
    import torch

    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, model.config.initializer_range)


def _gemma3_processor(tokenizer, chat_template: str):
    from transformers import Gemma3ImageProcessor, Gemma3Processor

    image_processor = Gemma3ImageProcessor(size={"height": 56, "width": 56})
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template,
                           image_seq_length=GEMMA3_TOKENS_PER_IMAGE)


def _gemma3_prompt(question: str, answer_prefix: str = "", template: str | None = None) -> str:
    return f"<bos><start_of_turn>user\n<start_of_image>{question}<end_of_turn>\n<start_of_turn>model\n{answer_prefix}"


# ---- InternVL (HF-native, InternVL3 layout) -----------------------------------------------------------------

INTERNVL_TILE = 112
INTERNVL_TOKENS_PER_TILE = 16  # (112 / 14)² · 0.5²; LF's intern_vl system prompt is long, so not fewer


def _intern_vl_config(tokenizer, vocab_size: int, tied: bool, spec: TinySpec):
    from transformers import InternVLConfig

    text = {**_text(tokenizer, vocab_size, tied, spec), "model_type": "qwen2"}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": [INTERNVL_TILE, INTERNVL_TILE], "patch_size": [14, 14]}
    return InternVLConfig(vision_config=vision, text_config=text, image_seq_length=INTERNVL_TOKENS_PER_TILE,
                          tie_word_embeddings=tied, image_token_id=_id(tokenizer, "<IMG_CONTEXT>"))


def _intern_vl_processor(tokenizer, chat_template: str):
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    tile = {"height": INTERNVL_TILE, "width": INTERNVL_TILE}
    image_processor = GotOcr2ImageProcessor(size=tile, crop_to_patches=False)
    video_processor = InternVLVideoProcessor(size=tile)
    return InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                             image_seq_length=INTERNVL_TOKENS_PER_TILE, chat_template=chat_template)


def _intern_vl_prompt(question: str, answer_prefix: str = "", template: str | None = None) -> str:
    return f"<|im_start|>user\n<IMG_CONTEXT>\n{question}<|im_end|>\n<|im_start|>assistant\n{answer_prefix}"


# ---- LLaVA-1.5 ----------------------------------------------------------------------------------------------

def _llava_config(tokenizer, vocab_size: int, tied: bool, spec: TinySpec):
    from transformers import LlavaConfig

    text = {**_text(tokenizer, vocab_size, tied, spec), "model_type": "llama"}
    vision = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "image_size": 28, "patch_size": 14, "projection_dim": 32}
    return LlavaConfig(vision_config=vision, text_config=text, image_seq_length=4, tie_word_embeddings=tied,
                       vision_feature_layer=-2, vision_feature_select_strategy="default",
                       image_token_index=_id(tokenizer, "<image>"))


def _llava_processor(tokenizer, chat_template: str):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=chat_template)


def _llava_prompt(question: str, answer_prefix: str = "", template: str | None = None) -> str:
    return f"USER: <image>\n{question} ASSISTANT:{answer_prefix}"


MODEL_TYPE_ALIASES = {"internvl": "intern_vl"}  # config model_type -> family name used here and by LF templates

SPECS: dict[str, TinySpec] = {
    spec.family: spec
    for spec in (
        TinySpec("qwen2_vl", "qwen2_vl", QWEN_SPECIALS, "<|endoftext|>", "<|im_end|>", None,
                 config=_qwen2_vl_config, processor=_qwen_processor("Qwen2VLProcessor", 14), prompt=_qwen_prompt),
        TinySpec("qwen2_5_vl", "qwen2_vl", QWEN_SPECIALS, "<|endoftext|>", "<|im_end|>", None,
                 config=_qwen2_5_vl_config, processor=_qwen_processor("Qwen2_5_VLProcessor", 14),
                 prompt=_qwen_prompt),
        TinySpec("qwen3_vl", "qwen3_vl", QWEN_SPECIALS, "<|endoftext|>", "<|im_end|>", None,
                 config=_qwen3_vl_config, processor=_qwen_processor("Qwen3VLProcessor", 16), prompt=_qwen3_prompt),
        TinySpec("gemma3", "gemma3",
                 ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                  "<end_of_image>", "<image_soft_token>"),
                 "<pad>", "<eos>", "<bos>",
                 named={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                        "eoi_token": "<end_of_image>"},
                 config=_gemma3_config, processor=_gemma3_processor, prompt=_gemma3_prompt, default_tied=True,
                 finish=_gemma3_finish),
        TinySpec("intern_vl", "intern_vl",
                 ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
                 "<|endoftext|>", "<|im_end|>", None,
                 named={"start_image_token": "<img>", "end_image_token": "</img>",
                        "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
                 config=_intern_vl_config, processor=_intern_vl_processor, prompt=_intern_vl_prompt),
        TinySpec("llava", "llava", ("<unk>", "<s>", "</s>", "<image>"), "<unk>", "</s>", "<s>",
                 named={"image_token": "<image>"},
                 config=_llava_config, processor=_llava_processor, prompt=_llava_prompt),
    )
}
