"""The one door into LLaMA-Factory: the real `llamafactory-cli` (console script, fresh interpreters) where the process
is what is proven (startup hook, ATTOK_DISABLE, WebUI-spawned training); LF's own entry points in this process (the
startup hook has patched them here too) for everything else."""

import json
import re
import subprocess
import sys

import pytest
from conftest import assert_ok, base_args, cli_env, log_history, run_cli, train_cli, trainer_log, write_yaml

from llamafactory_attok import lf_patches
from llamafactory_attok.errors import AttTokError
from llamafactory_attok.lf_patches import parser as lf_parser
from llamafactory_attok.lf_patches import workflow as lf_workflow

pytestmark = [pytest.mark.slow, pytest.mark.compat]

# An ATTOK_DISABLE=1 interpreter: says whether LF's parser is wrapped, then runs `llamafactory-cli train CONFIG`.
_DISABLED_TRAIN = """
import sys
import llamafactory.hparams.parser as p
print("wrapped:", hasattr(p._parse_train_args, "__wrapped__"), flush=True)
from llamafactory.cli import main
sys.argv = ["llamafactory-cli", "train", sys.argv[1]]
main()
"""


def test_vanilla_run_is_bit_identical_with_and_without_the_plugin(tiny_models, sample_data, tmp_path):
    """Installed but no attok keys (LF's run_exp in this process): the same per-step losses as with ATTOK_DISABLE=1
    (a fresh interpreter, where the variable is read), whose LF modules stay unwrapped."""
    from llamafactory.train.tuner import run_exp

    def args(name):
        return base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / name, dataset="retina_vanilla_train",
                         max_steps=3)

    run_exp(args("plugin"))
    config = write_yaml(tmp_path / "disabled.yaml", args("disabled"))
    disabled = subprocess.run([sys.executable, "-c", _DISABLED_TRAIN, str(config)], cwd=tmp_path,
                              env=cli_env(ATTOK_DISABLE="1"), capture_output=True, text=True, timeout=600)
    assert_ok(disabled)
    assert "wrapped: False" in disabled.stdout
    losses = {name: [(e["step"], e["loss"], e["grad_norm"]) for e in log_history(tmp_path / name)]
              for name in ("plugin", "disabled")}
    for name in losses:
        assert not (tmp_path / name / "attok_config.json").exists()
    assert len(losses["plugin"]) == 3
    assert losses["plugin"] == losses["disabled"]


def test_attok_cli_run_logs_losses_and_saves_its_state(tiny_models, sample_data, tmp_path):
    """The console script end to end, in a fresh interpreter (so the start-up hook patched LF's parser, loader and
    workflow there: AttTok trained and logged); no `attok_vocab`, so the vocabulary is derived from the answers."""
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok=True, max_steps=2, save_steps=1)
    result = train_cli(tmp_path, args)
    assert_ok(result)
    entries = [e for e in trainer_log(tmp_path / "out") if "loss_acm" in e]
    assert len(entries) == 2 and entries[0]["acm_weight"] == 1.0 and entries[-1]["acm_weight"] == 0.0
    assert "'loss_acm'" in result.stdout + result.stderr  # console
    assert "AttTok: loss_acm ended at " in result.stdout + result.stderr  # the note: ACM against chance, ln K
    for folder in (tmp_path / "out", tmp_path / "out" / "checkpoint-1"):
        names = {p.name for p in folder.iterdir()}
        assert {"attok_vocab.yaml", "attok_config.json", "attok_state.safetensors"} <= names
    config = json.loads((tmp_path / "out" / "attok_config.json").read_text())
    assert config["token_ids"] == [400, 401, 402, 403, 404] and config["model_type"] == "qwen2_vl"
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter["trainable_token_indices"] == {"embed_tokens": config["token_ids"], "lm_head": config["token_ids"]}
    assert not adapter["modules_to_save"]
    vocab = (tmp_path / "out" / "attok_vocab.yaml").read_text()  # derived: no attok_vocab given
    assert "<|fundus_moderate_dr|>: moderate diabetic retinopathy" in vocab


