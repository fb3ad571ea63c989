"""One-forward classifiers (beyond the paper's generation-based protocol).

- attribute classifier: class probabilities from the attribute-token logits at the first answer position — one
  forward pass per sample, no generation; optional temperature calibrated on a validation split;
- retrieval (Table 6): cosine similarity between the final hidden state at that position and the attribute
  tokens' output-head rows, i.e. the head rows used as classifier weights;
- likelihood scoring, the fair counterpart for vanilla models without attribute tokens: each class name's full
  token sequence scored by its summed log-probability (class names often share their first tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from ..data.lf_format import read_json
from ..errors import AttTokError
from ..testing import chat_inputs, chat_text
from ..vocab import TOKEN_IN_TEXT


@dataclass
class Sample:
    index: int
    image: Path
    question: str
    label_token: str | None
    label: str | None = None
    dataset: str = ""  # the file it was read from, for error messages


def _turn(row: dict, role: str) -> str:
    return next(t["content"] for t in row["messages"] if isinstance(t, dict) and t.get("role") == role
                and isinstance(t.get("content"), str))


def read_samples(dataset_json: str | Path, media_dir: str | Path | None = None,
                 require_token: bool = True) -> list[Sample]:
    """Sharegpt samples with one image; the label token is the first attribute token of the answer.

    Errors name the file and the sample index; every image must exist.
    """
    path = Path(dataset_json)
    root = Path(media_dir) if media_dir else path.parent
    rows = read_json(path)
    if not isinstance(rows, list) or not rows:
        raise AttTokError(f"{path}: no samples (expected a non-empty JSON list of sharegpt samples)")
    samples = []
    for index, row in enumerate(rows):
        try:
            answer, question = _turn(row, "assistant"), _turn(row, "user").replace("<image>", "")
            image = root / row["images"][0]
        except (KeyError, IndexError, TypeError, StopIteration) as err:
            raise AttTokError(f"{path}: sample {index}: needs `messages` with a user and an assistant turn "
                              f"(role/content) and one entry in `images` ({type(err).__name__}: {err})") from err
        if not image.is_file():
            raise AttTokError(f"{path}: sample {index}: image {image} does not exist")
        tokens = TOKEN_IN_TEXT.findall(answer)
        if require_token and not tokens:
            raise AttTokError(f"{path}: sample {index}: the answer has no attribute token to score against")
        samples.append(Sample(index, image, question, tokens[0] if tokens else None, row.get("label"), str(path)))
    return samples


def open_image(sample: Sample) -> Image.Image:
    """The sample's image as RGB; an unreadable file is an error naming the dataset, sample and image."""
    try:
        with Image.open(sample.image) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:
        raise AttTokError(f"{sample.dataset}: sample {sample.index}: image {sample.image} cannot be read "
                          f"({type(err).__name__}: {err})") from err


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
def first_answer_outputs(model, processor, samples: list[Sample], token_ids: list[int], batch_size: int = 8,
                         device: str = "cpu", template: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) attribute-token logits and (N, d) final hidden states at the first answer position."""
    from ..attach import base_model_of

    model.to(device).eval()
    head = base_model_of(model).get_output_embeddings()
    family = base_model_of(model).config.model_type
    captured = {}
    handle = head.register_forward_pre_hook(lambda module, args: captured.__setitem__("hidden", args[0]))
    logits, hidden = [], []
    try:
        processor.tokenizer.padding_side = "left"  # the last position is every row's first answer position
        for start in tqdm(range(0, len(samples), batch_size), desc="one-forward", leave=False):
            batch = samples[start:start + batch_size]
            inputs = processor(text=[chat_text(s.question, family=family, template=template) for s in batch],
                               images=[[open_image(s)] for s in batch],
                               padding=True, return_tensors="pt").to(device)
            out = model(**inputs)
            logits.append(out.logits[:, -1, token_ids].float().cpu())
            hidden.append(captured["hidden"][:, -1].float().cpu())
    finally:
        handle.remove()
    return torch.cat(logits), torch.cat(hidden)


def attribute_probabilities(model, processor, samples: list[Sample], token_ids: list[int],
                            temperature: float = 1.0, device: str = "cpu", batch_size: int = 8,
                            template: str | None = None) -> torch.Tensor:
    logits, _ = first_answer_outputs(model, processor, samples, token_ids, batch_size=batch_size, device=device,
                                     template=template)
    return torch.softmax(logits / temperature, dim=-1)


def calibrate_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """T minimising the validation NLL of softmax(logits / T) (LBFGS over log T)."""
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def retrieval_scores(model, hidden: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """(N, K) cosine similarity of hidden states to the attribute tokens' output-head rows (Table 6)."""
    from ..attach import base_model_of

    head = base_model_of(model).get_output_embeddings()
    weight = head(torch.eye(hidden.shape[1], device=next(model.parameters()).device)).T[token_ids].float().cpu()
    return torch.nn.functional.normalize(hidden, dim=-1) @ torch.nn.functional.normalize(weight, dim=-1).T


@torch.no_grad()
def likelihood_scores(model, processor, samples: list[Sample], class_names: list[str],
                      device: str = "cpu", template: str | None = None) -> torch.Tensor:
    """(N, C) summed log-probability of each class name's full token sequence after the prompt.

    One forward per sample scores all C names at once (a right-padded batch of prompt + name_c); every token of
    the name counts, so names sharing their first tokens ("mild …" / "moderate …") are still told apart.
    """
    from ..attach import base_model_of

    model.to(device).eval()
    family = base_model_of(model).config.model_type
    processor.tokenizer.padding_side = "right"
    rows = []
    for sample in tqdm(samples, desc="likelihood", leave=False):
        image = open_image(sample)
        prompt = chat_inputs(processor, image, sample.question, family=family, template=template)
        prompt_len = prompt["input_ids"].shape[1]
        inputs = processor(text=[chat_text(sample.question, name, family, template) for name in class_names],
                           images=[[image]] * len(class_names), padding=True, return_tensors="pt").to(device)
        log_probs = torch.log_softmax(model(**inputs).logits[:, :-1].float(), dim=-1)
        targets = inputs["input_ids"][:, 1:]
        token_scores = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        positions = torch.arange(targets.shape[1], device=targets.device).unsqueeze(0)
        in_name = (positions >= prompt_len - 1) & inputs["attention_mask"][:, 1:].bool()
        rows.append((token_scores * in_name).sum(-1).cpu())
    return torch.stack(rows)
