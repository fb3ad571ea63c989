"""Shared fixtures: tiny offline models, the sample dataset, and helpers that run LLaMA-Factory for real."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from llamafactory_attok.tiny import build_tiny_model
from llamafactory_attok.tiny.sample_data import build_modality_sample, build_retina_sample

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "qwen2_vl": build_tiny_model(root / "qwen2_vl", "qwen2_vl"),
        "qwen2_5_vl": build_tiny_model(root / "qwen2_5_vl", "qwen2_5_vl"),
        "qwen2_vl_tied": build_tiny_model(root / "qwen2_vl_tied", "qwen2_vl", tied=True),
        "qwen2_5_vl_spare": build_tiny_model(root / "qwen2_5_vl_spare", "qwen2_5_vl", spare_rows=64),
    }


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    build_retina_sample(root, per_class_train=8, per_class_test=4)
    build_modality_sample(root, per_class=8)
    return root


def base_args(model: Path, data: Path, out: Path, **overrides) -> dict:
    """A small LoRA SFT recipe on the tiny model; AttTok keys come through ``overrides``."""
    args = {
        "model_name_or_path": str(model),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "lora_rank": 8,
        "dataset": "retina_attok_train",
        "dataset_dir": str(data),
        "template": "qwen2_vl",
        "cutoff_len": 256,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "output_dir": str(out),
        "overwrite_output_dir": True,
        "logging_steps": 1,
        "save_steps": 1000,
        "per_device_train_batch_size": 4,
        "learning_rate": 1.0e-3,
        "max_steps": 6,
        "lr_scheduler_type": "cosine",
        "seed": 42,
        "report_to": "none",
        "dataloader_num_workers": 0,
        "plot_loss": False,
    }
    args.update(overrides)
    return args


def write_yaml(path: Path, args: dict) -> Path:
    path.write_text(yaml.safe_dump(args, sort_keys=False))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update({"HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.pop("ATTOK_DISABLE", None)
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path, timeout: int = 600, process: bool = False,
            **env: str) -> subprocess.CompletedProcess:
    """Run a venv command; output kept for assertions. ``attok`` runs in this process (its ``main``; the same
    parser, exit status and stdout / stderr) unless ``process``: a launch costs seconds and proves nothing more for
    a command that touches no startup hook. ``llamafactory-cli`` and ``python`` always run in a new process."""
    if args[0] == "attok" and not process:
        return run_attok_in_process(args[1:], cwd, **env)
    cmd = [str(VENV_BIN / args[0]), *args[1:]]
    return subprocess.run(cmd, cwd=cwd, env=cli_env(**env), capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def _captured() -> Iterator[dict[str, io.StringIO]]:
    """stdout / stderr of Python code in this process: ``sys.stdout`` / ``sys.stderr`` and every logging
    ``StreamHandler`` (they keep the stream they were created with) point at buffers meanwhile."""
    import logging

    found = {"stdout": io.StringIO(), "stderr": io.StringIO()}
    loggers = [logging.getLogger(), *(v for v in logging.root.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    handlers = {h for lg in loggers for h in lg.handlers
                if type(h) is logging.StreamHandler}
    streams = {h: h.stream for h in handlers}
    for handler in handlers:  # plain assignment: setStream would flush a stream a finished test may have closed
        out = handler.stream in (sys.stdout, sys.__stdout__)
        handler.stream = found["stdout" if out else "stderr"]
    try:
        with contextlib.redirect_stdout(found["stdout"]), contextlib.redirect_stderr(found["stderr"]):
            yield found
    finally:
        for handler, stream in streams.items():
            handler.stream = stream


def run_attok_in_process(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``attok ARGV`` through :func:`llamafactory_attok.cli.main` in this process, in ``cwd`` with ``env`` set."""
    from llamafactory_attok.cli import main

    before, here = dict(os.environ), os.getcwd()
    os.environ.update(cli_env(**env))
    os.chdir(cwd)
    code = 0
    try:
        with _captured() as output:
            try:
                code = main(list(argv))
            except SystemExit as exit_:  # argparse errors and --help
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except Exception:  # noqa: BLE001 - a crash is a failed command with its traceback on stderr, as a launch
                import traceback

                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(before)
    return subprocess.CompletedProcess(["attok", *argv], code, output["stdout"].getvalue(),
                                       output["stderr"].getvalue())


def train_cli(tmp: Path, args: dict, **env: str) -> subprocess.CompletedProcess:
    config = write_yaml(tmp / f"{Path(args['output_dir']).name}.yaml", args)
    result = run_cli(["llamafactory-cli", "train", str(config)], cwd=tmp, **env)
    return result


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"


def trainer_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines() if line.strip()]


def log_history(out: Path) -> list[dict]:
    return [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]


def add_text_only_dataset(data: Path, name: str, limit: int | None = None) -> str:
    """A copy of the AttTok training set without images (``<image>`` removed), registered as ``name``."""
    rows = json.loads((data / "retina_attok_train.json").read_text())[:limit]
    for row in rows:
        row.pop("images")
        row["messages"][0]["content"] = row["messages"][0]["content"].replace("<image>", "")
    (data / f"{name}.json").write_text(json.dumps(rows))
    info = json.loads((data / "dataset_info.json").read_text())
    info[name] = {**info["retina_attok_train"], "file_name": f"{name}.json", "columns": {"messages": "messages"}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    return name


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def lf_api_server(config: Path, cwd: Path, timeout: float = 180):
    """`llamafactory-cli api` on 127.0.0.1 and a free port; yields an `openai` client once it answers."""
    from openai import OpenAI

    port = free_port()
    server = subprocess.Popen([str(VENV_BIN / "llamafactory-cli"), "api", str(config)], cwd=cwd,
                              env=cli_env(API_HOST="127.0.0.1", API_PORT=str(port)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=60, max_retries=0)
        deadline = time.time() + timeout
        while True:
            try:
                client.models.list()
                break
            except Exception:  # noqa: BLE001 - the server is still starting; give up at the deadline
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(2)
        yield client
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def modality_adapter(tiny_models, sample_data, tmp_path_factory) -> Path:
    """An AttTok LoRA adapter (fundus vs chest X-ray) trained until its answers start with the right token."""
    from lf_inprocess import run_sft

    out = tmp_path_factory.mktemp("modality") / "adapter"
    run_sft(base_args(tiny_models["qwen2_vl"], sample_data, out, attok=True, dataset="modality_train",
                      max_steps=30, learning_rate=1e-2))
    return out


@pytest.fixture(scope="session")
def attok_api(tiny_models, modality_adapter, tmp_path_factory):
    """One `llamafactory-cli api` server for the session: the tiny Qwen2-VL with the AttTok modality adapter, greedy,
    attribute tokens shown (its replies are attribute tokens: junk to any client expecting other text)."""
    folder = tmp_path_factory.mktemp("api")
    config = write_yaml(folder / "api.yaml", {
        "model_name_or_path": str(tiny_models["qwen2_vl"]), "adapter_name_or_path": str(modality_adapter),
        "template": "qwen2_vl", "infer_dtype": "float32", "do_sample": False, "max_new_tokens": 6,
        "attok_show_tokens": True})
    with lf_api_server(config, folder) as client:
        yield client
