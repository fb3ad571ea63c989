"""Fail-safe integration (rule 1: vanilla LF is never hurt; rule 2: AttTok does what it says or stops loudly)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import base_args, cli_env, log_history, train_cli, write_yaml
from lf_inprocess import disabled_adapter_loads, run_sft

from llamafactory_attok import lf_patches, run_policy
from llamafactory_attok.compat import REFUSED
from llamafactory_attok.errors import AttTokError
from llamafactory_attok.lf_patches import adapter as lf_adapter
from llamafactory_attok.lf_patches import workflow as lf_workflow
from llamafactory_attok.state import atomic_write_bytes

HERE = Path(__file__).resolve().parent


def _broken_run(mode: str, tmp: Path, vanilla: dict, attok: dict):
    """One process per fail-safe mode (tests/lf_broken.py): the vanilla run, then the AttTok attempt."""
    import subprocess

    configs = [str(write_yaml(tmp / f"{mode}-{Path(a['output_dir']).name}.yaml", a)) for a in (vanilla, attok)]
    return subprocess.run([sys.executable, str(HERE / "lf_broken.py"), mode, *configs], cwd=tmp, env=cli_env(),
                          capture_output=True, text=True, timeout=600)


# ---- rule 1: a broken patch never hurts vanilla LF; rule 2: AttTok then refuses, naming version and patch point

VANILLA = {"dataset": "retina_vanilla_train", "max_steps": 2}


@pytest.fixture(scope="module")
def vanilla_reference(tiny_models, sample_data, tmp_path_factory) -> list[tuple]:
    """(step, loss, grad_norm) of vanilla LF with the plugin installed, run in this process: the same numbers as
    with ATTOK_DISABLE=1 (test_integration.py::test_vanilla_run_is_bit_identical_with_and_without_the_plugin)."""
    from llamafactory.train.tuner import run_exp

    out = tmp_path_factory.mktemp("vanilla") / "out"
    run_exp(base_args(tiny_models["qwen2_vl"], sample_data, out, **VANILLA))
    reference = [(e["step"], e["loss"], e["grad_norm"]) for e in log_history(out)]
    assert len(reference) == VANILLA["max_steps"]
    return reference


@pytest.mark.slow
@pytest.mark.compat
@pytest.mark.parametrize(("mode", "message"), [
    pytest.param("raise-loader", "llamafactory.model.loader: RuntimeError: simulated patcher bug", id="raise-loader"),
    pytest.param("drop-symbol", "llamafactory.hparams.parser._parse_train_mca_args does not exist", id="drop-symbol"),
    pytest.param("fake-version", f"tested on {lf_patches.tested_text()}; found LLaMA-Factory 0.9.99",
                 id="fake-version"),
])
def test_broken_patches_leave_vanilla_lf_bit_identical_and_refuse_attok(mode, message, vanilla_reference,
                                                                        tiny_models, sample_data, tmp_path):
    from lf_broken import MARKER

    model = tiny_models["qwen2_vl"]
    out = tmp_path / mode
    result = _broken_run(mode, tmp_path, base_args(model, sample_data, out, **VANILLA),
                         base_args(model, sample_data, tmp_path / f"{mode}-attok", attok=True))
    stdout, stderr = result.stdout.split(MARKER), result.stderr.split(MARKER)
    assert len(stderr) == 2, f"the vanilla run failed ({result.returncode})\n{result.stderr[-8000:]}"
    vanilla_err, refused_err = stderr
    assert [(e["step"], e["loss"], e["grad_norm"]) for e in log_history(out)] == vanilla_reference, mode
    if mode != "fake-version":
        assert "llamafactory-attok: could not patch" in vanilla_err  # one warning naming what failed
    assert result.returncode != 0, mode
    assert message in refused_err, refused_err[-3000:]
    installed = f"LLaMA-Factory {lf_patches.lf_version()}"  # the installed LF, whichever tested one it is
    assert "0.9.99" in refused_err if mode == "fake-version" else installed in refused_err
    assert not (tmp_path / f"{mode}-attok").exists()
    if mode == "fake-version":  # an unsupported version: nothing private touched, AttTok keys refused by name
        touched = json.loads(stdout[2].strip().splitlines()[0])
        assert touched == {"parse_train_args_wrapped": False, "read_args_wrapped": True, "loader_patched": False,
                           "lora_config_is_peft": True}
        assert "AttTok keys attok cannot be honoured: llamafactory-attok is tested on" in refused_err
        assert f"{lf_patches.ALLOW_UNTESTED_ENV}=1" in refused_err  # the one way to try anyway


def test_patch_module_never_raises_and_records_why(monkeypatch, capsys):
    class Module:
        __name__ = "llamafactory.model.loader"

    monkeypatch.setattr(lf_patches, "PATCH_FAILURES", {})
    lf_patches.patch_module(lf_patches.LOADER, Module())  # lacks patch_tokenizer / patch_model / init_adapter
    assert "llamafactory.model.loader.patch_tokenizer does not exist" in lf_patches.PATCH_FAILURES[lf_patches.LOADER]
    assert "could not patch llamafactory.model.loader" in capsys.readouterr().err
    assert not hasattr(Module, "__attok_patched__")


def test_patchers_are_all_or_nothing():
    class Module:
        __name__ = "llamafactory.model.loader"
        patch_tokenizer = patch_model = staticmethod(lambda *a: None)

    module = Module()
    with pytest.raises(lf_patches.PatchPointMissing, match="init_adapter"):
        lf_patches._apply_point(lf_patches.LOADER, module, lf_patches.POINTS[lf_patches.LOADER])
    assert not hasattr(module.patch_tokenizer, "__wrapped__")


# ---- rule 2: every LF option that interacts is refused at start-up, by name


def _refusal_args(model, data, out, option: str, tmp_path: Path) -> dict:
    values = {"enable_liger_kernel": True, "use_unsloth": True, "resize_vocab": True, "add_special_tokens": "<x>",
              "quantization_bit": 4, "use_kt": True, "packing": True, "neat_packing": True, "use_mca": True,
              "use_asft_loss": True, "use_dft_loss": True, "use_eaft_loss": True, "finetuning_type": "oft",
              "load_best_model_at_end": True, "use_galore": True, "use_apollo": True, "use_badam": True,
              "use_adam_mini": True, "use_muon": True, "stage": "pt", "additional_target": "embed_tokens",
              "use_hyper_parallel": True, "use_megatron_bridge": True}
    if option == "new_special_tokens_config":
        path = tmp_path / "special.yaml"
        path.write_text('"<|x|>": an extra token\n')
        values[option] = str(path)
    args = base_args(model, data, out, attok=True, **{option: values[option]})
    if option == "load_best_model_at_end":
        args.update(eval_strategy="steps", eval_steps=1000, val_size=0.1)
    if option in ("use_galore", "use_apollo", "use_badam", "use_adam_mini", "use_muon"):
        args.update(finetuning_type="full")
        args.pop("lora_target")
    return args


@pytest.mark.parametrize("option", sorted({rule.option for rule in REFUSED}))
def test_interacting_lf_options_are_refused_by_name(option, tiny_models, sample_data, tmp_path):
    import dataclasses

    from llamafactory.hparams import DataArguments, FinetuningArguments, ModelArguments, get_train_args
    from transformers import Seq2SeqTrainingArguments

    fields = {f.name for cls in (DataArguments, FinetuningArguments, ModelArguments, Seq2SeqTrainingArguments)
              for f in dataclasses.fields(cls)}
    if option not in fields:
        pytest.skip(f"LLaMA-Factory {lf_patches.lf_version()} has no option {option!r}")
    args = _refusal_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", option, tmp_path)
    with pytest.raises(AttTokError, match="^attok: true ") as error:
        get_train_args(args)
    assert f"`{option}" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_video_datasets_are_refused(tiny_models, sample_data, tmp_path):
    from llamafactory.hparams import get_train_args

    info = json.loads((sample_data / "dataset_info.json").read_text())
    data = tmp_path / "data"
    data.mkdir()
    info = {"clips": {**info["retina_attok_train"], "columns": {"messages": "messages", "videos": "videos"}}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    args = base_args(tiny_models["qwen2_vl"], data, tmp_path / "out", attok=True, dataset="clips")
    with pytest.raises(AttTokError, match="dataset 'clips' maps a `videos` column: AttTok does not support video"):
        get_train_args(args)


@pytest.mark.slow
def test_refusal_end_to_end_through_the_cli(tiny_models, sample_data, tmp_path):
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok=True, enable_liger_kernel=True)
    result = train_cli(tmp_path, args)
    assert result.returncode != 0
    assert "attok: true cannot be combined with `enable_liger_kernel: True`: Liger's fused" in result.stderr
    assert not (tmp_path / "out").exists()
    # the error ends the command as its message (the cause and fix), not under LF's and transformers' frames
    assert "llamafactory-attok: error: attok: true cannot be combined" in result.stderr
    assert "Traceback" not in result.stderr and "ATTOK_TRACEBACK=1 shows the full traceback" in result.stderr


def test_nan_float_keys_are_refused(tiny_models, sample_data, tmp_path):
    from llamafactory.hparams import get_train_args

    for key in ("attok_acc_gamma", "attok_tau", "attok_acm_weight", "attok_ema"):
        args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok=True, **{key: "nan"})
        with pytest.raises(AttTokError, match=f"{key} must be a finite number, got nan"):
            get_train_args(args)


def test_vocabulary_may_not_take_over_existing_tokens(tiny_models, sample_data, tmp_path):
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    vocab = tmp_path / "v.yaml"
    vocab.write_text('"<|im_end|>": end of message\n"<|fundus_no_dr|>": no diabetic retinopathy\n')
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok=True, attok_vocab=str(vocab),
                     dataset="modality_train")
    model_args, *_ = get_train_args(args)
    with pytest.raises(AttTokError, match=rf"{vocab}: attribute token\(s\) <\|im_end\|> already exist"):
        load_tokenizer(model_args)


# ---- rule 2 at run time: mechanisms verified where they are used


def test_lora_config_stays_a_class_with_attribute_rows():
    import llamafactory.model.adapter as adapter
    import peft

    assert isinstance(adapter.LoraConfig, type) and issubclass(adapter.LoraConfig, peft.LoraConfig)
    token = lf_adapter.TOKEN_INDICES.set([7, 9])
    try:
        config = adapter.LoraConfig(r=4, target_modules=["q_proj"])
    finally:
        lf_adapter.TOKEN_INDICES.reset(token)
    assert isinstance(config, peft.LoraConfig) and config.trainable_token_indices == [7, 9]
    assert adapter.LoraConfig(r=4, target_modules=["q_proj"]).trainable_token_indices is None


def test_trainer_factory_finds_positional_finetuning_args():
    made = {}

    class LFTrainer:
        def __init__(self, model=None, args=None, finetuning_args=None, processor=None, **kwargs):
            made["lf"] = True

    class Args:
        _attok = type("Ctx", (), {"token_ids": [400], "training": False})()

    class AttTokTrainer:
        def __init__(self, *args, attok, **kwargs):
            made.update(attok=attok)

    make = lf_workflow.trainer_factory(LFTrainer, AttTokTrainer)
    make(None, None, Args())
    assert made == {"attok": Args._attok}


def test_log_keys_that_never_reach_trainer_log_stop_the_run(tmp_path):
    from llamafactory.train.callbacks import LogCallback

    class SilentLog(LogCallback):  # an LF whose on_log stopped writing through _write_log
        def on_log(self, args, state, control, **kwargs):
            return None

    class Args:
        should_save = True
        output_dir = str(tmp_path)

    state = type("State", (), {"log_history": [{"loss": 1.0, "loss_ntp": 0.9, "loss_acm": 0.1}], "global_step": 1,
                               "num_input_tokens_seen": 0, "max_steps": 1})()
    for callback, fails in ((SilentLog(), True), (LogCallback(), False)):
        lf_workflow.forward_attok_logs([callback])
        callback.on_train_begin(Args(), state, None)
        callback.on_log(Args(), state, None)
        if fails:
            with pytest.raises(AttTokError, match="loss_ntp / loss_acm never reached trainer_log.jsonl"):
                callback.on_train_end(Args(), state, None)
        else:
            callback.on_train_end(Args(), state, None)
            assert json.loads((tmp_path / "trainer_log.jsonl").read_text().splitlines()[-1])["loss_acm"] == 0.1


@pytest.mark.slow
def test_runtime_checks_stop_a_silently_degraded_run(tiny_models, sample_data, tmp_path, monkeypatch):
    """Hidden-state capture missing (what Liger's fused loss does), the trainer swap bypassed, a NaN loss: each
    stops the run with an error instead of training something else; nothing is saved."""
    from transformers import TrainerCallback

    from llamafactory_attok.attach import module_of

    class DropHeadHook(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            module_of(model)._hooks[1].remove()

    class PoisonWeights(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "norm" in n).fill_(float("nan"))

    from llamafactory.train.tuner import run_exp

    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "hook", attok=True, max_steps=1)
    with pytest.raises(AttTokError, match="output head never saw the hidden states.*enable_liger_kernel"):
        run_exp(dict(args), callbacks=[DropHeadHook()])
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "nan", attok=True, max_steps=1)
    with pytest.raises(AttTokError, match=r"step 1: loss_ntp = nan"):
        run_exp(dict(args), callbacks=[PoisonWeights()])
    assert not (tmp_path / "nan" / "adapter_model.safetensors").exists()
    import llamafactory.train.sft.workflow as workflow

    monkeypatch.setattr(workflow, "CustomSeq2SeqTrainer", workflow.CustomSeq2SeqTrainer.__wrapped__)
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "bypass", attok=True, max_steps=1)
    with pytest.raises(AttTokError, match="outside the AttTok trainer"):
        run_sft(args)


# ---- saved AttTok folders: missing / truncated / corrupt files are errors naming the file


def test_incomplete_or_corrupt_attok_folders_name_the_file(modality_adapter, tiny_models, tmp_path):
    import shutil

    from llamafactory_attok.eval.attribute_classifier import load_model_for_inference
    from llamafactory_attok.state import find_saved

    folder = tmp_path / "adapter"
    shutil.copytree(modality_adapter, folder)
    state = folder / "attok_state.safetensors"
    data = state.read_bytes()
    state.unlink()
    with pytest.raises(AttTokError, match=f"{state} missing"):
        load_model_for_inference(str(tiny_models["qwen2_vl"]), adapter=str(folder))
    state.write_bytes(data[: len(data) // 2])
    with pytest.raises(AttTokError, match=f"{state}: unreadable AttTok state"):
        load_model_for_inference(str(tiny_models["qwen2_vl"]), adapter=str(folder))
    (folder / "attok_config.json").write_text("{not json")
    with pytest.raises(AttTokError, match=f"{folder / 'attok_config.json'}: unreadable AttTok config"):
        find_saved([folder])


@pytest.mark.slow
def test_disabled_plugin_explains_an_adapter_it_cannot_load(modality_adapter, tiny_models):
    result = disabled_adapter_loads(str(tiny_models["qwen2_vl"]), str(modality_adapter))  # ATTOK_DISABLE=1 process
    assert result["returncode"] != 0, result["stderr"][-3000:]
    assert "loading this AttTok run with ATTOK_DISABLE=1 failed" in result["load"]
    assert "unset ATTOK_DISABLE" in result["load"]


# ---- files: umask honoured, durable, a crash before the rename leaves the old file


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_honour_the_umask(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "f.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == mode


def test_a_crash_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "attok_config.json"
    target.write_bytes(b"old")

    def crash(*args):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["attok_config.json"]




@pytest.mark.slow
def test_video_inputs_are_refused_at_inference_too(modality_adapter, tiny_models):
    """Training refuses videos (start-up and per batch); inference must not run ACC on them either."""
    from llamafactory_attok.eval.attribute_classifier import load_model_for_inference

    model, _, _ = load_model_for_inference(str(tiny_models["qwen2_vl"]), adapter=str(modality_adapter))
    with pytest.raises(AttTokError, match="a batch carries videos.*AttTok does not support video"):
        model(input_ids=torch.tensor([[5, 6]]), pixel_values_videos=torch.zeros(4, 8),
              video_grid_thw=torch.tensor([[1, 2, 2]]))


def test_attok_settings_without_attok_true_are_refused_not_ignored(tiny_models, sample_data, tmp_path):
    from llamafactory.hparams import get_train_args

    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok_acc_gamma=0.2,
                     attok_vocab=str(sample_data / "retina_vocab.yaml"))
    with pytest.raises(AttTokError, match="AttTok settings attok_acc_gamma, attok_vocab are given but `attok: true` "
                                          "is missing"):
        get_train_args(args)
    # an explicit `attok: false` alone is a vanilla run (with settings it is refused too: test_run_guards.py)
    vanilla = {k: v for k, v in args.items() if not k.startswith("attok_")}
    get_train_args({**vanilla, "attok": False})


def test_resuming_an_attok_checkpoint_without_attok_is_refused(tiny_models, sample_data, tmp_path):
    from llamafactory.hparams import get_train_args

    checkpoint = tmp_path / "out" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "attok_config.json").write_text("{}")
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", resume_from_checkpoint=str(checkpoint),
                     overwrite_output_dir=False)
    with pytest.raises(AttTokError, match="this checkpoint was trained with AttTok .* needs `attok: true`"):
        get_train_args(args)


def test_invalid_saved_arguments_name_the_config_file(tmp_path):
    from llamafactory_attok.state import find_saved

    (tmp_path / "attok_config.json").write_text(json.dumps({"args": {"attok": True, "attok_acc_gamma": float("nan")},
                                                            "token_ids": [400]}))
    (tmp_path / "attok_vocab.yaml").write_text('"<|fundus_no_dr|>": no DR\n')
    (tmp_path / "attok_state.safetensors").write_bytes(b"")
    saved = find_saved([tmp_path])
    parsed = (type("ModelArguments", (), {"model_name_or_path": str(tmp_path), "adapter_name_or_path": None})(),
              type("FinetuningArguments", (), {"finetuning_type": "lora"})())
    with pytest.raises(AttTokError, match=f"{tmp_path / 'attok_config.json'}: saved AttTok arguments are invalid: "
                                          "attok_acc_gamma must be a finite number"):
        run_policy.build_context({}, parsed)
    assert saved is not None
