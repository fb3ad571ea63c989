"""A save killed by a cluster (SIGTERM, SIGKILL) or a full disk never blocks the rerun: the same command resumes
from the last complete checkpoint and ends where an uninterrupted run ends; an incomplete one named explicitly is
refused, naming what is missing."""

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import base_args, cli_env, log_history, write_yaml
from lf_inprocess import run_sft
from safetensors.torch import load_file

from llamafactory_attok.checkpoints import checkpoint_problems
from llamafactory_attok.errors import AttTokError

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
RUN = {"max_steps": 6, "save_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 4}
# (where in the save of checkpoint-4, how it dies): one case per way a cluster or a disk stops a save
CASES = [("after-weights", "SIGTERM"), ("mid-state", "SIGKILL"), ("after-optimizer", "EFBIG")]


@pytest.fixture(scope="module")
def uninterrupted(tiny_models, sample_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    run_sft(base_args(tiny_models["qwen2_vl"], sample_data, out, attok=True, **RUN))
    return out


@contextlib.contextmanager
def _interrupted_save(point: str, how: str):
    """save_killer's hooks, in this process (only EFBIG: a signal would end pytest), undone afterwards."""
    import save_killer
    import torch as torch_module
    from transformers import Trainer, TrainerState

    saved = (Trainer._save_optimizer_and_scheduler, torch_module.save, TrainerState.save_to_json)
    try:
        save_killer.install(4, point, how)
        yield
    finally:
        Trainer._save_optimizer_and_scheduler, torch_module.save, TrainerState.save_to_json = saved


def _same_final_state(a: Path, b: Path) -> None:
    for name in ("adapter_model.safetensors", "attok_state.safetensors"):
        left, right = load_file(str(a / name)), load_file(str(b / name))
        assert left.keys() == right.keys(), name
        for key in left:
            torch.testing.assert_close(left[key], right[key], atol=1e-6, rtol=0, msg=f"{name}: {key}")
    losses = {e["step"]: e["loss"] for e in log_history(a)}
    for entry in log_history(b):
        if entry["step"] > 2:
            assert entry["loss"] == pytest.approx(losses[entry["step"]], abs=1e-6), entry["step"]


@pytest.mark.parametrize(("point", "how"), CASES, ids=[f"{p}-{h}" for p, h in CASES])
def test_a_killed_save_is_skipped_and_the_rerun_ends_like_an_uninterrupted_run(point, how, uninterrupted,
                                                                               tiny_models, sample_data, tmp_path,
                                                                               caplog):
    out = tmp_path / "out"
    args = base_args(tiny_models["qwen2_vl"], sample_data, out, attok=True, **RUN, overwrite_output_dir=False)
    if how == "EFBIG":  # a write error needs no signal: the same training in this process, stopped by the error
        with pytest.raises(OSError, match="File too large"):
            with _interrupted_save(point, how):
                run_sft(args)
    else:
        config = write_yaml(tmp_path / "run.yaml", args)
        killed = subprocess.run([sys.executable, str(HERE / "save_killer.py"), str(config), "4", point, how],
                                cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
        assert killed.returncode != 0, killed.stderr[-3000:]
    assert not checkpoint_problems(out / "checkpoint-2")
    missing = checkpoint_problems(out / "checkpoint-4")
    assert missing and any("trainer_state.json" in m for m in missing), missing

    if how == "SIGTERM":  # named explicitly (once: the check is the same): refused, naming what is missing
        with pytest.raises(AttTokError, match=r"checkpoint-4: an incomplete checkpoint .*trainer_state.json.* "
                                              r"Resume from .*checkpoint-2, the last complete one"):
            run_sft({**args, "resume_from_checkpoint": str(out / "checkpoint-4")})

    # the same command again: LF's auto-resume would take checkpoint-4; AttTok takes checkpoint-2 and says why
    caplog.set_level("WARNING")
    run_sft(args)
    assert "skipping the checkpoint" in caplog.text and "checkpoint-4" in caplog.text
    assert not checkpoint_problems(out / "checkpoint-6")
    _same_final_state(uninterrupted, out)


def test_a_damaged_weight_file_is_skipped_and_a_stale_temp_file_removed(uninterrupted, tiny_models, sample_data,
                                                                         tmp_path, caplog):
    """A newest checkpoint with every file present but its weights, configs and vocabulary emptied (a full disk, a
    crash before the page cache reached the disk) is skipped by name instead of failing deep in PEFT or at the
    rerun's start; the temp file a SIGKILL left during an atomic write is removed at the next start."""
    out = tmp_path / "out"
    shutil.copytree(uninterrupted, out)
    (out / "checkpoint-6" / "adapter_model.safetensors").write_bytes(b"")
    rng = next((out / "checkpoint-6").glob("rng_state*.pth"))
    rng.write_bytes(rng.read_bytes()[:50])  # not fsynced by transformers, and written before trainer_state.json
    for name in ("attok_config.json", "adapter_config.json", "attok_vocab.yaml"):  # a crash before they hit the disk
        (out / "checkpoint-6" / name).write_bytes(b"")
    stale = out / "checkpoint-4" / ".attok_state.safetensors.k6wedq1l"
    stale.write_bytes(b"half")
    caplog.set_level("WARNING")
    run_sft(base_args(tiny_models["qwen2_vl"], sample_data, out, attok=True, **RUN, overwrite_output_dir=False))
    assert "skipping the checkpoint" in caplog.text and "adapter_model.safetensors is empty" in caplog.text
    assert f"{rng.name} unreadable (BadZipFile)" in caplog.text
    assert "adapter_config.json unreadable (empty)" in caplog.text
    assert "attok_config.json unreadable (empty)" in caplog.text and "attok_vocab.yaml unreadable (" in caplog.text
    assert not stale.exists() and "a temp file an interrupted save left behind" in caplog.text
    _same_final_state(uninterrupted, out)


def test_a_folder_without_optimizer_and_scheduler_is_not_resumed(uninterrupted, tiny_models, sample_data, tmp_path):
    """The final output folder (or a save_only_model checkpoint) holds the weights but no optimizer / scheduler:
    resuming it would restart both, warm-up included, mid-run — refused, saying what to do instead."""
    args = base_args(tiny_models["qwen2_vl"], sample_data, tmp_path / "out", attok=True, **RUN,
                     resume_from_checkpoint=str(uninterrupted))
    with pytest.raises(AttTokError, match=r"not a resumable checkpoint \(optimizer.pt missing; scheduler.pt missing\)"
                                          r".*restart the optimizer and the learning-rate schedule"):
        run_sft(args)


def test_cut_weight_files_are_told_apart_from_readable_ones(tmp_path):
    from safetensors.torch import save_file

    from llamafactory_attok.checkpoints import file_problem

    save_file({"w": torch.ones(64, 64)}, str(tmp_path / "ok.safetensors"))
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "header.safetensors").write_bytes(data[:20])
    torch.save({"state": {}}, tmp_path / "ok.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:100])
    assert file_problem(tmp_path / "ok.safetensors") is None and file_problem(tmp_path / "ok.pt") is None
    assert "cut short (its tensors need" in file_problem(tmp_path / "cut.safetensors")
    assert "cut short (header of" in file_problem(tmp_path / "header.safetensors")
    assert file_problem(tmp_path / "cut.pt") == "cut.pt unreadable (BadZipFile)"
    (tmp_path / "checkpoint-6").mkdir()
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text('{"global_step": "6"}')
    (tmp_path / "checkpoint-6" / "attok_config.json").write_text('{"global_step": 4}')
    problems = checkpoint_problems(tmp_path / "checkpoint-6")
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text('{"global_step": 6, "future_field": 1}')
    newer = checkpoint_problems(tmp_path / "checkpoint-6")
    assert "trainer_state.json has fields this transformers does not know (future_field): saved by another " \
           "version" in newer
    assert "attok_config.json is for step 4, not 6 (AttTok files of another checkpoint)" in newer
    assert "trainer_state.json: global_step is '6', not a step number" in problems


def test_configs_and_vocabulary_that_parse_but_are_cut_or_garbled_make_a_checkpoint_incomplete(uninterrupted,
                                                                                                tmp_path):
    """A vocabulary cut at a line break (or mid-keyword) still parses, and `{}` / `[]` are valid JSON: each would
    stop every rerun at the resume checks. The config records the vocabulary's SHA-256 and the token count, PEFT's
    config must name its peft_type, AttTok's must hold token_ids and args — so these checkpoints are skipped."""
    import json

    source = uninterrupted / "checkpoint-6"
    assert checkpoint_problems(source) == []
    assert "vocab_sha256" in json.loads((source / "attok_config.json").read_text())

    def damaged(name: str, change) -> list[str]:
        folder = tmp_path / f"{len(list(tmp_path.iterdir()))}" / "checkpoint-6"
        shutil.copytree(source, folder)
        change(folder / name)
        return checkpoint_problems(folder)

    lines = (source / "attok_vocab.yaml").read_text().splitlines(keepends=True)
    cut = damaged("attok_vocab.yaml", lambda p: p.write_text("".join(lines[:-1])))
    assert cut == ["attok_vocab.yaml is not the one attok_config.json was saved with (cut or changed since)"]
    text = (source / "attok_vocab.yaml").read_text()
    assert damaged("attok_vocab.yaml", lambda p: p.write_text(text[:-6])) == cut  # mid-keyword

    def legacy(path):  # a config saved before the digest: the token count still tells
        config = json.loads(path.read_text())
        del config["vocab_sha256"]
        path.write_text(json.dumps(config))
        (path.parent / "attok_vocab.yaml").write_text("".join(lines[:-1]))

    assert damaged("attok_config.json", legacy) == [f"attok_vocab.yaml holds {len(lines) - 1} token(s), "
                                                    f"attok_config.json lists {len(lines)} (cut or changed since)"]
    assert damaged("attok_config.json", lambda p: p.write_text("{}")) == [
        "attok_config.json unreadable (not an AttTok config: needs token_ids and args)"]
    assert damaged("adapter_config.json", lambda p: p.write_text("[]")) == [
        "adapter_config.json unreadable (not a PEFT adapter config: no peft_type)"]
