"""One-forward attribute classifier: class probabilities from the attribute-token logits at the first answer
position — a single forward pass per sample, no generation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from ..testing import chat_inputs
from ..vocab import TOKEN_IN_TEXT


@dataclass
class Sample:
    index: int
    image: Path
    question: str
    label_token: str


def read_samples(dataset_json: str | Path, media_dir: str | Path | None = None) -> list[Sample]:
    """Sharegpt samples with one image; the label is the first attribute token of the answer."""
    path = Path(dataset_json)
    root = Path(media_dir) if media_dir else path.parent
    samples = []
    for index, row in enumerate(json.loads(path.read_text(encoding="utf-8"))):
        turns = row["messages"]
        answer = next(t["content"] for t in turns if t["role"] == "assistant")
        tokens = TOKEN_IN_TEXT.findall(answer)
        if not tokens:
            raise ValueError(f"{path}: sample {index}: the answer has no attribute token to score against")
        question = next(t["content"] for t in turns if t["role"] == "user").replace("<image>", "")
        samples.append(Sample(index, root / row["images"][0], question, tokens[0]))
    return samples


def load_model_for_inference(model_name_or_path: str, adapter: str | None = None, template: str = "qwen2_vl"):
    """Load through LLaMA-Factory's public loaders, so an AttTok folder comes back with its tokens, ACC and books."""
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_model, load_tokenizer

    args = {"model_name_or_path": model_name_or_path, "template": template, "infer_dtype": "float32"}
    if adapter:
        args.update(adapter_name_or_path=adapter, finetuning_type="lora")
    model_args, _, finetuning_args, _ = get_infer_args(args)
    modules = load_tokenizer(model_args)
    model = load_model(modules["tokenizer"], model_args, finetuning_args, is_trainable=False)
    return model, modules["tokenizer"], modules["processor"]


@torch.no_grad()
def attribute_probabilities(model, processor, samples: list[Sample], token_ids: list[int],
                            temperature: float = 1.0, device: str = "cpu") -> torch.Tensor:
    """(N, K) softmax over the attribute-token logits at the first answer position."""
    model.to(device).eval()
    rows = []
    for sample in tqdm(samples, desc="attribute classifier", leave=False):
        inputs = chat_inputs(processor, Image.open(sample.image).convert("RGB"), sample.question).to(device)
        logits = model(**inputs).logits[0, -1, token_ids].float()
        rows.append(torch.softmax(logits / temperature, dim=-1).cpu())
    return torch.stack(rows)
