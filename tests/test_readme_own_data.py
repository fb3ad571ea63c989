"""README "Your own data, end to end": its command block runs verbatim on a small CSV and the tiny model."""

import re
import subprocess

import numpy as np
import pytest
from conftest import REPO, cli_env
from PIL import Image

pytestmark = pytest.mark.slow


def _readme_block() -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- own-data:start -->\n```bash\n(.*?)```\n<!-- own-data:end -->", text, re.S)
    assert block, "README lost its own-data block"
    return block.group(1)


def test_readme_own_data_commands_run_verbatim(tiny_models, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    rows = ["path,diagnosis"]
    for i in range(24):
        label = ("normal", "pneumonia")[i % 2]
        pixels = rng.integers(0, 255, (28, 28, 3), dtype=np.uint8) // (1 + i % 2)
        Image.fromarray(pixels).save(tmp_path / "imgs" / f"{i:04d}.png")
        rows.append(f"imgs/{i:04d}.png,{label}")
    (tmp_path / "my_labels.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "examples").symlink_to(REPO / "examples")
    overrides = ("bf16=false max_samples=200 max_steps=3 cutoff_len=256 preprocessing_num_workers=1 "
                 "dataloader_num_workers=0 per_device_train_batch_size=4 gradient_accumulation_steps=1 lora_rank=8 "
                 "logging_steps=1 save_steps=1000")
    env = cli_env(MODEL=str(tiny_models["qwen2_vl"]), TRAIN_OVERRIDES=overrides)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", _readme_block()], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]
    assert (tmp_path / "mydata" / "mycxr_classes.yaml").is_file()
    report = (tmp_path / "runs" / "report.md").read_text()
    assert "Per class (support" in report
    assert "| attok | 1 | normal |" in report and "| attok | 1 | pneumonia |" in report
    assert "majority class" in report and "±" not in report.split("| arm | scored by | n |")[1].split("Per class")[0]
