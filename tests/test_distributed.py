"""DeepSpeed ZeRO-3 on 2 CPU ranks (gloo) through LF's own torchrun relaunch (`launcher.py` as a file).

What each launch proves (ZeRO-2 on 2 ranks is the two-node run of tests/test_multinode.py, which carries the same
mixed micro-batches and the row / prototype / reload checks):

- test_zero_on_two_cpu_ranks[qwen2_vl-3], [gemma3-3] (LoRA): LF relaunches itself on 2 ranks ([gemma3-3] through
  `llamafactory-cli`; [qwen2_vl-3] runs the command that relaunch runs, one LF import less); mixed micro-batches
  (from step 2 on, a rank with no attribute token or no real image while the other has them, a different pairing
  every step, read in a fixed order: ``lf_inprocess.MIXED_BATCHES``, where the step-1 exception is explained) do
  not hang; prototypes are identical on both ranks at every save (checkpoint-3, checkpoint-6, final); only the
  attribute rows of embed and head change (weight decay 0.1); the adapter reloads with the saved prototypes.
  Gemma-3 (MedGemma) adds a tied head and the projector hook point.
- test_zero3_full_and_freeze_keep_every_other_row[full], [freeze]: the row mask under ZeRO-3 partitioning of the
  full / freeze model (embed / head have size 0 on each rank), the 16-bit gathered save (the final one: the
  checkpoints' saves are the LoRA tests'), LF's reload."""


import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO, assert_ok, base_args, train_cli, trainer_log
from lf_inprocess import TORCH_EXTENSIONS, add_mixed_batches_dataset, effective_rows, row_hashes
from safetensors.torch import load_file

from llamafactory_attok.attach import module_of
from llamafactory_attok.eval.attribute_classifier import load_model_for_inference
from llamafactory_attok.tiny import TEMPLATES, build_tiny_model

pytestmark = pytest.mark.slow


TEARDOWN_ABORT = "terminate called without an active exception"


def train_on_two_ranks(tmp, args, through_lf_cli: bool = True):
    """Launch on two ranks; relaunched once (into a fresh output folder) when a rank aborts at interpreter exit
    after the run finished and saved (``terminate called without an active exception``, a C++ thread destroyed at
    teardown: seen on both ZeRO-3 LoRA launches of one full-suite run on 2026-12-07 and in none of four others, and
    once on LF main in a compatibility run; an open defect, see docs/distributed.md). Any other failure,
    or the abort twice, fails the test."""
    result = _launch_on_two_ranks(tmp, args, through_lf_cli)
    out = Path(args["output_dir"])
    if result.returncode != 0 and TEARDOWN_ABORT in result.stderr and (out / "attok_state.safetensors").is_file():
        shutil.rmtree(out)
        result = _launch_on_two_ranks(tmp, args, through_lf_cli)
    return result


