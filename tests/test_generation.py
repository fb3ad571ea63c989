"""Generation uses the positions of training (M-RoPE for the Qwen-VL families), on every family and LF surface.

Reference = one forward through LF's SFT collator *with* the model (the training path: 3-D positions from
``get_rope_index``). Generation = what LF feeds ``generate`` (its collator with ``model=None`` for do_predict; the
chat engine's inputs for chat / api / WebUI): no positions, no ``mm_token_type_ids``.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import base_args

from llamafactory_attok.eval.attribute_classifier import prompt_encoder, read_samples
from llamafactory_attok.generation import needs_mm_token_type_ids
from llamafactory_attok.tiny import FAMILIES, TEMPLATES, build_tiny_model

NEW_TOKENS = 4


def _load(model_dir, template: str, **extra):
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_model, load_tokenizer

    model_args, _, finetuning_args, _ = get_infer_args({"model_name_or_path": str(model_dir), "template": template,
                                                         "infer_dtype": "float32", **extra})
    modules = load_tokenizer(model_args)
    model = load_model(modules["tokenizer"], model_args, finetuning_args, is_trainable=False)
    return model.eval(), modules["processor"]


def _prompts(sample_data, processor, template: str, count: int):
    samples = read_samples(sample_data / "retina_vanilla_test.json", require_token=False)[:count]
    encoder = prompt_encoder(processor, template)
    return encoder, [encoder.encode(s.example) for s in samples]


@torch.no_grad()
def _teacher_forced_chain(model, encoder, prompt, steps: int) -> list[int]:
    """argmax of one training-position forward per step, on the prompt plus the tokens chosen so far."""
    chain: list[int] = []
    for _ in range(steps):
        extended = type(prompt)(prompt.input_ids + chain, prompt.images)
        logits = model(**encoder.batch([extended], "cpu", model)).logits[0, -1]
        chain.append(int(logits.argmax()))
    return chain


@torch.no_grad()
def _generate(model, encoder, prompts) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy tokens and first-step scores as LF's do_predict path calls ``generate`` (collator without model)."""
    inputs = encoder.batch(prompts, "cpu", model=None)
    assert "position_ids" not in inputs and "mm_token_type_ids" not in inputs
    out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, output_scores=True,
                         return_dict_in_generate=True, eos_token_id=None, pad_token_id=encoder.tokenizer.pad_token_id)
    width = inputs["input_ids"].shape[1]
    return out.sequences[:, width:].tolist(), out.scores[0]


