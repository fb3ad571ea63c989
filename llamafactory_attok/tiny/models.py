"""Test scaffolding: tiny offline vision-language models of every supported family (tests, demo, benchmarks).

Not a production path: only ``attok tiny-model`` and the demo import it (``tests/test_boot.py`` checks that no
other plugin module does); training, prediction and evaluation build prompts with LLaMA-Factory's own template
engine (:mod:`llamafactory_attok.lf_data`), never with the helpers here.

Nothing here touches the network: the tokenizer is a byte-level BPE trained with ``tokenizers`` on a small
built-in corpus and wrapped as the family's fast tokenizer (``Qwen2TokenizerFast`` with the Qwen special tokens for
the Qwen families); the weights are random (seeded). LLaMA-Factory loads the result with the family's own template
(:data:`TEMPLATES`: ``qwen2_vl``, ``qwen3_vl``, ``gemma3``, ``intern_vl``, ``llava``). The per-family recipes are
in :mod:`llamafactory_attok.tiny.specs`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from ..errors import AttTokError
from ..safe_paths import refuse_symlink
from ..state import current_umask
from .specs import MODEL_TYPE_ALIASES, QWEN_SPECIALS, SIZED_FAMILIES, SPECS, TinySpec

FAMILIES: tuple[str, ...] = tuple(SPECS)
Family = Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "intern_vl", "llava"]
QWEN_SPECIAL_TOKENS = QWEN_SPECIALS
TEMPLATES: dict[str, str] = {family: spec.template for family, spec in SPECS.items()}

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

_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def spec_of(family: str) -> TinySpec:
    """The tiny-model recipe of ``family`` (an LF-style name, or a config ``model_type`` such as ``internvl``)."""
    family = MODEL_TYPE_ALIASES.get(family, family)
    if family not in SPECS:
        raise ValueError(f"Unknown tiny-model family {family!r}; choose from {', '.join(FAMILIES)}.")
    return SPECS[family]


def build_tiny_tokenizer(vocab_size: int = 400, family: Family = "qwen2_vl"):
    """Train a byte-level BPE on the built-in corpus and wrap it as the family's fast tokenizer."""
    # Qwen2TokenizerFast: a runtime alias of Qwen2Tokenizer (transformers 5's lazy *TokenizerFast fallback), which
    # transformers' TYPE_CHECKING imports do not declare
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2TokenizerFast  # type: ignore[attr-defined]

    spec = spec_of(family)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(spec.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    if spec.specials == QWEN_SPECIALS:
        tokenizer = Qwen2TokenizerFast(
            tokenizer_object=bpe, pad_token=spec.pad, eos_token=spec.eos, unk_token=None, bos_token=None,
            additional_special_tokens=list(QWEN_SPECIALS[1:]),
        )
        tokenizer.chat_template = _CHAT_TEMPLATE
        return tokenizer
    others = [tok for tok in spec.specials if tok not in (spec.pad, spec.eos, spec.bos)]
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token=spec.pad, eos_token=spec.eos, bos_token=spec.bos,
        additional_special_tokens=others, extra_special_tokens=dict(spec.named),
    )


def build_tiny_config(family: Family, tokenizer, tied: bool | None = None, spare_rows: int = 0,
                      width: int | None = None, layers: int | None = None):
    """Config of a ~200k-parameter model whose vision output reaches LLM width (64).

    ``width`` / ``layers`` (Qwen2-VL only) widen / deepen its LLM for compute-bound timings (see
    ``specs._qwen2_vl_config``); left at None, the model is the usual tiny one."""
    spec = spec_of(family)
    tied = spec.default_tied if tied is None else tied
    if width is None and layers is None:
        return spec.config(tokenizer, len(tokenizer) + spare_rows, tied, spec)
    if spec.family not in SIZED_FAMILIES:
        raise ValueError(f"width / layers are supported for {', '.join(SIZED_FAMILIES)} only, not {spec.family!r}")
    return spec.config(tokenizer, len(tokenizer) + spare_rows, tied, spec, width=width, layers=layers)


def build_tiny_processor(family: Family, tokenizer):
    """Image (small pixel budget) and video processors plus tokenizer, bundled as the family's processor."""
    return spec_of(family).processor(tokenizer, tokenizer.chat_template)


