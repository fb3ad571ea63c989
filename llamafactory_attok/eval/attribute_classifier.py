"""One-forward classifiers (beyond the paper's generation-based protocol).

- attribute classifier: class probabilities from the attribute-token logits at the first answer position — one
  forward pass per sample, no generation; optional temperature calibrated on a validation split;
- retrieval (Table 6): cosine similarity between the final hidden state at that position and the attribute
  tokens' output-head rows, i.e. the head rows used as classifier weights;
- likelihood scoring, the fair counterpart for vanilla models without attribute tokens: each class name's full
  token sequence scored by its summed log-probability (class names often share their first tokens).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..data.images import IMAGE_ERRORS
from ..data.lf_format import read_json
from ..errors import AttTokError
from ..lf_data import EncodedPrompt, PromptEncoder, attr_for_file, load_aligned
from ..progress import progress
from ..vocab import TOKEN_IN_TEXT


@dataclass
class Sample:
    index: int
    image: Path
    question: str
    label_token: str | None
    label: str | None = None
    dataset: str = ""  # the file it was read from, for error messages
    example: dict[str, Any] = field(default_factory=dict)  # as LF's loader aligns it (_prompt, _response, …)


def _turn(row: dict, role: str) -> str:
    return next(t["content"] for t in row["messages"] if isinstance(t, dict) and t.get("role") == role
                and isinstance(t.get("content"), str))


def read_samples(dataset_json: str | Path, media_dir: str | Path | None = None,
                 require_token: bool = True) -> list[Sample]:
    """Samples of a dataset file (see :func:`read_samples_skipping`); a missing or unreadable image is an error."""
    samples, skipped = read_samples_skipping(dataset_json, media_dir, require_token)
    if skipped:
        raise AttTokError(skipped[0]["error"])
    return samples


def read_samples_skipping(dataset_json: str | Path, media_dir: str | Path | None = None,
                          require_token: bool = True) -> tuple[list[Sample], list[dict]]:
    """Samples of a dataset file read by LLaMA-Factory's own loader (its ``dataset_info.json`` entry when the
    folder lists the file — columns, tags, formatting — else the sharegpt layout ``attok data`` writes), and the
    samples left out because an image is missing or unreadable (``{"id", "image", "error"}``).

    The label token is the first attribute token of the answer. Errors name the file and the sample index; every
    sample needs an answer and at least one image.
    """
    from llamafactory.hparams import DataArguments

    path = Path(dataset_json)
    if not path.is_file():
        raise AttTokError(f"{path}: dataset file does not exist")
    attr, dataset_dir = attr_for_file(path)
    data_args = DataArguments(dataset_dir=dataset_dir, media_dir=str(media_dir or dataset_dir))
    aligned = load_aligned(attr, data_args)
    if len(aligned) == 0:
        raise AttTokError(f"{path}: no samples (expected a non-empty list of sharegpt samples)")
    raw = read_json(path) if path.suffix == ".json" else None
    samples, skipped = [], []
    for index, example in enumerate(aligned):
        response, images = example["_response"] or [], example["_images"] or []
        if not response or not images:
            raise AttTokError(f"{path}: sample {index}: needs a user turn, an answer turn and at least one image "
                              "(LF's converter found " + ("no answer" if not response else "no image") + ")")
        answer = str(response[0].get("content") or "")
        question = str(example["_prompt"][-1].get("content") or "").replace("<image>", "")
        tokens = TOKEN_IN_TEXT.findall(answer)
        if require_token and not tokens:
            raise AttTokError(f"{path}: sample {index}: the answer has no attribute token to score against")
        label = raw[index].get("label") if isinstance(raw, list) and isinstance(raw[index], dict) else None
        sample = Sample(index, Path(images[0]), question, tokens[0] if tokens else None, label, str(path), example)
        problem = _image_problem(sample, images, Path(data_args.media_dir))
        if problem:
            skipped.append({"id": index, "error": problem})
        else:
            samples.append(sample)
    return samples, skipped


def _image_problem(sample: Sample, images: list, media_dir: Path) -> str | None:
    """Why one of the sample's images cannot be used (missing, not an image), or None."""
    for image in images:
        if not isinstance(image, str):
            continue
        shown = image if Path(image).is_absolute() else media_dir / image
        if not Path(image).is_file():  # LF keeps a path it could not resolve
            return f"{sample.dataset}: sample {sample.index}: image {shown} does not exist"
        try:
            with Image.open(image) as opened:
                opened.verify()
        except IMAGE_ERRORS as err:  # incl. Pillow's decompression-bomb refusal
            return (f"{sample.dataset}: sample {sample.index}: image {shown} cannot be read "
                    f"({type(err).__name__}: {err})")
    return None