@pytest.fixture(scope="module")
def family_models(tmp_path_factory, tiny_models) -> dict[str, object]:
    """Every family's default tiny model; the session's own (read only here) where it has one."""
    root = tmp_path_factory.mktemp("generation_families")
    return {family: tiny_models.get(family) or build_tiny_model(root / family, family) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_follows_the_training_positions(family, family_models, sample_data):
    """First step = one forward; N greedy tokens = the teacher-forced argmax chain; batch 2 (left padding) =
    batch 1. On a vanilla model through the opt-in ``attok_training_positions`` key."""
    template = TEMPLATES[family]
    model, processor = _load(family_models[family], template, attok_training_positions=True)
    encoder, prompts = _prompts(sample_data, processor, template, 2)
    prompts[1] = type(prompts[1])(prompts[1].input_ids[:-3] + prompts[1].input_ids[-1:], prompts[1].images)
    batch_tokens, batch_scores = _generate(model, encoder, prompts)
    for row, prompt in enumerate(prompts):
        single_tokens, single_scores = _generate(model, encoder, [prompt])
        reference = model(**encoder.batch([prompt], "cpu", model)).logits[0, -1]
        torch.testing.assert_close(single_scores[0], reference, atol=1e-4, rtol=1e-4)
        assert single_tokens[0][0] == int(reference.argmax())
        assert single_tokens[0] == _teacher_forced_chain(model, encoder, prompt, NEW_TOKENS)
        assert batch_tokens[row] == single_tokens[0]
        torch.testing.assert_close(batch_scores[row], single_scores[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_engine_first_step_follows_the_training_positions(family, family_models, sample_data):
    """The inputs LF's chat engine (chat / api / WebUI) builds, passed to ``generate`` as it passes them
    (``inputs=``): first-step scores = the one-forward logits of the training prompt."""
    from llamafactory.chat import ChatModel

    template = TEMPLATES[family]
    chat = ChatModel({"model_name_or_path": str(family_models[family]), "template": template,
                      "infer_dtype": "float32", "do_sample": False, "attok_training_positions": True})
    engine = chat.engine
    encoder, prompts = _prompts(sample_data, engine.processor, template, 1)
    sample = read_samples(sample_data / "retina_vanilla_test.json", require_token=False)[0]
    messages = [{"role": "user", "content": sample.example["_prompt"][0]["content"]}]
    gen_kwargs, _ = engine._process_args(engine.model, engine.tokenizer, engine.processor, engine.template,
                                         dict(engine.generating_args), messages,
                                         images=list(sample.example["_images"]))
    # the chat engine's own prompt (for qwen3_vl it lacks the empty thought the training template adds)
    chat_prompt = type(prompts[0])(gen_kwargs["inputs"][0].tolist(), prompts[0].images)
    gen_kwargs["generation_config"].max_new_tokens = 1
    with torch.no_grad():
        out = engine.model.generate(**gen_kwargs, output_scores=True, return_dict_in_generate=True)
        reference = engine.model(**encoder.batch([chat_prompt], "cpu", engine.model)).logits[0, -1]
    torch.testing.assert_close(out.scores[0][0], reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_without_the_fix_qwen_vl_generation_uses_other_positions(family, family_models, sample_data):
    """The check above can fail: plain LF (no opt-in) generates with 1-D positions for the image tokens."""
    template = TEMPLATES[family]
    model, processor = _load(family_models[family], template)
    assert needs_mm_token_type_ids(model)
    encoder, prompts = _prompts(sample_data, processor, template, 1)
    _, scores = _generate(model, encoder, prompts)
    reference = model(**encoder.batch(prompts, "cpu", model)).logits[0, -1]
    assert not torch.allclose(scores[0], reference, atol=1e-4, rtol=1e-4)


def test_vanilla_loading_is_untouched_without_the_key(family_models):
    model, _ = _load(family_models["qwen2_vl"], "qwen2_vl")
    assert not hasattr(model, "__attok_training_positions__")
    assert "generate" not in vars(model)


# ---- an AttTok adapter on LF's surfaces: do_predict (batch 2, left padding), ChatModel, export + reload ----------


@pytest.fixture(scope="module")
def modality_top1(tiny_models, modality_adapter, sample_data) -> dict[str, str]:
    """image -> one-forward top-1 attribute token (`attok predict`'s reading) of the modality adapter."""
    from llamafactory_attok.eval.attribute_classifier import attribute_probabilities, load_model_for_inference

    model, tokenizer, processor = load_model_for_inference(str(tiny_models["qwen2_vl"]), str(modality_adapter))
    samples = read_samples(sample_data / "modality_train.json")
    tokens = ["<|fundus_photo|>", "<|xray_chest|>"]
    probs = attribute_probabilities(model, processor, samples, tokenizer.convert_tokens_to_ids(tokens))
    return {s.example["_images"][0]: tokens[int(p.argmax())] for s, p in zip(samples, probs, strict=True)}


def test_do_predict_first_token_is_the_one_forward_top1(tiny_models, modality_adapter, modality_top1, sample_data,
                                                        tmp_path):
    from lf_inprocess import run_predict

    out = tmp_path / "predict"
    run_predict(base_args(tiny_models["qwen2_vl"], sample_data, out, do_train=False, do_predict=True,
                          adapter_name_or_path=str(modality_adapter), eval_dataset="modality_train",
                          predict_with_generate=True, per_device_eval_batch_size=2, max_new_tokens=3,
                          skip_special_tokens=False, attok_show_tokens=True))
    rows = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text().splitlines()]
    samples = read_samples(sample_data / "modality_train.json")
    assert len(rows) == len(samples)
    firsts = [row["predict"].split()[0] if row["predict"].split() else "" for row in rows]
    expected = [modality_top1[s.example["_images"][0]] for s in samples]
    assert [f[:len(e)] for f, e in zip(firsts, expected, strict=True)] == expected


def test_chat_engine_first_token_is_the_one_forward_top1(tiny_models, modality_adapter, modality_top1):
    from llamafactory.chat import ChatModel

    chat = ChatModel({"model_name_or_path": str(tiny_models["qwen2_vl"]),
                      "adapter_name_or_path": str(modality_adapter), "template": "qwen2_vl",
                      "infer_dtype": "float32", "do_sample": False, "max_new_tokens": 2, "attok_show_tokens": True})
    for image, token in modality_top1.items():
        reply = chat.chat([{"role": "user", "content": "<image>What kind of image is this?"}], images=[image])
        assert reply[0].response_text.startswith(token), (image, reply[0].response_text)


# ---- serving beyond one process: vLLM / SGLang, and a plain exported model --------------------------------------


@pytest.fixture(scope="module")
def acc_free_export(tiny_models, sample_data, tmp_path_factory):
    """A LoRA AttTok run trained with ``attok_acc: false`` and its merged export."""
    from lf_inprocess import run_sft
    from llamafactory.train.tuner import export_model

    root = tmp_path_factory.mktemp("acc_free")
    run_sft(base_args(tiny_models["qwen2_vl"], sample_data, root / "adapter", attok=True, attok_acc=False,
                      max_steps=2))
    export_model({"model_name_or_path": str(tiny_models["qwen2_vl"]), "adapter_name_or_path": str(root / "adapter"),
                  "template": "qwen2_vl", "finetuning_type": "lora", "export_dir": str(root / "merged"),
                  "export_device": "cpu", "infer_dtype": "float32"})
    return root


def test_vllm_and_sglang_refuse_acc_models_and_adapters(tiny_models, modality_adapter, acc_free_export):
    from llamafactory.hparams import get_infer_args

    from llamafactory_attok.errors import AttTokError

    base = {"model_name_or_path": str(tiny_models["qwen2_vl"]), "template": "qwen2_vl"}
    for backend in ("vllm", "sglang"):
        with pytest.raises(AttTokError, match=f"`infer_backend: {backend}` cannot run this AttTok model: its ACC"):
            get_infer_args({**base, "adapter_name_or_path": str(modality_adapter), "infer_backend": backend})
        with pytest.raises(AttTokError, match="cannot load AttTok's attribute-token rows from a LoRA adapter"):
            get_infer_args({**base, "adapter_name_or_path": str(acc_free_export / "adapter"),
                            "infer_backend": backend})


def test_acc_free_export_is_a_plain_model_without_the_plugin(acc_free_export, tmp_path):
    """Loaded by plain transformers with the plugin disabled, the merged export gives the logits LF + plugin give."""
    from conftest import run_cli

    from llamafactory_attok.eval.attribute_classifier import load_model_for_inference
    from llamafactory_attok.tiny import chat_inputs

    merged = acc_free_export / "merged"
    model, _, processor = load_model_for_inference(str(merged))
    image = __import__("PIL.Image", fromlist=["Image"]).new("RGB", (56, 56), (120, 40, 60))
    inputs = chat_inputs(processor, image, "which modality is this image?")
    with torch.no_grad():
        expected = model(**inputs).logits[0, -1]
    torch.save({"inputs": dict(inputs), "expected": expected}, tmp_path / "case.pt")
    code = (f"import torch; from transformers import AutoModelForImageTextToText as M\n"
            f"case = torch.load({str(tmp_path / 'case.pt')!r}, weights_only=False)\n"
            f"model = M.from_pretrained({str(merged)!r}, dtype=torch.float32).eval()\n"
            "with torch.no_grad(): got = model(**case['inputs']).logits[0, -1]\n"
            "print('max-diff', (got - case['expected']).abs().max().item())\n"
            "import sys; print('plugin-loaded', any('lf_patches.loader' in m for m in sys.modules))")
    result = run_cli(["python", "-c", code], cwd=tmp_path, ATTOK_DISABLE="1")
    assert result.returncode == 0, result.stderr[-3000:]
    diff = float(result.stdout.split("max-diff")[1].split()[0])
    assert diff == 0.0 and "plugin-loaded False" in result.stdout
