"""A training run never writes over what it reads, one run per output folder, resume only continues, and every
refusal names the key and the fix. In-process through LF's parser."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import base_args, run_cli
from lf_inprocess import run_sft

from llamafactory_attok import _boot
from llamafactory_attok.errors import AttTokError
from llamafactory_attok.run_guards import lora_shape, refuse_changed_resume, run_lock
from llamafactory_attok.vocab import load_vocab


def _train_args(args: dict):
    from llamafactory.hparams import get_train_args

    return get_train_args(args)


def test_output_dir_on_the_base_model_is_refused_whatever_overwrite_says(tiny_models, sample_data, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_models["qwen2_vl"], model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    for out in (model, model / "inside", tmp_path):
        args = base_args(model, sample_data, out, attok=True, overwrite_output_dir=True)
        with pytest.raises(AttTokError, match="overlaps model_name_or_path .* Choose an output_dir outside it"):
            _train_args(args)
    args = base_args(tiny_models["qwen2_vl"], sample_data, sample_data, attok=True)
    with pytest.raises(AttTokError, match="overlaps dataset_dir"):
        _train_args(args)
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


def test_attok_false_with_settings_is_refused(tiny_models, sample_data, tmp_path):
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "o", attok=False, attok_tau=2.0)
    with pytest.raises(AttTokError, match="attok_tau are given but `attok: false` is given"):
        _train_args(args)


def test_template_of_another_family_names_the_right_one(tiny_models, sample_data, tmp_path):
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "o", attok=True, template="llava")
    with pytest.raises(AttTokError, match="template 'llava' does not fit .* use `template: qwen2_vl`"):
        _train_args(args)


def test_adapter_with_token_rows_but_no_attok_files_is_named(tiny_models, tmp_path):
    from llamafactory.hparams import get_infer_args

    (tmp_path / "adapter_config.json").write_text(json.dumps({"trainable_token_indices": {"embed_tokens": [400]}}))
    with pytest.raises(AttTokError, match="holds none of AttTok's files .* complete checkpoint"):
        get_infer_args({"model_name_or_path": str(tiny_models["qwen2_vl"]), "adapter_name_or_path": str(tmp_path),
                        "template": "qwen2_vl"})


def test_a_second_run_into_a_locked_output_dir_stops(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(AttTokError, match=r"another training run \(pid \d+\) is writing into it"):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released: free again, and no lock file left behind
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value,setting", [("1", "disabled"), (" TRUE ", "disabled"), ("yes", "disabled"),
                                           ("", "enabled"), ("off", "enabled"), ("0", "enabled"),
                                           ("maybe", "invalid"), ("2", "invalid")])
def test_attok_disable_spellings(value, setting, monkeypatch):
    monkeypatch.setenv("ATTOK_DISABLE", value)
    assert _boot.disable_setting() == setting


@pytest.mark.slow
def test_attok_keys_under_attok_disable_name_the_variable(tmp_path):
    code = "from llamafactory.hparams import get_train_args\nget_train_args({'attok': True, 'stage': 'sft'})"
    result = run_cli(["python", "-c", code], cwd=tmp_path, ATTOK_DISABLE="maybe")
    assert result.returncode != 0
    assert "ATTOK_DISABLE='maybe' is not one of" in result.stderr  # at start
    assert "ATTOK_DISABLE='maybe' turns AttTok off, but the arguments hold attok" in result.stderr


# ---- resume continues the run it resumes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tiny_models, sample_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    vocab = out.parent / "vocab.yaml"
    shutil.copy(sample_data / "retina_vocab.yaml", vocab)
    run_sft(base_args(tiny_models["qwen2_vl"], sample_data, out, attok=True, attok_vocab=str(vocab), max_steps=2,
                      save_steps=1))
    return {"out": out, "vocab": vocab}


def test_resume_with_the_vocabulary_reordered_is_refused(checkpoint, tiny_models, sample_data):
    lines = checkpoint["vocab"].read_text().splitlines()
    body = [i for i, line in enumerate(lines) if line.startswith('"')]
    lines[body[0]], lines[body[1]] = lines[body[1]], lines[body[0]]
    swapped = checkpoint["vocab"].parent / "swapped.yaml"
    swapped.write_text("\n".join(lines) + "\n")
    args = base_args(tiny_models["qwen2_vl"], sample_data, checkpoint["out"], attok=True, attok_vocab=str(swapped),
                     max_steps=3, save_steps=1, overwrite_output_dir=False,
                     resume_from_checkpoint=str(checkpoint["out"] / "checkpoint-2"))
    with pytest.raises(AttTokError, match=r"checkpoint-2: resuming needs .* token order changed: <\|fundus_mild_dr"):
        run_sft(args)


@pytest.mark.parametrize("change,message", [
    ("drop", "tokens removed: <|fundus_proliferative_dr|>"),
    ("keyword", "keywords changed: <|fundus_no_dr|>: 'no diabetic retinopathy' -> 'healthy'"),
    ("acc", "attok_acc: True -> False"),
    ("acm", "attok_acm: True -> False"),
])
def test_resume_refuses_every_change_of_what_saved_rows_mean(checkpoint, change, message, tmp_path):
    folder = checkpoint["out"] / "checkpoint-2"
    saved = json.loads((folder / "attok_config.json").read_text())
    vocab, args = load_vocab(folder / "attok_vocab.yaml"), dict(saved["args"])
    tokens, keywords = list(vocab.tokens), list(vocab.keywords)
    if change == "drop":
        tokens, keywords = tokens[:-1], keywords[:-1]
    elif change == "keyword":
        keywords[0] = "healthy"
    else:
        args[f"attok_{change}"] = False
    path = tmp_path / "v.yaml"
    path.write_text("".join(f'"{t}": "{k}"\n' for t, k in zip(tokens, keywords, strict=True)))
    with pytest.raises(AttTokError, match=message.replace("|", r"\|").replace("(", r"\(")):
        refuse_changed_resume(folder, load_vocab(path), saved["token_ids"][:len(tokens)], args)


def test_resume_refuses_another_finetuning_type_or_lora_shape(checkpoint, tiny_models, sample_data):
    """A LoRA checkpoint resumed as full fine-tuning, or with another rank, would fail deep in transformers / PEFT
    (no weight index; size mismatch) without naming the checkpoint: refused, naming what changed."""
    folder = checkpoint["out"] / "checkpoint-2"
    saved = json.loads((folder / "attok_config.json").read_text())
    vocab = load_vocab(folder / "attok_vocab.yaml")
    adapter = json.loads((folder / "adapter_config.json").read_text())
    with pytest.raises(AttTokError, match="finetuning_type: lora -> full"):
        refuse_changed_resume(folder, vocab, saved["token_ids"], saved["args"], "full", None)
    with pytest.raises(AttTokError, match="base model type qwen2_vl -> qwen2_5_vl"):
        refuse_changed_resume(folder, vocab, saved["token_ids"], saved["args"], "lora", None, "qwen2_5_vl")
    refuse_changed_resume(folder, vocab, saved["token_ids"], saved["args"], "lora", lora_shape(adapter))  # same: ok
    prompt = {k: saved[k] for k in ("template", "default_system")}
    refuse_changed_resume(folder, vocab, saved["token_ids"], saved["args"], "lora", None, None, None, prompt)
    with pytest.raises(AttTokError, match=r"default_system: None -> 'You are a pirate.' \(the prompts the steps so "
                                          r"far were trained with\)"):
        refuse_changed_resume(folder, vocab, saved["token_ids"], saved["args"], "lora", None, None, None,
                              {**prompt, "default_system": "You are a pirate."})
    args = base_args(tiny_models["qwen2_vl"], sample_data, checkpoint["out"], attok=True,
                     attok_vocab=str(checkpoint["vocab"]), max_steps=3, save_steps=1, overwrite_output_dir=False,
                     lora_rank=4, resume_from_checkpoint=str(folder))
    with pytest.raises(AttTokError, match=r"checkpoint-2: resuming needs the checkpoint's setup .* LoRA r: 8 -> 4"):
        run_sft(args)


def test_resume_on_other_base_weights_of_the_same_architecture_is_refused(checkpoint, tiny_models, sample_data,
                                                                          tmp_path):
    """A tiny Qwen2-VL of another seed (same type, same shapes) as the base of a resume would continue the LoRA
    deltas, rows and books on another model: refused, naming the weights; the same weights in another folder pass."""
    from llamafactory_attok.base_model import weights_fingerprint
    from llamafactory_attok.tiny import build_tiny_model

    folder = checkpoint["out"] / "checkpoint-2"
    saved = json.loads((folder / "attok_config.json").read_text())
    assert saved["base_weights"] == weights_fingerprint(str(tiny_models["qwen2_vl"])) is not None
    moved = tmp_path / "moved"
    shutil.copytree(tiny_models["qwen2_vl"], moved)
    assert weights_fingerprint(str(moved)) == saved["base_weights"]
    other = build_tiny_model(tmp_path / "other", family="qwen2_vl", seed=1)
    run = tmp_path / "run"
    shutil.copytree(checkpoint["out"], run)
    args = base_args(other, sample_data, run, attok=True, attok_vocab=str(checkpoint["vocab"]), max_steps=3,
                     save_steps=1, overwrite_output_dir=False, resume_from_checkpoint=str(run / "checkpoint-2"))
    with pytest.raises(AttTokError, match=r"base model weights [0-9a-f]{32} -> [0-9a-f]{32} \(model_name_or_path "
                                          r"holds other weights than the run was trained on\)"):
        run_sft(args)


def test_resuming_a_vanilla_checkpoint_with_attok_is_refused(tmp_path):
    vocab = tmp_path / "v.yaml"
    vocab.write_text('"<|fundus_no_dr|>": "no"\n')
    with pytest.raises(AttTokError, match="trained without AttTok .* start a new AttTok run"):
        refuse_changed_resume(tmp_path, load_vocab(vocab), [400], {})


# ---- inference, export and predict outputs -------------------------------------------------------------------


def _infer_args(args: dict):
    from llamafactory.hparams import get_infer_args

    return get_infer_args(args)


def test_export_never_writes_into_the_base_model_or_the_adapter(checkpoint, tiny_models, tmp_path):
    from llamafactory.train.tuner import export_model

    model = tmp_path / "model"
    shutil.copytree(tiny_models["qwen2_vl"], model)
    adapter = checkpoint["out"]
    for target, source in ((model, "model_name_or_path"), (adapter, "adapter_name_or_path")):
        with pytest.raises(AttTokError, match=f"export_dir .* overlaps {source}"):
            export_model({"model_name_or_path": str(model), "adapter_name_or_path": str(adapter),
                          "template": "qwen2_vl", "finetuning_type": "lora", "export_dir": str(target)})


def test_export_never_replaces_attok_files_that_are_not_the_adapters(checkpoint, tiny_models, tmp_path):
    """A user's attok_vocab.yaml (or another run's state) in export_dir would be replaced by the export: refused
    before LF writes anything; the adapter's own files there (a re-export) are fine."""
    from llamafactory.train.tuner import export_model

    target = tmp_path / "export"
    target.mkdir()
    (target / "attok_vocab.yaml").write_text('"<|my_tok|>": my precious vocabulary\n')
    (target / "notes.txt").write_text("keep")
    args = {"model_name_or_path": str(tiny_models["qwen2_vl"]), "adapter_name_or_path": str(checkpoint["out"]),
            "template": "qwen2_vl", "finetuning_type": "lora", "export_dir": str(target)}
    with pytest.raises(AttTokError, match=r"export_dir .* holds an attok_vocab.yaml that is not .*'s: the export "
                                          "would replace it"):
        export_model(args)
    assert sorted(p.name for p in target.iterdir()) == ["attok_vocab.yaml", "notes.txt"]
    assert "my precious" in (target / "attok_vocab.yaml").read_text()