def open_image(sample: Sample) -> Image.Image:
    """The sample's image as RGB; an unreadable file is an error naming the dataset, sample and image."""
    try:
        with Image.open(sample.image) as image:
            return image.convert("RGB")
    except IMAGE_ERRORS as err:
        raise AttTokError(f"{sample.dataset}: sample {sample.index}: image {sample.image} cannot be read "
                          f"({type(err).__name__}: {err})") from err


def check_model_folders(model_name_or_path: str, adapter: str | None) -> None:
    """--model a full model, --adapter a LoRA adapter: a folder given in the other's place is named with the fix
    (PEFT's and transformers' own errors do not say which option is wrong)."""
    model = Path(model_name_or_path)
    if model.is_dir() and (model / "adapter_config.json").is_file() and not (model / "config.json").is_file():
        raise AttTokError(f"--model {model} is a LoRA adapter folder (adapter_config.json, no config.json): give "
                          "the base model to --model and this folder to --adapter")
    if adapter:
        folder = Path(adapter)
        if not folder.is_dir():
            raise AttTokError(f"--adapter {folder}: no such folder")
        if not (folder / "adapter_config.json").is_file():
            full = (folder / "config.json").is_file()
            raise AttTokError(f"--adapter {folder} is not a LoRA adapter folder (no adapter_config.json)"
                              + ("; it is a full model: give it to --model and leave --adapter out" if full else ""))
        check_adapter_base(model_name_or_path, folder)


