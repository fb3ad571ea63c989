"""LLaMA-Factory's inference surfaces on an AttTok adapter: ChatModel (chat / webchat / api engine), the
OpenAI-compatible `llamafactory-cli api` server, `do_predict` batch prediction, and ATTOK_DISABLE warnings."""

import base64
import json
import os
import re

import pytest
from conftest import assert_ok, base_args, run_cli
from lf_inprocess import disabled_adapter_loads, run_predict

from llamafactory_attok.eval.classification import score_generated

pytestmark = pytest.mark.slow
QUESTION = "<image>What kind of image is this?"


@pytest.fixture(scope="module")
def adapter(modality_adapter):
    return modality_adapter


def _images(sample_data) -> dict[str, str]:
    """One training image per attribute token."""
    rows = json.loads((sample_data / "modality_train.json").read_text())
    return {row["messages"][1]["content"].split()[0]: str(sample_data / row["images"][0]) for row in rows[:2]}


def _chat(tiny_models, adapter, sample_data, **extra) -> dict[str, str]:
    from llamafactory.chat import ChatModel

    chat = ChatModel({"model_name_or_path": str(tiny_models["qwen2_vl"]), "adapter_name_or_path": str(adapter),
                      "template": "qwen2_vl", "infer_dtype": "float32", "do_sample": False, "max_new_tokens": 6,
                      **extra})
    return {token: chat.chat([{"role": "user", "content": QUESTION}], images=[image])[0].response_text
            for token, image in _images(sample_data).items()}


def test_chat_hides_attribute_tokens_unless_asked(tiny_models, adapter, sample_data):
    hidden = _chat(tiny_models, adapter, sample_data)
    shown = _chat(tiny_models, adapter, sample_data, attok_show_tokens=True)
    for token in ("<|fundus_photo|>", "<|xray_chest|>"):  # the answer follows the image
        assert shown[token].startswith(token), shown
        assert "<|" not in hidden[token] and hidden[token].strip() == re.sub(r"<\|\w+\|>", "", shown[token]).strip()


def test_openai_compatible_api_answers_an_image_question(attok_api, sample_data):
    client = attok_api  # `llamafactory-cli api` on the AttTok adapter (conftest)
    for token, image in _images(sample_data).items():
        data = base64.b64encode(open(image, "rb").read()).decode()
        reply = client.chat.completions.create(model="attok", temperature=0, max_tokens=6, messages=[{
            "role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                {"type": "text", "text": "What kind of image is this?"}]}])
        assert reply.choices[0].message.content.startswith(token)


def test_batch_prediction_writes_generated_predictions(tiny_models, adapter, sample_data, tmp_path):
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "pred", do_train=False, do_predict=True,
                     predict_with_generate=True, adapter_name_or_path=str(adapter), eval_dataset="modality_train",
                     max_new_tokens=6, do_sample=False, per_device_eval_batch_size=4, skip_special_tokens=False)
    for key in ("lora_target", "lora_rank"):
        args.pop(key)
    run_predict(args)  # LF's run_exp in this process, as `llamafactory-cli train` runs it
    rows = [json.loads(line) for line in (tmp_path / "pred" / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all({"prompt", "predict", "label"} <= set(r) for r in rows)
    first = re.compile(r"<\|(fundus_photo|xray_chest)\|>")  # labels carry LF's pad tokens before the answer
    predicted = [first.search(r["predict"]).group(0) for r in rows]
    expected = [first.search(r["label"]).group(0) for r in rows]
    assert sum(p == e for p, e in zip(predicted, expected, strict=True)) >= 12
    scores = score_generated(tmp_path / "pred" / "generated_predictions.jsonl", sample_data / "modality_train.json")
    # `attok eval` reads LF's file; after the token the tiny model's text is junk, so the text rules parse nothing
    assert scores.total == 16 and scores.unparseable == 16 and scores.accuracy == 0.0


def test_loading_attok_folder_with_plugin_disabled_warns(tiny_models, adapter):
    loads = disabled_adapter_loads(str(tiny_models["qwen2_vl"]), str(adapter))  # one ATTOK_DISABLE=1 process
    assert "was saved with AttTok state" in loads["chat"] and "outputs will differ" in loads["chat"]  # ChatModel


def test_adapter_on_another_base_tokenizer_is_refused(tiny_models, adapter, tmp_path):
    from llamafactory.chat import ChatModel

    from llamafactory_attok.errors import AttTokError

    other = tmp_path / "other_base"
    assert_ok(run_cli(["attok", "tiny-model", str(other), "--family", "qwen2_vl"], cwd=tmp_path))
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["added_tokens"].append({"id": 400, "content": "<|extra_token|>", "single_word": False, "lstrip": False,
                                      "rstrip": False, "normalized": False, "special": True})
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(AttTokError) as error:
        ChatModel({"model_name_or_path": str(other), "adapter_name_or_path": str(adapter), "template": "qwen2_vl",
                   "infer_dtype": "float32"})
    assert f"{adapter}: its attribute tokens have ids [400, 401]" in str(error.value)
    assert "base tokenizer gives [401, 402]" in str(error.value)
    assert os.path.isdir(adapter)