def test_do_predict_into_the_adapter_folder_is_refused(checkpoint, tiny_models, sample_data):
    args = base_args(tiny_models["qwen2_vl"], sample_data, checkpoint["out"], do_train=False, do_predict=True,
                     adapter_name_or_path=str(checkpoint["out"]), eval_dataset="retina_attok_test",
                     predict_with_generate=True)
    args.pop("dataset")
    with pytest.raises(AttTokError, match="output_dir .* overlaps adapter_name_or_path"):
        _train_args(args)


@pytest.mark.parametrize("override", [{"attok_acc": False}, {"attok_acc_gamma": 5.0},
                                      {"attok_training_positions": False}])
def test_trained_settings_cannot_be_changed_at_inference(override, checkpoint, tiny_models):
    base = {"model_name_or_path": str(tiny_models["qwen2_vl"]), "adapter_name_or_path": str(checkpoint["out"]),
            "template": "qwen2_vl"}
    with pytest.raises(AttTokError, match="trained with other settings than the ones given now .* Remove those keys"):
        _infer_args({**base, **override})
    _infer_args({**base, "attok_show_tokens": True})  # the display option stays free


def test_wrong_template_at_inference_names_the_right_one(checkpoint, tiny_models):
    with pytest.raises(AttTokError, match="template 'llava' does not fit .* use `template: qwen2_vl`"):
        _infer_args({"model_name_or_path": str(tiny_models["qwen2_vl"]), "template": "llava",
                     "adapter_name_or_path": str(checkpoint["out"])})


