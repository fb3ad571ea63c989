"""The built wheel carries what `attok sample-data` / `attok tiny-model` need: run from an unpacked wheel, outside
the checkout (the RetinaMNIST source and its licence are package data; the start-up files sit at the wheel root)."""

import subprocess
import sys
import zipfile

import pytest
from conftest import REPO, cli_env

pytestmark = pytest.mark.slow


def test_sample_data_and_tiny_model_run_from_the_wheel(tmp_path):
    # the project's own build backend, as `pip wheel .` / `python -m build` call it (without pip's resolver)
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path / "dist")],
                   cwd=REPO, check=True, capture_output=True, env=cli_env())
    wheel = next((tmp_path / "dist").glob("llamafactory_attok-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    assert {"llamafactory_attok.pth", "llamafactory_attok.start",
            "llamafactory_attok/tiny/sources/retinamnist/retinamnist.npz",
            "llamafactory_attok/tiny/sources/retinamnist/README.txt"} <= names
    code = ("import sys, llamafactory_attok; from llamafactory_attok.cli import main\n"
            "assert llamafactory_attok.__file__.startswith(sys.argv[1]), llamafactory_attok.__file__\n"
            "code = main(['sample-data', 'data', '--per-class-train', '1', '--per-class-test', '1'])\n"
            "code = code or main(['tiny-model', 'model'])\nsys.exit(code)")
    env = cli_env(PYTHONPATH=str(tmp_path / "site"))
    work = tmp_path / "elsewhere"
    work.mkdir()
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], cwd=work, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "data" / "retina_attok_train.json").is_file() and (work / "model" / "config.json").is_file()
