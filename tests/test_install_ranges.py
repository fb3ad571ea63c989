"""Ranges, not pins: installing the plugin into a working LF environment never changes its LF or transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from llamafactory_attok.lf_patches import stack

ROOT = Path(__file__).resolve().parents[1]
# (LF, transformers) stacks run by the suite (default, compat) or by hand (LF main) — docs/compatibility.md
TESTED_STACKS = [("0.9.5", "5.6.0"), ("0.9.5", "5.5.4"), ("0.9.6.dev0", "5.8.0")]


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {(r := Requirement(line)).name: r for line in project["dependencies"]}


@pytest.mark.parametrize(("lf", "transformers"), TESTED_STACKS)
def test_declared_ranges_admit_every_tested_stack(lf, transformers):
    requirements = _requirements()
    assert requirements["llamafactory"].specifier.contains(lf, prereleases=True)
    assert requirements["transformers"].specifier.contains(transformers, prereleases=True)
    assert lf in stack.TESTED_LF_VERSIONS
    assert stack.TRANSFORMERS_MIN <= stack.release(transformers) <= stack.TRANSFORMERS_MAX


def test_transformers_4_is_refused_at_install_and_the_range_matches_the_guard():
    specifier = _requirements()["transformers"].specifier
    assert not specifier.contains("4.57.1") and not specifier.contains("5.4.0") and not specifier.contains("5.8.1")
    assert str(specifier) == ",".join(sorted(stack.TRANSFORMERS_RANGE.removeprefix("transformers").split(",")))


def test_the_stack_files_name_tested_stacks():
    for name in ("default.txt", "compat.txt"):
        pins = dict(line.split("==") for line in (ROOT / "constraints" / name).read_text().splitlines()
                    if line and not line.startswith("#"))
        assert (pins["llamafactory"], pins["transformers"]) in TESTED_STACKS, name


def test_installing_the_plugin_here_changes_nothing_installed(tmp_path):
    """pip's resolver, offline, in this environment (make test: the default stack; make test-compat: the other
    one): the plugin is the only thing it would install."""
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation", "--quiet",
         "--report", str(report), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    installs = [(item["metadata"]["name"], item["metadata"]["version"]) for item in json.loads(report.read_text())
                ["install"]]
    assert [name for name, _ in installs] == ["llamafactory-attok"], installs


EVAL_EXTRA = {"scikit-learn", "openai", "jieba", "nltk", "rouge-chinese"}


def test_a_training_only_install_leaves_the_evaluation_extra_out():
    """The plugin's own dependencies stay what training needs; scoring / judge / LF's generation metrics are the
    `eval` extra, which `make setup` (the `dev` extra) installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert not EVAL_EXTRA & set(_requirements())
    assert {Requirement(line).name for line in project["optional-dependencies"]["eval"]} == EVAL_EXTRA
    assert "llamafactory-attok[eval]" in project["optional-dependencies"]["dev"]


def test_a_command_that_needs_the_extra_names_it(tmp_path):
    """Without scikit-learn (hidden from the import system), `attok eval classify` and `attok predict` stop with an
    error naming the extra, not an ImportError traceback."""
    script = ("import sys; sys.modules['sklearn'] = None\n"
              "from llamafactory_attok.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    for argv in (["eval", "classify", "--predictions", "p.jsonl", "--dataset", "d.json", "--out", "s.json"],
                 ["predict", "--model", "m", "--dataset", "d.json", "--out", "o.jsonl"]):
        result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=tmp_path,
                                timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "needs scikit-learn, which a training-only install leaves out: install the optional extra with " \
               "`pip install 'llamafactory-attok[eval]'`" in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