def test_auto_resume_of_an_attok_run_without_attok_is_refused(checkpoint, tiny_models, sample_data, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(checkpoint["out"], out)
    args = base_args(tiny_models["qwen2_vl"], sample_data, out, dataset="retina_vanilla_train",
                     overwrite_output_dir=False, max_steps=3)
    with pytest.raises(AttTokError, match="this checkpoint was trained with AttTok .* needs `attok: true`"):
        _train_args(args)


def test_predict_never_writes_into_input_folders_nor_over_results(checkpoint, tiny_models, sample_data, tmp_path):
    from llamafactory_attok.eval.predict import run_predict

    dataset = str(sample_data / "retina_attok_test.json")
    with pytest.raises(AttTokError, match="lies inside --adapter"):
        run_predict(str(tiny_models["qwen2_vl"]), dataset, str(checkpoint["out"] / "attok_config.json"),
                    adapter=str(checkpoint["out"]), overwrite=True)
    with pytest.raises(AttTokError, match="lies inside --model"):
        run_predict(str(tiny_models["qwen2_vl"]), dataset, str(tiny_models["qwen2_vl"] / "new.jsonl"))
    earlier = tmp_path / "p.jsonl"
    earlier.write_text("{}\n")
    with pytest.raises(AttTokError, match="already exists; pass --overwrite"):
        run_predict(str(tiny_models["qwen2_vl"]), dataset, str(earlier), adapter=str(checkpoint["out"]))
    assert earlier.read_text() == "{}\n"


@pytest.mark.parametrize("name", ["p,q", "a:b", "ok name", "ａ／b"])
def test_dataset_names_lf_cannot_select_are_refused(name):
    from llamafactory_attok.safe_paths import dataset_name

    with pytest.raises(AttTokError, match="use letters"):
        dataset_name(name)
