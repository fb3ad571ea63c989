"""Two "nodes" on this machine: LF's multi-node launch (`FORCE_TORCHRUN=1 NNODES=2 NODE_RANK=0|1 MASTER_ADDR
MASTER_PORT NPROC_PER_NODE=1 llamafactory-cli train`, which relaunches torchrun with --nnodes/--node_rank), gloo on
CPU, DeepSpeed ZeRO-2, one output folder shared by both (a shared filesystem). Each node keeps its own datasets
cache (node-local disks).

Checked: the run ends on both nodes; only global rank 0 writes the AttTok files (transformers' ``save_on_each_node``
is false by default and LF keeps it; every ``os.replace`` onto an ``attok_*`` file is logged with its rank by a
``sitecustomize`` on the nodes' PYTHONPATH); LF's log is written once; prototypes are identical on both ranks at
every save; resuming both nodes from checkpoint-3 gives per-step losses equal to the uninterrupted run within 1e-6
and the same final AttTok state.

The same run is also the ZeRO-2 case of tests/test_distributed.py (ZeRO-2 on 2 CPU ranks, LoRA, weight decay 0.1):
mixed micro-batches (``lf_inprocess.MIXED_BATCHES``: a rank without attribute tokens or without a real image while
the other has them) do not hang; only the attribute rows of embed and head change, every other row bit for bit; the
adapter reloads with the saved prototypes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import REPO, VENV_BIN, base_args, cli_env, free_port, trainer_log, write_yaml
from lf_inprocess import LF_LAUNCHER, TORCH_EXTENSIONS, add_mixed_batches_dataset, effective_rows, row_hashes
from safetensors.torch import load_file

from llamafactory_attok.attach import module_of
from llamafactory_attok.eval.attribute_classifier import load_model_for_inference

pytestmark = [pytest.mark.slow, pytest.mark.second_stack]  # run by `make test-compat` (CI's second stage)

ATTOK_FILES = ("attok_state.safetensors", "attok_config.json", "attok_vocab.yaml")
SITECUSTOMIZE = '''
import os

_replace = os.replace


def _logged_replace(src, dst, *args, **kwargs):
    result = _replace(src, dst, *args, **kwargs)
    if os.path.basename(os.fspath(dst)).startswith("attok_"):
        with open(os.environ["ATTOK_TEST_WRITE_LOG"], "a") as log:
            log.write(f"{os.environ.get('RANK', '-')} {os.fspath(dst)}\\n")
    return result


os.replace = _logged_replace
'''


def launch_two_nodes(tmp: Path, args: dict, name: str, timeout: int = 900,
                     through_lf_cli: bool = True) -> tuple[str, Path]:
    """Start node 0 and node 1 at once with the same YAML; wait for both; kill both on failure or timeout. With
    ``through_lf_cli`` node 0 goes through `llamafactory-cli train` (LF's multi-node relaunch, what is proven) and
    node 1 runs the command that relaunch runs (``torchrun --nnodes 2 --node_rank 1 … llamafactory/launcher.py
    x.yaml``); without it both do: one LF import less per node where the relaunch is not what is proven."""
    config = write_yaml(tmp / f"{name}.yaml", args)
    hook = tmp / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    writes = tmp / f"{name}.writes"
    port = str(free_port())
    procs, logs = [], []
    try:
        for node in (0, 1):
            log = (tmp / f"{name}.node{node}.log").open("w")
            logs.append(log)
            env = cli_env(FORCE_TORCHRUN="1", NNODES="2", NODE_RANK=str(node), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=port, NPROC_PER_NODE="1", HF_DATASETS_CACHE=str(tmp / f"cache{node}"),
                          PYTHONPATH=os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
                          ATTOK_TEST_WRITE_LOG=str(writes), TORCH_EXTENSIONS_DIR=str(TORCH_EXTENSIONS))
            cmd = [str(VENV_BIN / "llamafactory-cli"), "train", str(config)] if through_lf_cli and node == 0 else [
                str(VENV_BIN / "torchrun"), "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1",
                "--master_addr", "127.0.0.1", "--master_port", port, str(LF_LAUNCHER), str(config)]
            procs.append(subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT))
        for proc in procs:
            proc.wait(timeout=timeout)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
        for log in logs:
            log.close()
    output = "\n".join((tmp / f"{name}.node{n}.log").read_text() for n in (0, 1))
    codes = [proc.returncode for proc in procs]
    assert codes == [0, 0], f"exit codes {codes}\n{output[-12000:]}"
    return output, writes


def ntp_acm_losses(folder: Path) -> dict[int, tuple[float, float, float]]:
    return {e["current_steps"]: (e["loss"], e["loss_ntp"], e["loss_acm"]) for e in trainer_log(folder)
            if "loss_acm" in e}


def test_two_nodes_zero2_train_save_once_and_resume(tiny_models, sample_data, tmp_path):
    dataset, rank0_text_only = add_mixed_batches_dataset(sample_data)
    common = dict(attok=True, max_steps=6, save_steps=3, per_device_train_batch_size=2, learning_rate=5e-3,
                  weight_decay=0.1, dataset=dataset, disable_shuffling=True,
                  deepspeed=str(REPO / "examples" / "deepspeed" / "ds_z2.json"))
    full = tmp_path / "full"
    output, writes = launch_two_nodes(tmp_path, base_args(tiny_models["qwen2_vl"], sample_data, full, **common),
                                      "full")
    assert "Multi-node training enabled: num nodes: 2" in output
    assert output.count("AttTok prototypes identical on 2 ranks") >= 3  # checkpoint-3, checkpoint-6, final save

    # one writer: global rank 0, once per file per folder (a second node writing would show RANK=1 or a repeat)
    written = [line.split(" ", 1) for line in writes.read_text().splitlines()]
    assert {rank for rank, _ in written} == {"0"}, written
    paths = [Path(path) for _, path in written]
    assert len(paths) == len(set(paths)) == 3 * len(ATTOK_FILES)
    for folder in (full / "checkpoint-3", full / "checkpoint-6", full):
        assert {p.name for p in paths if p.parent == folder} == set(ATTOK_FILES)
    assert not any(p.name.startswith(".attok_") for p in full.rglob("*"))  # no temp file left behind
    uninterrupted = ntp_acm_losses(full)
    assert sorted(uninterrupted) == [1, 2, 3, 4, 5, 6]  # LF's log written once, not once per node
    last = [e for e in trainer_log(full) if "loss_acm" in e][-1]
    assert last["attok_samples_without_image"] == rank0_text_only  # the planned micro-batches reached rank 0
    state = load_file(str(full / "attok_state.safetensors"))
    assert state["param.acc.attok_q.weight"].shape == (64, 64) and state["bank.seen"].any()
    base, _, _ = load_model_for_inference(str(tiny_models["qwen2_vl"]))
    trained, _, _ = load_model_for_inference(str(tiny_models["qwen2_vl"]), adapter=str(full))
    for before, after in zip(effective_rows(base), effective_rows(trained), strict=True):
        assert row_hashes(after[:400]) == row_hashes(before[:400])  # every pre-existing row, bit for bit
        assert not torch.equal(after[400:405], before[400:405])
    assert torch.equal(module_of(trained).books.bank.prototypes.cpu(), state["bank.prototypes"])

    checkpoint = full / "checkpoint-3"
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(checkpoint, resumed / "checkpoint-3")
    args = base_args(tiny_models["qwen2_vl"], sample_data, resumed, overwrite_output_dir=False,
                     resume_from_checkpoint=str(resumed / "checkpoint-3"), **common)
    output, _ = launch_two_nodes(tmp_path, args, "resumed", through_lf_cli=False)  # LF's relaunch: proven above
    after = ntp_acm_losses(resumed)
    assert sorted(after) == [4, 5, 6]
    for step in (4, 5, 6):
        assert after[step] == pytest.approx(uninterrupted[step], abs=1e-6), step
    a, b = load_file(str(full / "attok_state.safetensors")), load_file(str(resumed / "attok_state.safetensors"))
    assert torch.equal(a["bank.prototypes"], b["bank.prototypes"]) and torch.equal(a["bank.seen"], b["bank.seen"])
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
