"""A training run never writes over what it reads, one run per output folder, resume only continues, and every
refusal names the key and the fix (issue 22: items 1, 8, 16, 18, 19, 20, 23). In-process through LF's parser."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import base_args, run_cli
from lf_inprocess import run_sft

from llamafactory_attok import _boot
from llamafactory_attok.errors import AttTokError
from llamafactory_attok.run_guards import refuse_changed_resume, run_lock
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


def test_resuming_a_vanilla_checkpoint_with_attok_is_refused(tmp_path):
    vocab = tmp_path / "v.yaml"
    vocab.write_text('"<|fundus_no_dr|>": "no"\n')
    with pytest.raises(AttTokError, match="trained without AttTok .* start a new AttTok run"):
        refuse_changed_resume(tmp_path, load_vocab(vocab), [400], {})
