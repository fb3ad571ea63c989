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


PACKAGE = Path(__file__).resolve().parent.parent / "llamafactory_attok"


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The absolute module names ``path`` imports (relative imports resolved against its package)."""
    import ast

    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module)
            found |= {module, *(f"{module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_test_scaffolding_stays_out_of_the_production_path():
    """Only the `tiny-model` / `sample-data` commands and the tiny package itself import ``llamafactory_attok.tiny``;
    the demo lives outside the package."""
    assert not (PACKAGE / "demo.py").exists()
    offenders = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if path.parent.name != "tiny" and path.name != "cli.py"
                 and any(n.startswith("llamafactory_attok.tiny") for n in _imports(path))]
    assert not offenders, offenders


def test_only_the_hook_imports_the_patch_package_and_the_run_policy_stands_without_it():
    """One door: outside ``lf_patches/`` only the startup hook (and ``apply()``) import it, so nothing else can
    form an import cycle with it; the run policy imports neither it nor LLaMA-Factory at module level."""
    importers = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                       if path.parent.name != "lf_patches"
                       and any(n.startswith("llamafactory_attok.lf_patches") for n in _imports(path)))
    assert importers == ["__init__.py", "_boot.py"]
    policy = _imports(PACKAGE / "run_policy.py", top_level_only=True)
    assert not [n for n in policy if n.startswith(("llamafactory_attok.lf_patches", "llamafactory."))], policy


def test_tests_that_start_llamafactory_are_marked_slow():
    """`make test-fast` (-m "not slow") leaves out every test that starts an LF process: a test calling
    ``train_cli``, or naming ``llamafactory-cli`` / ``torchrun`` or Python code that imports LF as a string (the
    command of a new process), sits under ``@pytest.mark.slow`` or in a module with ``pytestmark = ...slow``."""
    import ast
    import re

    command = re.compile(r"(^|/)(llamafactory-cli|torchrun)$")  # the first word of a command list
    lf_code = re.compile(r"\b(from llamafactory[. ]|import llamafactory\b)")  # Python code run by a new process
    unmarked = []
    for path in sorted((PACKAGE.parent / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        module_slow = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                          and "slow" in ast.unparse(n.value) for n in tree.body)
        for node in tree.body:
            if module_slow or not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
                continue
            if any("slow" in ast.unparse(d) for d in node.decorator_list) or node.name == "test_" + "tests_that_" \
                    "start_llamafactory_are_marked_slow":
                continue
            strings = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            heads = [n.elts[0].value for n in ast.walk(node) if isinstance(n, ast.List) and n.elts
                     and isinstance(n.elts[0], ast.Constant) and isinstance(n.elts[0].value, str)]
            calls = {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
            if "train_cli" in calls or any(map(command.search, heads)) or any(map(lf_code.search, strings)):
                unmarked.append(f"{path.name}::{node.name}")
    assert not unmarked, unmarked
