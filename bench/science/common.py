"""What the science experiment's modules share: the recipe, the arms and parts, and how a run's process is started
and its JSON written (BENCHMARKS.md §4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.science.medmnist import COMPONENTS

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RECIPES = {"pneumonia": {"lr": 5e-4, "epochs": 3}, "breast": {"lr": 5e-4, "epochs": 3},
           "retina": {"lr": 5e-4, "epochs": 10}}
BATCH, IMAGE_SIZE = 32, 112
ARMS: dict[str, dict | None] = {"vanilla": None, "class_rows": None, "matched": None, "tokens": COMPONENTS["tokens"],
                                "+ACC": COMPONENTS["+ACC"], "+ACM": COMPONENTS["+ACM"], "attok": COMPONENTS["+both"]}
MAIN_ARMS, ABLATION_ARMS = ("vanilla", "class_rows", "matched", "attok"), ("tokens", "+ACC", "+ACM")
ROW_ARMS = ("class_rows", "matched")  # the arms with K trainable class-name rows (bench.science.datasets.control_rows)
ACC_GAMMA = 0.1  # AttTok's γ (attok_acc_gamma's default), also the matched control's
PARTS = ("main", "ablation", "repro")
VERSION = 3  # of results.json: v3 scores one-forward by the answer rule and adds the matched control
DEFAULT_OUT = "bench_results/science_v3"
# v3's datasets: those v2's inclusion rule admitted (BreastMNIST: vanilla's val accuracy = the val majority)
V3_DATASETS = ("pneumonia", "retina")
SPLITS = ("train", "val", "test")
FOCUS = "pneumonia"
COST = {"pneumonia": 3, "retina": 2.5, "breast": 0.5}  # rough run time, biggest first


def run_env(**extra: str) -> dict[str, str]:
    # One thread per run, always: the reduction order, hence the result, never depends on --workers (v1 ran one
    # thread with --workers 2 but two with --workers 1, so a run repeated alone could not match).
    env = dict(os.environ, HF_HUB_OFFLINE="1", DISABLE_VERSION_CHECK="1", TOKENIZERS_PARALLELISM="false",
               PYTHONHASHSEED="0", OMP_NUM_THREADS="1", **extra)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    tmp.replace(path)


def info_entry(dataset: str, images: bool) -> dict:
    """A sharegpt entry of ``dataset_info.json`` (``images``: the rows carry an image column)."""
    return {"file_name": f"{dataset}.json", "formatting": "sharegpt",
            "columns": {"messages": "messages", **({"images": "images"} if images else {})},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}


def run_process(cmd: list[str], log: Path, **env: str) -> None:
    with open(log, "w") as handle:
        result = subprocess.run(cmd, env=run_env(**env), stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    if result.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} … failed ({result.returncode}): see {log}")
