"""The one door into LLaMA-Factory, exercised through the real `llamafactory-cli` (subprocesses)."""

import json
import re

import pytest
from conftest import assert_ok, base_args, log_history, run_cli, train_cli, trainer_log, write_yaml

from llamafactory_attok import lf_patches
from llamafactory_attok.errors import AttTokError
from llamafactory_attok.lf_patches import parser as lf_parser
from llamafactory_attok.lf_patches import workflow as lf_workflow

pytestmark = pytest.mark.slow


def test_vanilla_run_is_bit_identical_with_and_without_the_plugin(tiny_models, sample_data, tmp_path):
    """Installed but no attok keys: the same per-step losses as with ATTOK_DISABLE=1."""
    losses = {}
    for name, env in (("plugin", {}), ("disabled", {"ATTOK_DISABLE": "1"})):
        args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / name, dataset="retina_vanilla_train")
        assert_ok(train_cli(tmp_path, args, **env))
        losses[name] = [(e["step"], e["loss"], e["grad_norm"]) for e in log_history(tmp_path / name)]
        assert not (tmp_path / name / "attok_config.json").exists()
    assert len(losses["plugin"]) == 6
    assert losses["plugin"] == losses["disabled"]


def test_attok_cli_run_logs_losses_and_saves_its_state(tiny_models, sample_data, tmp_path):
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok=True, save_steps=3)
    result = train_cli(tmp_path, args)
    assert_ok(result)
    entries = [e for e in trainer_log(tmp_path / "out") if "loss_acm" in e]
    assert len(entries) == 6 and entries[0]["acm_weight"] == 1.0 and entries[-1]["acm_weight"] == 0.0
    assert "'loss_acm'" in result.stdout + result.stderr  # console
    for folder in (tmp_path / "out", tmp_path / "out" / "checkpoint-3"):
        names = {p.name for p in folder.iterdir()}
        assert {"attok_vocab.yaml", "attok_config.json", "attok_state.safetensors"} <= names
    config = json.loads((tmp_path / "out" / "attok_config.json").read_text())
    assert config["token_ids"] == [400, 401, 402, 403, 404] and config["model_type"] == "qwen2_vl"
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter["trainable_token_indices"] == {"embed_tokens": config["token_ids"], "lm_head": config["token_ids"]}
    assert not adapter["modules_to_save"]


def test_vocabulary_derived_from_answers_when_no_file(tiny_models, sample_data, tmp_path):
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok=True, max_steps=1)
    assert_ok(train_cli(tmp_path, args))
    vocab = (tmp_path / "out" / "attok_vocab.yaml").read_text()
    assert "<|fundus_moderate_dr|>: moderate diabetic retinopathy" in vocab


def test_cli_list_form_and_yaml_override_are_parsed_strictly(tiny_models, sample_data, tmp_path):
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok=True, max_steps=1)
    config = write_yaml(tmp_path / "x.yaml", args)
    result = run_cli(["llamafactory-cli", "train", str(config), "attok_gama=0.2"], cwd=tmp_path)
    assert result.returncode != 0 and "Unknown AttTok argument 'attok_gama'" in result.stderr
    assert "attok_acc_gamma" in result.stderr
    flat = [item for key, value in args.items() for item in (f"--{key}", str(value))]
    result = run_cli(["llamafactory-cli", "train", *flat, "--attok_acc_gamma", "0.25"], cwd=tmp_path)
    assert_ok(result)
    saved = json.loads((tmp_path / "out" / "attok_config.json").read_text())["args"]
    assert saved["attok_acc_gamma"] == 0.25


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"stage": "pt", "dataset": "retina_attok_train"}, "attok: true needs `stage: sft`, got stage 'pt'"),
        ({"attok_tau": 0}, "attok_tau must be > 0"),
        ({"dataset": "retina_vanilla_train", "attok_vocab": "VOCAB"},
         "dataset retina_vanilla_train (in DATA): zero attribute-token occurrences"),
    ],
)
def test_bad_configurations_fail_before_training(overrides, message, tiny_models, sample_data, tmp_path):
    overrides = {k: (str(sample_data / "retina_vocab.yaml") if v == "VOCAB" else v) for k, v in overrides.items()}
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok=True, **overrides)
    result = train_cli(tmp_path, args)
    assert result.returncode != 0
    assert message.replace("DATA", str(sample_data)) in result.stderr
    assert not (tmp_path / "out" / "attok_state.safetensors").exists()