def test_cli_list_form_and_yaml_override_are_parsed_strictly(tiny_models, sample_data, tmp_path, monkeypatch):
    """LF's two other argument forms through the console script's function in this process: `train CONFIG.yaml
    key=value` (refused: a misspelt AttTok key) and `train --key value ...` (run)."""
    from llamafactory.cli import main as cli_main

    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok=True, max_steps=1)
    config = write_yaml(tmp_path / "x.yaml", args)
    monkeypatch.setattr(sys, "argv", ["llamafactory-cli", "train", str(config), "attok_gama=0.2"])
    with pytest.raises(AttTokError, match="Unknown AttTok argument 'attok_gama'") as error:
        cli_main()
    assert "attok_acc_gamma" in str(error.value)
    flat = [item for key, value in args.items() for item in (f"--{key}", str(value))]
    monkeypatch.setattr(sys, "argv", ["llamafactory-cli", "train", *flat, "--attok_acc_gamma", "0.25"])
    cli_main()
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
    """LF's run_exp in this process (a refusal through the real CLI:
    test_failsafe.py::test_refusal_end_to_end_through_the_cli)."""
    from llamafactory.train.tuner import run_exp

    overrides = {k: (str(sample_data / "retina_vocab.yaml") if v == "VOCAB" else v) for k, v in overrides.items()}
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok=True, **overrides)
    with pytest.raises(AttTokError) as error:
        run_exp(args)
    assert message.replace("DATA", str(sample_data)) in str(error.value)
    assert not (tmp_path / "out" / "attok_state.safetensors").exists()


def test_unsupported_family_is_refused(sample_data, tmp_path):
    from llamafactory.train.tuner import run_exp

    text_only = tmp_path / "qwen2_text"
    text_only.mkdir()
    (text_only / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    args = base_args(text_only, sample_data, tmp_path / "out", attok=True)
    with pytest.raises(AttTokError) as error:
        run_exp(args)
    assert "AttTok does not support model family 'qwen2'" in str(error.value) and "qwen2_5_vl" in str(error.value)


def test_attribute_token_missing_from_vocabulary_names_the_sample(tiny_models, sample_data, tmp_path):
    from llamafactory.train.tuner import run_exp

    vocab = tmp_path / "partial.yaml"
    vocab.write_text('"<|fundus_no_dr|>": no diabetic retinopathy\n')
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok=True, attok_vocab=str(vocab))
    with pytest.raises(AttTokError) as error:
        run_exp(args)
    assert re.search(r"retina_attok_train.json: sample \d+: attribute token <\|fundus_\w+\|> appears in the data "
                     r"but not in the attribute vocabulary", str(error.value))


def test_unsupported_lf_version_refuses_attok_only(monkeypatch):
    from llamafactory_attok.lf_patches import stack

    monkeypatch.setattr(stack, "lf_version", lambda: "0.9.99")
    read_args = lf_parser.guarded_read_args(lambda args: args, lf_patches.unsupported_version_reason)
    assert read_args({"stage": "sft"}) == {"stage": "sft"}
    with pytest.raises(AttTokError, match="AttTok keys attok, attok_tau cannot be honoured: .*tested on LLaMA-Factory "
                                          ".*found LLaMA-Factory 0.9.99"):
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


def test_webui_spawned_training_keeps_attok_keys(tiny_models, sample_data, tmp_path):
    """What LlamaBoard's Train tab does: extra-arguments JSON merged into args, `save_cmd` writes the YAML (here, in
    this process), then `llamafactory-cli train <output_dir>/training_args.yaml` runs in a new process with
    LLAMABOARD_ENABLED=1."""
    from llamafactory.webui.common import save_cmd

    extra = json.loads('{"attok": true, "attok_acm": false, "attok_acc_gamma": 0.2}')
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "webui_out", max_steps=1, **extra)
    yaml_path = save_cmd(args)
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
