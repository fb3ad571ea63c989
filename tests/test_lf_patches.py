"""The one table of LF patch points agrees with LF 0.9.5, the hook and the code (cheap: no training)."""

import importlib

import pytest

from llamafactory_attok import _boot, lf_patches


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


@pytest.mark.parametrize("symbol", lf_patches.PRIVATE_CALLS)
def test_every_private_symbol_the_plugin_calls_exists(symbol):
    module, name = symbol.split(":")
    assert _resolve(module, name) is not None


def test_patcher_signatures_take_the_table_symbols():
    import inspect

    for point in [*lf_patches.POINTS.values(), *lf_patches.DISABLED_POINTS.values()]:
        parameters = inspect.signature(lf_patches._patcher(point)).parameters
        assert len(parameters) == 1 + len(point.symbols), point


def test_supported_version_is_the_installed_one():
    assert lf_patches.lf_version() in lf_patches.SUPPORTED_LF_VERSIONS
