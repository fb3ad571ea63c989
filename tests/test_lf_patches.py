"""The one table of LF patch points agrees with the installed LF, the hook and the code (cheap: no training)."""

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from llamafactory_attok import _boot, lf_patches

PACKAGE = Path(lf_patches.__file__).resolve().parents[1]


def _resolve(dotted_module: str, name: str):
    value = importlib.import_module(dotted_module)
    for part in name.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("module", sorted({**lf_patches.POINTS, **lf_patches.DISABLED_POINTS}))
def test_every_point_resolves_in_lf(module):
    for table in (lf_patches.POINTS, lf_patches.DISABLED_POINTS):
        point = table.get(module)
        if point is None:
            continue
        lf_module = importlib.import_module(module)
        assert len(lf_patches.require(lf_module, point.symbols)) == len(point.symbols)  # every LF symbol exists
        assert callable(lf_patches._patcher(point))  # "file:function" exists in this package


def test_the_hook_watches_exactly_the_table():
    assert _boot.TARGET_MODULES == frozenset(lf_patches.POINTS)
    assert _boot.DISABLED_TARGETS == frozenset(lf_patches.DISABLED_POINTS)


@pytest.mark.parametrize("symbol", lf_patches.expected_private_calls())
def test_every_private_symbol_the_plugin_calls_exists(symbol):
    module, name = symbol.split(":")
    assert _resolve(module, name) is not None


def test_missing_private_calls_is_empty_on_this_stack():
    assert lf_patches.missing_private_calls() == []


INTERNAL_LIBRARIES = ("llamafactory", "transformers", "peft")


def _submodule_imports() -> dict[str, list[str]]:
    """Every ``from <lib>.<submodule> import name`` of the package: "module:name" -> the files that import it."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and "." in node.module:
                if node.module.split(".")[0] in INTERNAL_LIBRARIES:
                    for alias in node.names:
                        found.setdefault(f"{node.module}:{alias.name}", []).append(path.name)
    return found


def test_every_internal_import_is_in_the_table():
    """PRIVATE_CALLS is complete: an import from a submodule of LF / transformers / PEFT that the table lacks (as
    PrefixChange once was) would move unseen in an upgrade."""
    listed = {*lf_patches.PRIVATE_CALLS, *lf_patches.VERSIONED_CALLS}
    unlisted = {symbol: files for symbol, files in _submodule_imports().items() if symbol not in listed}
    assert not unlisted, f"add these to lf_patches.PRIVATE_CALLS (or VERSIONED_CALLS): {unlisted}"


def test_patcher_signatures_take_the_table_symbols():
    import inspect

    for point in [*lf_patches.POINTS.values(), *lf_patches.DISABLED_POINTS.values()]:
        parameters = inspect.signature(lf_patches._patcher(point)).parameters
        assert len(parameters) == 1 + len(point.symbols), point


def test_the_installed_stack_is_a_tested_one():
    assert lf_patches.lf_version() in lf_patches.TESTED_LF_VERSIONS
    assert lf_patches.untested() == []
    assert lf_patches.stack_allowed()


def _kind(function) -> tuple[bool, bool, bool]:
    return (inspect.isgeneratorfunction(function), inspect.iscoroutinefunction(function),
            inspect.isasyncgenfunction(function))


def _patched_callables():
    """(module:symbol, the patched callable, LF's original) for every table symbol whose patch wraps LF's."""
    lf_patches.patch_all()
    for module_name, point in lf_patches.POINTS.items():
        module = importlib.import_module(module_name)
        for symbol in point.symbols:
            patched = lf_patches.require(module, [symbol])[0]
            original = getattr(patched, "__wrapped__", None)
            if original is not None:
                yield f"{module_name}:{symbol.lstrip('?')}", patched, original


def test_every_wrapped_lf_callable_keeps_its_kind_and_signature():
    """Gradio streams an event only when its function is a generator function (and awaits coroutines): a wrapper
    that turns LF's generator into a plain function shows '<generator object ...>' (the Chat tab's load_model once
    did). Every wrapper keeps LF's kind and accepts every way LF's signature can be called."""
    checked = []
    for name, patched, original in _patched_callables():
        if inspect.isclass(original):  # CustomSeq2SeqTrainer: a factory of (subclasses of) LF's class
            assert not any(_kind(patched)), name
            continue
        assert _kind(patched) == _kind(original), name
        mine = inspect.signature(patched, follow_wrapped=False)
        theirs = inspect.signature(original)
        positional = [p for p in theirs.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        keyword = {p.name: object() for p in theirs.parameters.values() if p.kind == p.KEYWORD_ONLY}
        mine.bind(*[object()] * len(positional), **keyword)  # raises TypeError where LF's callers would fail
        checked.append(name)
    assert "llamafactory.webui.chatter:WebChatModel.load_model" in checked
    assert len(checked) >= 12
