"""The version guard: which LF / transformers stacks run AttTok, what the others are told (no LF run needed)."""

from __future__ import annotations

import pytest

from llamafactory_attok import lf_patches
from llamafactory_attok.lf_patches import stack


@pytest.fixture
def versions(monkeypatch):
    """Pretend another LF / transformers is installed: versions(lf="0.9.7", transformers="5.9.0")."""

    def set_versions(lf: str = stack.TESTED_LF_VERSIONS[0], transformers: str = "5.6.0") -> None:
        monkeypatch.setattr(stack, "lf_version", lambda: lf)
        monkeypatch.setattr(stack, "transformers_version", lambda: transformers)

    monkeypatch.delenv(stack.ALLOW_UNTESTED_ENV, raising=False)
    return set_versions


@pytest.mark.parametrize("lf", stack.TESTED_LF_VERSIONS)
@pytest.mark.parametrize("transformers", ["5.5.0", "5.5.4", "5.6.0", "5.7.0", "5.8.0"])
def test_the_tested_matrix_runs(versions, lf, transformers):
    versions(lf=lf, transformers=transformers)
    assert stack.untested() == [] and stack.stack_allowed()


@pytest.mark.parametrize(("lf", "transformers", "named"), [
    ("0.9.4", "5.5.4", "LLaMA-Factory 0.9.4"),
    ("0.9.7", "5.8.0", "LLaMA-Factory 0.9.7"),
    ("0.9.5", "5.8.1", "transformers 5.8.1"),
    ("0.9.5", "5.9.0", "transformers 5.9.0"),
])
def test_an_untested_stack_is_refused_naming_it_and_the_opt_in(versions, monkeypatch, lf, transformers, named):
    versions(lf=lf, transformers=transformers)
    assert not stack.stack_allowed()
    reason = stack.refusal_reason()
    assert f"found {named}" in reason
    assert "tested on LLaMA-Factory 0.9.5 and 0.9.6.dev0 with transformers 5.5.0 to 5.8.0" in reason
    assert f"{stack.ALLOW_UNTESTED_ENV}=1" in reason
    monkeypatch.setenv(stack.ALLOW_UNTESTED_ENV, "1")
    assert stack.stack_allowed()


@pytest.mark.parametrize("transformers", ["4.57.1", "4.55.0", "5.4.0", "not installed"])
def test_old_transformers_is_refused_even_with_the_opt_in(versions, monkeypatch, transformers):
    versions(transformers=transformers)
    monkeypatch.setenv(stack.ALLOW_UNTESTED_ENV, "1")
    assert not stack.stack_allowed()
    reason = stack.refusal_reason()
    assert f"found {transformers}" in reason and "5.5.0 to 5.8.0" in reason
    assert "pip install 'transformers>=5.5.0,<=5.8.0'" in reason


def test_the_opt_in_warns_once_per_process(versions, monkeypatch, capsys):
    versions(lf="0.9.7")
    monkeypatch.setattr(stack, "_WARNED", [])
    stack.warn_untested_once()
    stack.warn_untested_once()
    err = capsys.readouterr().err
    assert err.count(f"{stack.ALLOW_UNTESTED_ENV} is set: patching untested LLaMA-Factory 0.9.7") == 1


def test_the_opt_in_still_requires_every_private_call(versions, monkeypatch):
    """Under the opt-in an AttTok run first resolves every PRIVATE_CALLS symbol and names the missing ones."""
    from llamafactory_attok.errors import AttTokError
    from llamafactory_attok.lf_patches import parser

    versions(lf="0.9.7")
    monkeypatch.setenv(stack.ALLOW_UNTESTED_ENV, "1")
    monkeypatch.setattr(lf_patches, "PRIVATE_CALLS", (*lf_patches.PRIVATE_CALLS, "llamafactory.extras.env:GONE"))
    with pytest.raises(AttTokError, match=r"1 private symbol\(s\) it calls are missing: llamafactory.extras.env:GONE"):
        parser._require_stack()


@pytest.mark.parametrize(("text", "expected"), [
    ("5.8.0", (5, 8, 0)), ("5.8.0.dev0", (5, 8, 0)), ("0.9.6.dev0", (0, 9, 6)), ("5.10", (5, 10, 0)),
    ("not installed", None),
])
def test_release(text, expected):
    assert stack.release(text) == expected


def test_optional_table_symbols_are_none_where_absent():
    class Module:
        __name__ = "llamafactory.hparams.parser"
        read_args = staticmethod(lambda *a: None)

    assert lf_patches.require(Module(), ["read_args", "?_parse_train_mbridge_args"])[1] is None
    with pytest.raises(lf_patches.PatchPointMissing, match="_parse_train_mbridge_args"):
        lf_patches.require(Module(), ["_parse_train_mbridge_args"])


@pytest.mark.parametrize("symbol", ["_parse_train_mca_args", "_parse_train_mbridge_args"])
def test_launch_paths_that_bypass_the_trainer_refuse_attok(symbol):
    """USE_MCA and (LF main) USE_MEGATRON_BRIDGE parse through their own functions: AttTok keys stop there."""
    from llamafactory_attok.errors import AttTokError
    from llamafactory_attok.lf_patches import parser

    calls = []

    class Module:
        __name__ = lf_patches.PARSER

    module = Module()
    originals = [lambda args=None, name=name: calls.append((name, args))
                 for name in ("train", "infer", "eval", "mca", "mbridge")]
    parser.patch(module, lambda args=None: args, *originals)
    with pytest.raises(AttTokError, match="USE_MCA" if "mca" in symbol else "USE_MEGATRON_BRIDGE"):
        getattr(module, symbol)({"attok": True, "model_name_or_path": "m"})
    getattr(module, symbol)({"model_name_or_path": "m"})  # vanilla: LF's own function, arguments untouched
    assert calls == [("mca" if "mca" in symbol else "mbridge", {"model_name_or_path": "m"})]


def test_lf_without_the_megatron_bridge_path_is_left_without_it():
    from llamafactory_attok.lf_patches import parser

    class Module:
        __name__ = lf_patches.PARSER

    module = Module()
    parser.patch(module, lambda args=None: args, *[lambda args=None: None] * 4, None)
    assert not hasattr(module, "_parse_train_mbridge_args")