def _honour_umask(folder: Path) -> None:
    """Modes as plain ``open`` / ``mkdir`` would give them under the current umask."""
    umask = current_umask()
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def build_tiny_model(
    out_dir: str | os.PathLike,
    family: Family = "qwen2_vl",
    tied: bool | None = None,
    seed: int = 0,
    spare_rows: int = 0,
    width: int | None = None,
    layers: int | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a tiny model folder (config, seeded random weights, tokenizer, processors) and return its path.

    ``spare_rows`` adds unused embedding rows beyond the tokenizer, like Qwen2.5-VL's 151936 rows for
    151665 tokens, so that new tokens fit without a resize. ``tied`` defaults to the family's habit (Gemma-3
    ties the head to the embedding, the others do not). ``width`` / ``layers`` (Qwen2-VL only) widen / deepen the
    LLM (:func:`build_tiny_config`). The folder is written atomically: built next to ``out_dir``, then renamed into
    place. An existing ``out_dir`` (a non-empty folder, or a file) is replaced only with ``overwrite`` (the default
    here, for tests and benchmarks that rebuild their own scratch model; ``attok tiny-model`` passes False unless
    ``--overwrite``), and then swapped out as a whole, so ``out_dir`` is always a complete model.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    out = Path(out_dir)
    refuse_symlink(out, "model folder")  # a link is never replaced by the folder (before the build: seconds)
    tokenizer = build_tiny_tokenizer(family=family)
    config = build_tiny_config(family, tokenizer, tied=tied, spare_rows=spare_rows, width=width, layers=layers)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    spec = spec_of(family)
    if spec.finish is not None:
        spec.finish(model)
    processor = build_tiny_processor(family, tokenizer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        written = sorted(p.name for p in tmp.iterdir())
        digests = {p.name: _digest(p) for p in sorted(tmp.iterdir())}
        (tmp / TINY_MARKER).write_text(json.dumps({"family": family, "seed": seed, "files": written,
                                                   "digests": digests}, indent=1))
        _honour_umask(tmp)  # mkdtemp and safetensors create 0700 / 0600; a model folder is shared like LF's
        if overwrite:
            check_replaceable(out)
        _move_into_place(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


TINY_MARKER = "attok_tiny_model.json"  # written into every tiny model folder: what the build wrote


def _digest(path: Path) -> str:
    """SHA-1 of a file (a folder or anything else gets no digest: the check below then refuses it)."""
    if not path.is_file() or path.is_symlink():
        return ""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_replaceable(out: Path) -> None:
    """``--overwrite`` replaces only a folder a tiny-model build wrote, as it wrote it: every entry must be a file its
    marker lists with the digest it had when written. Anything else in it (a thesis, a data folder, a file added to
    the marker's list by hand, a file edited since) is refused by name, and nothing is deleted. A symbolic link is
    never replaced, whatever it points to."""
    refuse_symlink(out, "OUT")
    if not out.is_dir() or not any(out.iterdir()):
        return
    marker = out / TINY_MARKER
    try:
        recorded = json.loads(marker.read_text())["digests"]
        if not isinstance(recorded, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    entries = sorted(p for p in out.iterdir() if p.name != TINY_MARKER)
    foreign = [p.name for p in entries if recorded is None or p.name not in recorded]
    edited = [p.name for p in entries if recorded is not None and p.name in recorded
              and (not recorded[p.name] or _digest(p) != recorded[p.name])]
    if foreign or edited:
        names = foreign + [f"{name} (changed since the build)" for name in edited]
        shown = ", ".join(names[:5]) + (" …" if len(names) > 5 else "")
        why = (f"is not a tiny model folder (no {TINY_MARKER} with the digests of what it wrote)" if recorded is None
               else "holds files a tiny-model build did not write, or changed since")
        raise AttTokError(f"{out} {why}: {shown}; --overwrite replaces only a folder `attok tiny-model` wrote, as "
                          "it wrote it, so nothing was changed: choose a new folder")


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished folder ``tmp`` to ``out``. Without ``overwrite`` the rename itself refuses an ``out``
    that appeared meanwhile (no check-then-write race); with it, the previous ``out`` is moved aside first and
    deleted only once the new one is in place."""
    previous = tmp.with_name(tmp.name + ".previous")
    if overwrite and (out.is_symlink() or out.exists()):
        os.replace(out, previous)
    try:
        os.rename(tmp, out)  # replaces only an empty folder; a file or a non-empty folder is an OSError
    except OSError as err:
        if os.path.lexists(previous):
            os.replace(previous, out)
        raise AttTokError(f"{out}: already exists ({err.strerror}); pass --overwrite to replace it, or choose a "
                          "new folder") from err
    if previous.is_dir() and not previous.is_symlink():
        shutil.rmtree(previous)
    elif os.path.lexists(previous):
        previous.unlink()


def chat_text(question: str, answer_prefix: str = "", family: str = "qwen2_vl", template: str | None = None) -> str:
    """One image + question in the chat layout of LF's ``template`` (default: the family's own) for ``family``, up to
    the first answer token, image placeholder unexpanded (the processor expands it)."""
    spec = spec_of(family)
    return spec.prompt(question, answer_prefix, template or spec.template)


def chat_inputs(processor, image, question: str, answer_prefix: str = "", family: str = "qwen2_vl",
                template: str | None = None):
    """Model inputs for one image + question (see :func:`chat_text`). Images go one list per text, the form every
    family's processor accepts (Gemma-3's insists on it)."""
    return processor(text=[chat_text(question, answer_prefix, family, template)], images=[[image]],
                     return_tensors="pt")
