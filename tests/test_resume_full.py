"""Resuming a full / freeze AttTok fine-tune restores the trained weights: the losses after the resume point equal
the uninterrupted run's (transformers 5.6's Trainer reloads such checkpoints with the wrong key layout; see
`llamafactory_attok.resume`)."""

import shutil

import pytest
import torch
from conftest import assert_ok, base_args, log_history, train_cli
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _args(model, data, out, finetuning_type, **overrides):
    args = base_args(model, data, out, attok=True, finetuning_type=finetuning_type, learning_rate=1e-4,
                     max_steps=8, save_steps=4, per_device_train_batch_size=4, **overrides)
    for key in ("lora_target", "lora_rank"):
        args.pop(key)
    return args


@pytest.mark.parametrize("finetuning_type", ["full", "freeze"])
def test_resumed_full_weights_run_reproduces_the_uninterrupted_run(finetuning_type, tiny_models, sample_data,
                                                                     tmp_path):
    model = tiny_models["qwen2_vl"]
    full = tmp_path / "full"
    assert_ok(train_cli(tmp_path, _args(model, sample_data, full, finetuning_type)))

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-4", resumed / "checkpoint-4")
    result = train_cli(tmp_path, _args(model, sample_data, resumed, finetuning_type, overwrite_output_dir=False,
                                       resume_from_checkpoint=str(resumed / "checkpoint-4")))
    assert_ok(result)
    output = result.stdout + result.stderr
    assert "missing keys" not in output and "unexpected keys" not in output

    uninterrupted = {e["step"]: e["loss"] for e in log_history(full)}
    after_resume = {e["step"]: e["loss"] for e in log_history(resumed) if e["step"] > 4}
    assert sorted(after_resume) == [5, 6, 7, 8]
    for step in range(5, 9):  # without the fix step 5 is ~0.05 off (training restarts from the base weights)
        assert after_resume[step] == pytest.approx(uninterrupted[step], abs=1e-6), step
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
