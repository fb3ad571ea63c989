"""The AttTok trainer inside `run_exp`: ACM falls, ACC trains, ablations, image-free samples, exact resume."""

import shutil

import pytest
import torch
from conftest import add_text_only_dataset, base_args, trainer_log
from lf_inprocess import run_sft
from safetensors.torch import load_file

from llamafactory_attok.attach import module_of

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_acm_falls_and_acc_receives_gradient(family, tiny_models, sample_data, tmp_path):
    """Fundus vs chest X-ray (two attributes): uniform ACM would be -log(3/6) = 0.693. 20 steps at lr 1e-2: the mean
    of the last 5 was 0.17 (Qwen2-VL) and 0.24 (Qwen2.5-VL) with seed 42, the first 5 over 0.7."""
    args = base_args(tiny_models[family], sample_data, tmp_path / "out", attok=True, max_steps=20,
                     dataset="modality_train", learning_rate=1e-2, lr_scheduler_type="constant",
                     attok_acm_schedule="constant")
    probe = run_sft(args)
    acm = [e["loss_acm"] for e in trainer_log(tmp_path / "out") if "loss_acm" in e]
    assert len(acm) == 20
    assert sum(acm[-5:]) / 5 < 0.5 < sum(acm[:5]) / 5
    for name in ("acc.attok_q.weight", "acc.attok_k.weight", "acc.attok_v.weight", "acc.attok_o.weight",
                 "acm.attok_theta.weight", "books.attok_keyword_embeds"):
        assert all(step[name] > 0 for step in probe.grads), name
    lora_names = [n for n, _ in probe.model.named_parameters() if "lora_" in n]
    assert lora_names and not any("attok" in n for n in lora_names)  # ACC stays out of lora_target: all


@pytest.mark.parametrize(("acc", "acm"), [(False, False), (True, False), (False, True), (True, True)])
def test_fig3_ablation_variants_train(acc, acm, tiny_models, sample_data, tmp_path):
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok=True, max_steps=3,
                     attok_acc=acc, attok_acm=acm)
    probe = run_sft(args)
    module = module_of(probe.model)
    assert (module.acc is not None) == acc and (module.acm is not None) == acm
    state = load_file(str(tmp_path / "out" / "attok_state.safetensors"))
    assert any("acc." in k for k in state) == acc and any("acm." in k for k in state) == acm
    logged = [e for e in trainer_log(tmp_path / "out") if "loss_ntp" in e]
    assert len(logged) == 3 and all((e["loss_acm"] > 0) == acm for e in logged)


def test_image_free_samples_are_skipped_for_prototypes_and_counted(tiny_models, sample_data, tmp_path):
    add_text_only_dataset(sample_data, "retina_textonly")
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok=True, max_steps=3,
                     dataset="retina_textonly")
    probe = run_sft(args)
    assert not module_of(probe.model).books.bank.seen.any()  # LF's dummy image never reaches a prototype
    logged = [e for e in trainer_log(tmp_path / "out") if "attok_samples_without_image" in e]
    assert logged[-1]["attok_samples_without_image"] == 12


def test_resume_reproduces_the_uninterrupted_run(tiny_models, sample_data, tmp_path):
    common = dict(attok=True, max_steps=6, save_steps=3, learning_rate=5e-3)
    full = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "full", **common)
    run_sft(full)
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-3", resumed_dir / "checkpoint-3")
    resumed = base_args(tiny_models["qwen2_vl"], sample_data, resumed_dir, overwrite_output_dir=False,
                        resume_from_checkpoint=str(resumed_dir / "checkpoint-3"), **common)
    run_sft(resumed)

    def losses(folder):
        return {e["current_steps"]: (e["loss_ntp"], e["loss_acm"]) for e in trainer_log(folder) if "loss_acm" in e}

    uninterrupted, after_resume = losses(tmp_path / "full"), losses(resumed_dir)
    assert sorted(after_resume) == [4, 5, 6]
    for step in range(4, 7):
        assert after_resume[step] == pytest.approx(uninterrupted[step], abs=1e-6)
    a = load_file(str(tmp_path / "full" / "attok_state.safetensors"))
    b = load_file(str(resumed_dir / "attok_state.safetensors"))
    assert torch.equal(a["bank.prototypes"], b["bank.prototypes"]) and torch.equal(a["bank.seen"], b["bank.seen"])
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