def test_unsupported_family_is_refused(sample_data, tmp_path):
    text_only = tmp_path / "qwen2_text"
    text_only.mkdir()
    (text_only / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    args = base_args(text_only, sample_data, tmp_path / "out", attok=True)
    result = train_cli(tmp_path, args)
    assert result.returncode != 0
    assert "AttTok does not support model family 'qwen2'" in result.stderr and "qwen2_5_vl" in result.stderr


def test_attribute_token_missing_from_vocabulary_names_the_sample(tiny_models, sample_data, tmp_path):
    vocab = tmp_path / "partial.yaml"
    vocab.write_text('"<|fundus_no_dr|>": no diabetic retinopathy\n')
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok=True, attok_vocab=str(vocab))
    result = train_cli(tmp_path, args)
    assert result.returncode != 0
    assert re.search(r"retina_attok_train.json: sample \d+: attribute token <\|fundus_\w+\|> appears in the data "
                     r"but not in the attribute vocabulary", result.stderr)


def test_unsupported_lf_version_refuses_attok_only():
    read_args = lf_parser.guarded_read_args(lambda args: args, lf_patches.unsupported_version_reason)
    assert read_args({"stage": "sft"}) == {"stage": "sft"}
    with pytest.raises(AttTokError, match="AttTok keys attok, attok_tau cannot be honoured: .*built for LLaMA-Fac"):
        read_args({"stage": "sft", "attok": True, "attok_tau": 2})


def test_attribute_tokens_are_removed_from_generation_eos():
    captured = {}

    class FakeTrainer:
        def __init__(self, **kwargs):
            captured.update(kwargs)

    class Args:
        _attok = type("Ctx", (), {"token_ids": [400, 401], "training": False})()

    class FakeAttTokTrainer:
        def __init__(self, *args, attok, **kwargs):
            captured.update(kwargs)

    make = lf_workflow.trainer_factory(FakeTrainer, FakeAttTokTrainer)
    make(finetuning_args=Args(), gen_kwargs={"eos_token_id": [2, 400, 401, 7]}, callbacks=[])
    assert captured["gen_kwargs"]["eos_token_id"] == [2, 7]


def test_lf_entry_point_modules_are_patched_in_a_fresh_interpreter(tmp_path):
    code = ("import llamafactory.hparams.parser as p, llamafactory.model.loader as l, llamafactory.train.sft.workflow "
            "as w; print(p.__attok_patched__, l.__attok_patched__, w.__attok_patched__)")
    result = run_cli(["python", "-c", code], cwd=tmp_path)
    assert_ok(result)
    assert result.stdout.strip().endswith("True True True")
    probe = "import llamafactory.hparams.parser as p; print(hasattr(p._parse_train_args, '__wrapped__'))"
    disabled = run_cli(["python", "-c", probe], cwd=tmp_path, ATTOK_DISABLE="1")
    assert disabled.stdout.strip().endswith("False")


def test_webui_spawned_training_keeps_attok_keys(tiny_models, sample_data, tmp_path):
    """What LlamaBoard's Train tab does: extra-arguments JSON merged into args, `save_cmd` writes the YAML, then
    `llamafactory-cli train <output_dir>/training_args.yaml` runs in a new process with LLAMABOARD_ENABLED=1."""
    extra = json.loads('{"attok": true, "attok_acm": false, "attok_acc_gamma": 0.2}')
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "webui_out", max_steps=2, **extra)
    code = f"from llamafactory.webui.common import save_cmd; print(save_cmd({args!r}))"
    written = run_cli(["python", "-c", code], cwd=tmp_path)
    assert_ok(written)
    yaml_path = written.stdout.strip().splitlines()[-1]
    result = run_cli(["llamafactory-cli", "train", yaml_path], cwd=tmp_path, LLAMABOARD_ENABLED="1",
                     LLAMABOARD_WORKDIR=str(tmp_path / "webui_out"))
    assert_ok(result)
    saved = json.loads((tmp_path / "webui_out" / "attok_config.json").read_text())["args"]
    assert saved["attok_acm"] is False and saved["attok_acc_gamma"] == 0.2


def test_apply_patches_lf_for_programmatic_use():
    import llamafactory.model.loader as loader

    import llamafactory_attok

    llamafactory_attok.apply()
    llamafactory_attok.apply()
    assert loader.__attok_patched__ and loader.patch_tokenizer.__wrapped__.__module__ == "llamafactory.model.patcher"
