"""The start-up hook: installed files, ATTOK_DISABLE, idempotence, never raising at interpreter start."""

import site
import sys
from pathlib import Path

from conftest import assert_ok, run_cli

from llamafactory_attok import _boot


def test_startup_files_are_installed_in_site_packages():
    found = {p.name: p.read_text() for d in site.getsitepackages() for p in Path(d).glob("llamafactory_attok.*")}
    assert "llamafactory_attok._boot" in found["llamafactory_attok.pth"]
    assert found["llamafactory_attok.start"].strip() == "llamafactory_attok._boot:install"


def test_hook_present_in_new_interpreters_and_warn_only_when_disabled(tmp_path):
    code = "import sys; print([sorted(f.targets) for f in sys.meta_path if type(f).__name__ == '_Finder'])"
    assert "llamafactory.hparams.parser" in run_cli(["python", "-c", code], cwd=tmp_path).stdout
    disabled = run_cli(["python", "-c", code], cwd=tmp_path, ATTOK_DISABLE="1").stdout.strip()
    assert disabled == "[['llamafactory.hparams.parser', 'llamafactory.model.loader']]"
    heavy = run_cli(["python", "-c", "import sys; print(sorted(sys.modules))"], cwd=tmp_path).stdout
    assert "torch" not in heavy and "llamafactory_attok.lf_patches.parser" not in heavy


def test_install_is_idempotent(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    _boot.install()
    _boot.install()
    assert sum(isinstance(f, _boot._Finder) for f in sys.meta_path) == 1


def test_install_never_raises_and_says_why(monkeypatch, capsys):
    class Broken(list):
        def insert(self, *args):
            raise RuntimeError("meta_path is read-only here")

    monkeypatch.setattr(sys, "meta_path", Broken())
    monkeypatch.delenv("ATTOK_DISABLE", raising=False)
    _boot.install()
    assert "startup hook not installed" in capsys.readouterr().err


def test_finder_ignores_other_modules():
    assert _boot._Finder().find_spec("json", None) is None


def test_tiny_model_command_builds_a_model_lf_loads(tmp_path):
    assert_ok(run_cli(["attok", "tiny-model", str(tmp_path / "m"), "--family", "qwen2_5_vl", "--tied"], cwd=tmp_path))
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_tokenizer
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tmp_path / "m")
    assert (config.model_type, config.tie_word_embeddings) == ("qwen2_5_vl", True)
    model_args, *_ = get_infer_args({"model_name_or_path": str(tmp_path / "m"), "template": "qwen2_vl"})
    assert load_tokenizer(model_args)["processor"] is not None  # LF's loader finds its processor


def test_test_scaffolding_stays_out_of_the_production_path():
    """Only the `tiny-model` / `sample-data` commands and the tiny package itself import ``llamafactory_attok.tiny``;
    the demo lives outside the package."""
    import ast

    package = Path(__file__).resolve().parent.parent / "llamafactory_attok"
    assert not (package / "demo.py").exists()
    offenders = []
    for path in package.rglob("*.py"):
        if path.parent.name == "tiny" or path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            stripped = [n.lstrip(".") for n in names]
            if any(n.startswith(("llamafactory_attok.tiny", "tiny")) for n in stripped):
                offenders.append(str(path.relative_to(package)))
    assert not offenders, offenders