def check_adapter_base(model_name_or_path: str, adapter: Path) -> None:
    """An AttTok adapter on the base it was trained on: another model type is refused (its weights would not fit,
    or fit by accident); other weights of the same type (another fine-tune, a re-quantised copy) get a warning —
    the scores are then of another model than the one trained. Adapters without AttTok's config are not checked."""
    import json
    import sys

    from ..base_model import local_model_folder, weights_fingerprint
    from ..filenames import CONFIG_FILE_NAME

    try:
        saved = json.loads((adapter / CONFIG_FILE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no AttTok config (a vanilla adapter), or an unreadable one: named when the adapter is loaded
    if not isinstance(saved, dict):
        return
    folder = local_model_folder(model_name_or_path)
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type") \
            if folder is not None else None
    except (OSError, ValueError, AttributeError):
        model_type = None
    trained_type = saved.get("model_type")
    if model_type and trained_type and model_type != trained_type:
        raise AttTokError(f"--adapter {adapter} was trained on a {trained_type} base model ({CONFIG_FILE_NAME}), but "
                          f"--model {model_name_or_path} is a {model_type}: give the base model it was trained on")
    trained_weights, weights = saved.get("base_weights"), weights_fingerprint(model_name_or_path)
    if trained_weights and weights and trained_weights != weights:
        print(f"attok: warning: --model {model_name_or_path} holds other weights than the base --adapter {adapter} "
              "was trained on (another fine-tune or copy of the same architecture): the scores are of that "
              "combination, not of the trained model", file=sys.stderr)


def check_device(device: str) -> None:
    """A device this machine has; CUDA / MPS asked for where there is none is named with the fix."""
    try:
        torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise AttTokError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from err
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AttTokError(f"--device {device}: no CUDA GPU is visible here (torch.cuda.is_available() is False); use "
                          "--device cpu, or run where a GPU is")
    if device.startswith("mps") and not torch.backends.mps.is_available():
        raise AttTokError(f"--device {device}: MPS is not available here; use --device cpu")


def load_model_for_inference(model_name_or_path: str, adapter: str | None = None, template: str = "qwen2_vl"):
    """Load through LLaMA-Factory's public loaders, so an AttTok folder comes back with its tokens, ACC and books."""
    from llamafactory.hparams import get_infer_args

    check_model_folders(model_name_or_path, adapter)
    from llamafactory.model import load_model, load_tokenizer

    args = {"model_name_or_path": model_name_or_path, "template": template, "infer_dtype": "float32"}
    if adapter:
        args.update(adapter_name_or_path=adapter, finetuning_type="lora")
    model_args, _, finetuning_args, _ = get_infer_args(args)
    modules = load_tokenizer(model_args)
    model = load_model(modules["tokenizer"], model_args, finetuning_args, is_trainable=False)
    return model, modules["tokenizer"], modules["processor"]


def prompt_encoder(processor, template: str | None, default_system: str | None = None) -> PromptEncoder:
    """LF's template engine for ``template`` (default ``qwen2_vl``), as in training."""
    return PromptEncoder(processor.tokenizer, processor, template or "qwen2_vl", default_system)


def encode_sample(encoder: PromptEncoder, sample: Sample, stop_ids: set[int] | None):
    """The sample's training prompt up to its first answer token (right before the attribute token with
    ``stop_ids``); errors name the dataset and the sample."""
    try:
        return encoder.encode(sample.example, stop_ids)
    except AttTokError as err:
        raise AttTokError(f"{sample.dataset}: sample {sample.index}: {err}") from err
    except (OSError, ValueError) as err:  # an image LF's plugin cannot open or fit
        raise AttTokError(f"{sample.dataset}: sample {sample.index}: {type(err).__name__}: {err}") from err


@dataclass
class _EncodingFailed:
    """An :class:`AttTokError` of a DataLoader worker, carried back as a value: raised in the main process with its
    own message (the worker's would be wrapped in torch's "Caught … in DataLoader worker" text)."""

    message: str


class _EncodedSamples(torch.utils.data.Dataset):
    """The samples' training prompts, encoded (image decoding and LF's mm plugin) by DataLoader workers."""

    def __init__(self, encoder: PromptEncoder, samples: list[Sample], stop: set[int]) -> None:
        self.encoder, self.samples, self.stop = encoder, samples, stop

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> EncodedPrompt | _EncodingFailed:
        sample = self.samples[index]
        try:
            return encode_sample(self.encoder, sample, self.stop if sample.label_token else None)
        except AttTokError as err:
            return _EncodingFailed(str(err))


def _as_list(batch: list) -> list:
    return batch


def encoded_batches(encoder: PromptEncoder, samples: list[Sample], stop: set[int], batch_size: int,
                    workers: int = 0) -> Iterator[list[EncodedPrompt]]:
    """The samples' prompts in batches of ``batch_size``, in order; with ``workers`` > 0 encoded by that many
    DataLoader processes while the model runs on the previous batches (BENCHMARKS.md §9b)."""
    loader = torch.utils.data.DataLoader(_EncodedSamples(encoder, samples, stop), batch_size=batch_size,
                                         num_workers=workers, collate_fn=_as_list)
    for batch in loader:
        failed = next((item for item in batch if isinstance(item, _EncodingFailed)), None)
        if failed is not None:
            raise AttTokError(failed.message)
        yield batch


@torch.no_grad()
def iter_first_answer_outputs(model, processor, samples: list[Sample], token_ids: list[int], batch_size: int = 8,
                              device: str = "cpu", template: str | None = None, default_system: str | None = None,
                              workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch: (B, K) attribute-token logits and (B, d) final hidden states at the first answer position.

    Each input is the sample's training prompt (LF's template and mm plugin) cut right before its attribute token;
    ``workers`` DataLoader processes encode the next batches while this one runs.
    """
    from ..attach import base_model_of

    model.to(device).eval()
    encoder = prompt_encoder(processor, template, default_system)
    head = base_model_of(model).get_output_embeddings()
    captured: dict[str, torch.Tensor] = {}
    handle = head.register_forward_pre_hook(lambda module, args: captured.__setitem__("hidden", args[0]))
    try:
        for encoded in encoded_batches(encoder, samples, set(token_ids), batch_size, workers):
            out = model(**encoder.batch(encoded, device, model))
            yield out.logits[:, -1, token_ids].float().cpu(), captured["hidden"][:, -1].float().cpu()
    finally:
        handle.remove()


def first_answer_outputs(model, processor, samples: list[Sample], token_ids: list[int], batch_size: int = 8,
                         device: str = "cpu", template: str | None = None,
                         default_system: str | None = None, show_progress: bool = True,
                         workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) attribute-token logits and (N, d) final hidden states at the first answer position (see
    :func:`iter_first_answer_outputs`)."""
    batches = iter_first_answer_outputs(model, processor, samples, token_ids, batch_size, device, template,
                                        default_system, workers)
    total = -(-len(samples) // batch_size)
    outputs = list(progress(batches, desc="one-forward", unit="batch", total=total) if show_progress else batches)
    return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])


def attribute_probabilities(model, processor, samples: list[Sample], token_ids: list[int],
                            temperature: float = 1.0, device: str = "cpu", batch_size: int = 8,
                            template: str | None = None, default_system: str | None = None) -> torch.Tensor:
    logits, _ = first_answer_outputs(model, processor, samples, token_ids, batch_size=batch_size, device=device,
                                     template=template, default_system=default_system)
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
    """(N, K) cosine similarity of hidden states to the attribute tokens' output-head rows (Table 6).

    Reads the K rows the head really uses (a PEFT trainable-token row where it has one, gathered under ZeRO-3)
    instead of pushing an identity matrix through the head (d × V at 7B: ~2 GB and ~2 TFLOPs to read K rows).
    """
    from ..attach import base_model_of
    from ..rows import head_rows

    weight = head_rows(base_model_of(model), token_ids).float().cpu()
    return torch.nn.functional.normalize(hidden, dim=-1) @ torch.nn.functional.normalize(weight, dim=-1).T


@torch.no_grad()
def likelihood_scores(model, processor, samples: list[Sample], class_names: list[str],
                      device: str = "cpu", template: str | None = None,
                      default_system: str | None = None, show_progress: bool = True) -> torch.Tensor:
    """(N, C) summed log-probability of each class name's full token sequence after the prompt — the log of the
    probability that the model writes exactly that answer (``attok predict --mode answer`` passes each class's whole
    answer, "<|xray_pneumonia|> pneumonia" or "pneumonia").

    The prompt is the sample's training prompt cut where its answer begins (LF's template); one forward per
    sample scores all C names at once: each row is the prompt plus the answer LF would encode for that name (its
    tokens and the template's end of turn, which training also teaches), so names sharing their first tokens
    ("mild …" / "moderate …") — or one name being the start of another — are still told apart.
    """
    model.to(device).eval()
    encoder = prompt_encoder(processor, template, default_system)
    rows = []
    for sample in progress(samples, desc="likelihood") if show_progress else samples:
        prompts = []
        for name in class_names:
            example = {**sample.example, "_response": [{**sample.example["_response"][0], "content": name}]}
            prompts.append(encode_sample(encoder, Sample(sample.index, sample.image, sample.question, None,
                                                   dataset=sample.dataset, example=example), None))
        prompt_len = len(prompts[0].input_ids)
        full = [EncodedPrompt(p.input_ids + p.answer_ids, p.images) for p in prompts]
        width = max(len(p.input_ids) for p in full)
        inputs = encoder.batch(full, device, model)  # left-padded: the prompt ends at the same column in every row
        log_probs = torch.log_softmax(model(**inputs).logits[:, :-1].float(), dim=-1)
        targets = inputs["input_ids"][:, 1:]
        token_scores = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        lengths = torch.tensor([len(p.answer_ids) for p in prompts], device=targets.device)
        positions = torch.arange(targets.shape[1], device=targets.device).unsqueeze(0)
        pad = torch.tensor([width - len(p.input_ids) for p in full], device=targets.device).unsqueeze(1)
        start = pad + prompt_len - 1  # the position that predicts the name's first token
        in_name = (positions >= start) & (positions < start + lengths.unsqueeze(1))
        rows.append((token_scores * in_name).sum(-1).cpu())
    return torch.stack(rows)