def _launch_on_two_ranks(tmp, args, through_lf_cli: bool):
    """``llamafactory-cli train`` relaunching itself under torchrun (LF's own path); or, without
    ``through_lf_cli``, the command LF would run (``torchrun … llamafactory/launcher.py x.yaml``), which spares a
    third process importing LF where the relaunch is not what the test proves."""
    if through_lf_cli:
        return train_cli(tmp, args, FORCE_TORCHRUN="1", NPROC_PER_NODE="2",
                         TORCH_EXTENSIONS_DIR=str(TORCH_EXTENSIONS))
    import subprocess

    from conftest import VENV_BIN, cli_env, free_port, write_yaml
    from lf_inprocess import LF_LAUNCHER

    config = write_yaml(tmp / f"{Path(args['output_dir']).name}.yaml", args)
    cmd = [str(VENV_BIN / "torchrun"), "--nnodes", "1", "--node_rank", "0", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(LF_LAUNCHER), str(config)]
    return subprocess.run(cmd, cwd=tmp, env=cli_env(TORCH_EXTENSIONS_DIR=str(TORCH_EXTENSIONS)),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def mixed_batches(sample_data):
    """The mixed micro-batches, read in order: (dataset name, text-only samples rank 0 sees in the run)."""
    return add_mixed_batches_dataset(sample_data)


@pytest.mark.parametrize(("family", "stage"), [("qwen2_vl", 3), ("gemma3", 3)])
def test_zero_on_two_cpu_ranks(family, stage, tiny_models, sample_data, mixed_batches, tmp_path):
    model = tiny_models[family] if family in tiny_models else build_tiny_model(tmp_path / family, family)
    out = tmp_path / f"z{stage}"
    dataset, rank0_text_only = mixed_batches
    args = base_args(model, sample_data, out, attok=True, max_steps=6, save_steps=3, weight_decay=0.1,
                     per_device_train_batch_size=2, template=TEMPLATES[family], dataset=dataset,
                     disable_shuffling=True, deepspeed=str(REPO / "examples" / "deepspeed" / f"ds_z{stage}.json"))
    result = train_on_two_ranks(tmp_path, args, through_lf_cli=family == "gemma3")  # LF's relaunch: proven once
    assert_ok(result)
    if family == "gemma3":  # through llamafactory-cli, which relaunched itself under torchrun
        assert "Initializing 2 distributed tasks" in result.stdout + result.stderr
    assert (result.stdout + result.stderr).count("AttTok prototypes identical on 2 ranks") >= 3
    logged = [e for e in trainer_log(out) if "loss_acm" in e]
    assert len(logged) == 6
    assert logged[-1]["attok_samples_without_image"] == rank0_text_only  # the planned micro-batches reached rank 0
    state = load_file(str(out / "attok_state.safetensors"))
    assert state["param.acc.attok_q.weight"].shape == (64, 64) and state["bank.seen"].any()

    base, _, _ = load_model_for_inference(str(model), template=TEMPLATES[family])
    trained, _, _ = load_model_for_inference(str(model), adapter=str(out), template=TEMPLATES[family])
    for before, after in zip(effective_rows(base), effective_rows(trained), strict=True):
        assert row_hashes(after[:400]) == row_hashes(before[:400])  # every pre-existing row, bit for bit
        assert not torch.equal(after[400:405], before[400:405])
    assert torch.equal(module_of(trained).books.bank.prototypes.cpu(), state["bank.prototypes"])


@pytest.mark.second_stack  # run by `make test-compat` (CI's second stage); make test keeps the ZeRO-3 LoRA launches
@pytest.mark.parametrize("finetuning_type", ["full", "freeze"])
def test_zero3_full_and_freeze_keep_every_other_row(finetuning_type, tiny_models, sample_data, tmp_path):
    """ZeRO-3 partitions embed/head (size 0 on each rank after zero.Init): the row mask must use the full shape.
    Trains, saves (16-bit gather), reloads through LF's loader; every non-attribute row identical by SHA-256."""
    model = tiny_models["qwen2_vl"]
    out = tmp_path / finetuning_type
    args = base_args(model, sample_data, out, attok=True, max_steps=6, save_steps=1000, weight_decay=0.1,
                     finetuning_type=finetuning_type, learning_rate=1e-3, per_device_train_batch_size=2,
                     deepspeed=str(REPO / "examples" / "deepspeed" / "ds_z3.json"))
    for key in ("lora_target", "lora_rank"):
        args.pop(key)
    result = train_on_two_ranks(tmp_path, args, through_lf_cli=False)
    assert_ok(result)
    assert len([e for e in trainer_log(out) if "loss_acm" in e]) == 6
    base, _, _ = load_model_for_inference(str(model))
    trained, _, _ = load_model_for_inference(str(out))
    for before, after in zip(effective_rows(base), effective_rows(trained), strict=True):
        assert row_hashes(after[:400]) == row_hashes(before[:400])  # every pre-existing row, bit for bit
        assert not torch.equal(after[400:405], before[400:405])
    state = load_file(str(out / "attok_state.safetensors"))
    assert torch.equal(module_of(trained).books.bank.prototypes.cpu(), state["bank.prototypes"])
