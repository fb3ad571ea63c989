"""The shipped recipes parse (AttTok keys strictly, LF keys by LF's own parser) and the CPU recipe trains."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, assert_ok

from llamafactory_attok.args import parse_attok_dict, split_attok_dict

RECIPES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_keys_are_valid(recipe: Path):
    from llamafactory.hparams.parser import _TRAIN_ARGS
    from transformers import HfArgumentParser

    ours, rest = split_attok_dict(yaml.safe_load(recipe.read_text()))
    if ours:
        assert parse_attok_dict(ours).attok
    known = {f for cls in _TRAIN_ARGS for f in cls.__dataclass_fields__}
    assert set(rest) <= known, set(rest) - known
    HfArgumentParser(_TRAIN_ARGS)  # LF's own argument classes build


def test_vanilla_recipe_differs_from_attok_only_by_attok(tmp_path):
    attok = yaml.safe_load((REPO / "examples" / "attok_lora.yaml").read_text())
    vanilla = yaml.safe_load((REPO / "examples" / "vanilla_lora.yaml").read_text())
    ours, rest = split_attok_dict(attok)
    assert ours and not split_attok_dict(vanilla)[0]
    differing = {k for k in set(rest) | set(vanilla) if rest.get(k) != vanilla.get(k)}
    assert differing == {"dataset", "output_dir"}


@pytest.mark.slow
def test_cpu_recipe_trains(tiny_models, tmp_path, monkeypatch):
    """`llamafactory-cli train RECIPE key=value ...` through the console script's function, in this process."""
    from llamafactory.cli import main as cli_main

    recipe = REPO / "examples" / "attok_tiny_cpu.yaml"
    overrides = [f"model_name_or_path={tiny_models['qwen2_vl']}", f"dataset_dir={REPO / 'data'}",
                 f"attok_vocab={REPO / 'data' / 'retina_vocab.yaml'}", f"output_dir={tmp_path / 'out'}", "max_steps=1",
                 "plot_loss=false"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["llamafactory-cli", "train", str(recipe), *overrides])
    cli_main()
    assert (tmp_path / "out" / "attok_state.safetensors").is_file()


def test_gpu_smoke_skips_cleanly_without_a_local_model(tmp_path):
    env = {**os.environ, "MODEL_DIR": str(tmp_path / "nothing")}
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu" / "smoke.sh")], env=env, capture_output=True,
                            text=True)
    assert_ok(result)
    assert result.stdout.startswith("SKIP: no local 7B-class model")


def test_one_gpu_recipe_is_the_paper_recipe_without_deepspeed():
    two = yaml.safe_load((REPO / "examples" / "attok_lora.yaml").read_text())
    one = yaml.safe_load((REPO / "examples" / "attok_lora_1gpu.yaml").read_text())
    assert "deepspeed" in two and "deepspeed" not in one
    differing = {k for k in set(two) | set(one) if two.get(k) != one.get(k)}
    assert differing == {"deepspeed", "gradient_accumulation_steps", "output_dir"}
    # the same effective batch (32) on 1 GPU as on 2
    assert one["per_device_train_batch_size"] * one["gradient_accumulation_steps"] == 32
    assert 2 * two["per_device_train_batch_size"] * two["gradient_accumulation_steps"] == 32
