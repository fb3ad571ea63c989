"""What the GPU check measures inside a process: a ``TrainerCallback`` for step time, tokens and memory, and the
answer-position logits that are compared after save -> reload (used by the training and the check jobs, and by
``tests/test_gpu_check.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .common import PROBE_SAMPLES, TEST_SET, VOCAB, peak_cuda_bytes, peak_rss_mib, sync, write_json


class StepProbe(TrainerCallback):
    """Per optimizer step: compute time (``on_step_begin`` -> ``on_step_end``, device synced), wall time since the
    previous step's end (data loading included), tokens from ``num_input_tokens_seen``; peak GPU memory over the
    training loop (reset at ``on_train_begin``) and peak RSS. ``result`` is written to ``path`` after every step,
    so a run cut short still leaves what it measured; ``at_end(model, args)`` adds its entries at the end."""

    def __init__(self, device: str, warmup: int, path: Path | None = None,
                 at_end: Callable[[Any, Any], dict] | None = None) -> None:
        self.device, self.warmup, self.path, self.at_end = device, warmup, path, at_end
        self.compute: list[float] = []
        self.wall: list[float] = []
        self.tokens: list[int] = []
        self.t0 = self.last = 0.0
        self.tokens_last = 0
        self.result: dict[str, Any] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch

        sync(self.device)
        if self.device.startswith("cuda"):
            self.result["memory_at_train_begin_bytes"] = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        self.last = time.perf_counter()
        self.tokens_last = state.num_input_tokens_seen

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sync(self.device)
        self.t0 = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.compute.append(now - self.t0)
        self.wall.append(now - self.last)
        self.tokens.append(state.num_input_tokens_seen - self.tokens_last)
        self.tokens_last = state.num_input_tokens_seen
        self.last = now
        self.record(finished=False)  # a run cut short (budget) still leaves its step times and memory

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        sync(self.device)
        self.record(finished=True)
        if self.at_end is not None:
            self.result.update(self.at_end(model, args))
            self.save()

    def record(self, finished: bool) -> None:
        """Update ``result`` with the steps so far (the first ``warmup`` are later left out of the medians)."""
        peak = peak_cuda_bytes(self.device)
        if peak is not None:
            self.result["peak_memory_bytes"] = peak
        self.result.update(peak_rss_mib=round(peak_rss_mib(), 1), compute_s=self.compute, wall_s=self.wall,
                           tokens=self.tokens, warmup_steps=min(self.warmup, max(len(self.compute) - 1, 0)),
                           finished=finished)
        self.save()

    def save(self) -> None:
        if self.path is not None:
            write_json(self.path, self.result)


def answer_ids(model: Any, tokenizer: Any) -> list[int]:
    """AttTok: the attribute-token ids; vanilla: the first token of each class keyword."""
    from llamafactory_attok.attach import module_of
    from llamafactory_attok.vocab import load_vocab

    module = module_of(model)
    if module is not None:
        return list(module.token_ids)
    return [tokenizer(text, add_special_tokens=False)["input_ids"][0] for text in load_vocab(VOCAB).keywords]


def probe_processor(model: Any, model_dir: Path) -> Any:
    """The base folder's processor plus, for an AttTok model, the attribute tokens (the training tokenizer's
    additions, in the same order: the same ids). Both sides of the save -> reload comparison use this one, so the
    inputs are identical and only the model path differs."""
    from transformers import AutoProcessor

    from llamafactory_attok.attach import module_of
    from llamafactory_attok.rows import add_attribute_tokens
    from llamafactory_attok.vocab import load_vocab

    processor = AutoProcessor.from_pretrained(model_dir)
    module = module_of(model)
    if module is not None:
        added, _ = add_attribute_tokens(processor.tokenizer, load_vocab(VOCAB))
        if list(added) != list(module.token_ids):
            raise RuntimeError(f"attribute token ids {added} != the model's {module.token_ids}")
    return processor


def answer_logits(model: Any, model_dir: Path, device: str, ids: list[int] | None = None) -> tuple[Any, list[int]]:
    """``(PROBE_SAMPLES, K)`` logits at the first answer position, through the one-forward classifier's code, and
    the K token ids (``answer_ids`` unless given); the model's train/eval mode is left as it was."""
    from llamafactory_attok.eval.attribute_classifier import first_answer_outputs, read_samples

    processor = probe_processor(model, model_dir)
    ids = answer_ids(model, processor.tokenizer) if ids is None else ids
    samples = read_samples(TEST_SET)[:PROBE_SAMPLES]
    was_training = model.training
    try:
        logits, _ = first_answer_outputs(model, processor, samples, ids, batch_size=PROBE_SAMPLES, device=device)
    finally:
        model.train(was_training)
    return logits, ids


def final_logits(model_dir: Path) -> Callable[[Any, Any], dict]:
    """A ``StepProbe.at_end``: the trained model's answer-position logits (or why they could not be computed)."""

    def at_end(model: Any, args: Any) -> dict:
        try:
            logits, ids = answer_logits(model, model_dir, str(args.device))
        except Exception as err:  # noqa: BLE001 - recorded, the reload check then fails with this reason
            return {"answer_logits_error": f"{type(err).__name__}: {err}"}
        return {"answer_token_ids": ids, "answer_logits": logits.tolist()}

    return at_end
