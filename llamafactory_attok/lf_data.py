"""Datasets and prompts exactly as LLaMA-Factory makes them (its loader, converters, template engine, mm plugin).

Nothing here patches LF: it calls LF's own data code, so an evaluation prompt is the training prompt by
construction — same ``default_system``, dataset ``system`` message, earlier turns, image placeholders and template
revision — and any dataset form LF reads (local json/jsonl/csv/parquet files and folders, sharegpt / alpaca /
openai formatting, column and tag mappings) is read the same way for the attribute scan.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .errors import AttTokError


class DatasetUnreadable(AttTokError):
    """LF's loader could not read a dataset (format, hub dataset offline, streaming): the scan cannot run."""

# the layout `attok data` writes (and LF's OpenAI-style sharegpt): used for a file no dataset_info.json lists
DEFAULT_ENTRY = {"formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                          "assistant_tag": "assistant", "system_tag": "system"}}


def _no_hub_model_args() -> SimpleNamespace:
    return SimpleNamespace(cache_dir=None, hf_hub_token=None, ms_hub_token=None, om_hub_token=None)


def _single_process_training_args() -> SimpleNamespace:
    return SimpleNamespace(local_process_index=0, dataloader_num_workers=0)


def dataset_attrs(names: list[str], dataset_dir: str) -> list:
    """LF's ``DatasetAttr`` of each dataset name (its own ``dataset_info.json`` parsing)."""
    from llamafactory.data.parser import get_dataset_list

    try:
        return get_dataset_list(names, dataset_dir)
    except ValueError as err:
        raise DatasetUnreadable(f"{Path(dataset_dir) / 'dataset_info.json'}: {err}") from err


def attr_for_file(path: str | os.PathLike) -> tuple[Any, str]:
    """(``DatasetAttr``, dataset_dir) for a dataset file: its ``dataset_info.json`` entry when the folder lists it,
    else the sharegpt layout ``attok data`` writes."""
    from llamafactory.data.parser import DatasetAttr

    path = Path(path).resolve()
    info_path = path.parent / "dataset_info.json"
    entry = None
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise AttTokError(f"{info_path}: unreadable dataset_info.json: {err}") from err
        entry = next((e for e in info.values() if isinstance(e, dict) and e.get("file_name") == path.name), None)
    attr = DatasetAttr("file", dataset_name=path.name)
    attr.join(entry or DEFAULT_ENTRY)
    return attr, str(path.parent)


def load_aligned(attr, data_args, model_args=None, training_args=None, name: str | None = None):
    """A dataset loaded and aligned by LF (``_prompt``, ``_response``, ``_system``, ``_images`` …).

    LF's loader draws from numpy's global RNG for ``num_samples``; its state is restored, so reading a dataset
    here does not change what the run does next.
    """
    from llamafactory.data.loader import _load_single_dataset

    state = np.random.get_state()
    try:
        return _load_single_dataset(attr, model_args or _no_hub_model_args(), data_args,
                                    training_args or _single_process_training_args())
    except Exception as err:  # datasets / pyarrow / hub errors of every kind: re-raised with the dataset named
        label = f"{name!r} ({attr})" if name and name != str(attr) else str(attr)
        raise DatasetUnreadable(f"dataset {label} in {data_args.dataset_dir}: LLaMA-Factory's loader failed "
                                f"({type(err).__name__}: {err})") from err
    finally:
        np.random.set_state(state)


def where_of(attr, dataset_dir: str) -> str:
    local = Path(dataset_dir) / attr.dataset_name
    return str(local) if attr.load_from == "file" else f"dataset {attr.dataset_name}"


def iter_answers(names: list[str], data_args, model_args=None, training_args=None) -> Iterator[tuple[str, str]]:
    """``(where, assistant text)`` of every assistant turn (earlier turns and the answer) of the datasets."""
    for name, attr in zip(names, dataset_attrs(names, data_args.dataset_dir), strict=True):
        if data_args.streaming:
            raise DatasetUnreadable(f"dataset {name!r}: a streaming dataset cannot be scanned for attribute tokens")
        where = where_of(attr, data_args.dataset_dir)
        for index, example in enumerate(load_aligned(attr, data_args, model_args, training_args, name)):
            for image in example.get("_images") or []:  # LF would stop later with a bare relative path
                if isinstance(image, str) and not os.path.isfile(image):
                    what = "is a folder, not an image file" if os.path.isdir(image) else "does not exist"
                    media = getattr(data_args, "media_dir", None) or data_args.dataset_dir
                    raise AttTokError(f"{where}: sample {index}: image {image!r} {what} (relative paths are read "
                                      f"from media_dir, here {media})")
            for turn in [*(example["_prompt"] or []), *(example["_response"] or [])[:1]]:
                if turn.get("role") == "assistant":
                    yield f"{where}: sample {index}", str(turn.get("content") or "")


@dataclass
class EncodedPrompt:
    """One sample up to its first answer token, as LF's SFT preprocessing encodes it (plus its images)."""

    input_ids: list[int]
    images: list[Any]
    answer_ids: list[int] = field(default_factory=list)  # the answer's own tokens, template prefix excluded


class PromptEncoder:
    """LF's template + multimodal plugin, used the way ``SupervisedDatasetProcessor`` uses them in training."""

    def __init__(self, tokenizer, processor, template: str, default_system: str | None = None,
                 enable_thinking: bool | None = True) -> None:
        from llamafactory.data import get_template_and_fix_tokenizer
        from llamafactory.hparams import DataArguments

        data_args = DataArguments(template=template, default_system=default_system, enable_thinking=enable_thinking)
        try:
            self.template = get_template_and_fix_tokenizer(tokenizer, data_args)
        except ValueError as err:
            raise AttTokError(f"template {template!r}: {err}") from err
        self.tokenizer, self.processor = tokenizer, processor

    def _pairs(self, example: dict, answer: str | None = None) -> tuple[list[int], list[tuple[list[int], list[int]]]]:
        prompt, response = list(example["_prompt"]), list(example["_response"][:1])
        if answer is not None:
            response = [{**response[0], "content": answer}]
        images = list(example["_images"] or [])
        plugin = self.template.mm_plugin
        messages = plugin.process_messages(prompt + response, images, [], [], self.processor)
        prefix, _ = plugin.process_token_ids([], [], images, [], [], self.tokenizer, self.processor)
        pairs = self.template.encode_multiturn(self.tokenizer, messages, example["_system"], example["_tools"])
        return list(prefix), pairs

    def encode(self, example: dict, stop_ids: set[int] | None = None) -> EncodedPrompt:
        """The training ids of ``example`` cut where its answer's content begins — or, with ``stop_ids``, right
        before the first of those ids in the answer (the attribute token: where the ACM anchor sits in training)."""
        if not example["_response"]:
            raise AttTokError("a sample without an answer turn cannot be scored")
        prefix, pairs = self._pairs(example)
        ids = prefix + [i for source, target in pairs[:-1] for i in (*source, *target)] + list(pairs[-1][0])
        target = list(pairs[-1][1])
        if stop_ids is not None:
            cut = next((i for i, token in enumerate(target) if token in stop_ids), None)
            if cut is None:
                raise AttTokError("the answer holds no attribute token to score against")
        else:
            _, empty_pairs = self._pairs(example, answer="")
            empty = list(empty_pairs[-1][1])
            cut = 0
            while cut < min(len(target), len(empty)) and target[cut] == empty[cut]:
                cut += 1
        return EncodedPrompt(ids + target[:cut], list(example["_images"] or []), target[cut:])

    def batch(self, prompts: list[EncodedPrompt], device, model=None) -> dict:
        """A left-padded batch (the last position is every row's first answer position) made by LF's own SFT
        collator — mm inputs, M-RoPE positions (``model`` given), token types — exactly as in training."""
        from llamafactory.data import SFTDataCollatorWith4DAttentionMask
        from llamafactory.extras.constants import IGNORE_INDEX

        collator = SFTDataCollatorWith4DAttentionMask(template=self.template, model=model, tokenizer=self.tokenizer,
                                                      processor=self.processor, label_pad_token_id=IGNORE_INDEX)
        features = [{"input_ids": p.input_ids, "attention_mask": [1] * len(p.input_ids),
                     "labels": [IGNORE_INDEX] * len(p.input_ids), "images": p.images, "videos": [], "audios": []}
                    for p in prompts]
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            inputs = dict(collator(features))
        finally:
            self.tokenizer.padding_side = side
        inputs.pop("labels", None)
        return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in inputs.items()}
