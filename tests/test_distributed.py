"""DeepSpeed ZeRO-2 / ZeRO-3 on 2 CPU ranks (gloo) through LF's own torchrun relaunch (`launcher.py` as a file).

Mixed micro-batches (with and without attribute tokens, with and without images) must not hang; prototypes are
identical on both ranks (checked at every save); only attribute rows change; the adapter reloads."""


import pytest
import torch
from conftest import REPO, add_text_only_dataset, assert_ok, base_args, train_cli, trainer_log
from lf_inprocess import effective_rows, row_hashes
from safetensors.torch import load_file

from llamafactory_attok.attach import module_of
from llamafactory_attok.eval.attribute_classifier import load_model_for_inference
from llamafactory_attok.tiny import TEMPLATES, build_tiny_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mixed_data(sample_data):
    """Adds a text-only copy of the AttTok set so some micro-batches carry no image."""
    add_text_only_dataset(sample_data, "retina_textonly_small", limit=12)
    return sample_data


@pytest.mark.parametrize(("family", "stage"), [("qwen2_vl", 2), ("qwen2_vl", 3), ("gemma3", 3)])
def test_zero_on_two_cpu_ranks(family, stage, tiny_models, mixed_data, tmp_path):
    """Gemma-3 (MedGemma) adds a tied head and the projector hook point under ZeRO-3 partitioning."""
    model = tiny_models[family] if family in tiny_models else build_tiny_model(tmp_path / family, family)
    out = tmp_path / f"z{stage}"
    args = base_args(model, mixed_data, out, attok=True, max_steps=20, save_steps=10,
                     weight_decay=0.1, per_device_train_batch_size=2, template=TEMPLATES[family],
                     dataset="retina_attok_train,retina_vanilla_train,retina_textonly_small",
                     deepspeed=str(REPO / "examples" / "deepspeed" / f"ds_z{stage}.json"))
    result = train_cli(tmp_path, args, FORCE_TORCHRUN="1", NPROC_PER_NODE="2")
    assert_ok(result)
    assert "Initializing 2 distributed tasks" in result.stdout + result.stderr
    assert (result.stdout + result.stderr).count("AttTok prototypes identical on 2 ranks") >= 2
    logged = [e for e in trainer_log(out) if "loss_acm" in e]
    assert len(logged) == 20
    state = load_file(str(out / "attok_state.safetensors"))
    assert state["param.acc.attok_q.weight"].shape == (64, 64) and state["bank.seen"].any()

    base, _, _ = load_model_for_inference(str(model), template=TEMPLATES[family])
    trained, _, _ = load_model_for_inference(str(model), adapter=str(out), template=TEMPLATES[family])
    for before, after in zip(effective_rows(base), effective_rows(trained), strict=True):
        assert row_hashes(after[:400]) == row_hashes(before[:400])  # every pre-existing row, bit for bit
        assert not torch.equal(after[400:405], before[400:405])
    assert torch.equal(module_of(trained).books.bank.prototypes.cpu(), state["bank.prototypes"])


@pytest.mark.parametrize("finetuning_type", ["full", "freeze"])
def test_zero3_full_and_freeze_keep_every_other_row(finetuning_type, tiny_models, sample_data, tmp_path):
    """ZeRO-3 partitions embed/head (size 0 on each rank after zero.Init): the row mask must use the full shape.
    Trains, saves (16-bit gather), reloads through LF's loader; every non-attribute row identical by SHA-256."""
    model = tiny_models["qwen2_vl"]
    out = tmp_path / finetuning_type
    args = base_args(model, sample_data, out, attok=True, max_steps=6, save_steps=3, weight_decay=0.1,
                     finetuning_type=finetuning_type, learning_rate=1e-3, per_device_train_batch_size=2,
                     deepspeed=str(REPO / "examples" / "deepspeed" / "ds_z3.json"))
    for key in ("lora_target", "lora_rank"):
        args.pop(key)
    result = train_cli(tmp_path, args, FORCE_TORCHRUN="1", NPROC_PER_NODE="2")
    assert_ok(result)
    assert len([e for e in trainer_log(out) if "loss_acm" in e]) == 6
    base, _, _ = load_model_for_inference(str(model))
    trained, _, _ = load_model_for_inference(str(out))
    for before, after in zip(effective_rows(base), effective_rows(trained), strict=True):
        assert row_hashes(after[:400]) == row_hashes(before[:400])  # every pre-existing row, bit for bit
        assert not torch.equal(after[400:405], before[400:405])
    state = load_file(str(out / "attok_state.safetensors"))
    assert torch.equal(module_of(trained).books.bank.prototypes.cpu(), state["bank.prototypes"])
