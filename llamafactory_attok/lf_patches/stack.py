"""Which LLaMA-Factory / transformers stack AttTok runs on: the tested versions, the opt-in for untested ones.

Stdlib only (imported by the startup hook through :mod:`llamafactory_attok.lf_patches`). The tested matrix, with
what was run on each stack, is in docs/compatibility.md; ``pyproject.toml`` admits the same ranges, so installing
the plugin never moves a working LF environment.

- LF: :data:`TESTED_LF_VERSIONS`. Another LF version refuses AttTok (vanilla LF is untouched) unless the user sets
  :data:`ALLOW_UNTESTED_ENV`; then every patch point is applied with the same all-or-nothing checks, and every
  private symbol the plugin calls (``PRIVATE_CALLS``) must resolve before an AttTok run starts.
- transformers: :data:`TRANSFORMERS_MIN` .. :data:`TRANSFORMERS_MAX`. Older releases (4.x: no
  ``core_model_loading``, no ``TokenizersBackend``) are refused, opt-in or not; newer ones count as untested.
"""

from __future__ import annotations

import os
import re
import sys

TESTED_LF_VERSIONS = ("0.9.5", "0.9.6.dev0")  # 0.9.6.dev0 = LF main (docs/compatibility.md names the commit)
TRANSFORMERS_MIN = (5, 5, 0)
TRANSFORMERS_MAX = (5, 8, 0)
TRANSFORMERS_RANGE = "transformers>=5.5.0,<=5.8.0"  # as in pyproject.toml (LF narrows it: 0.9.5 <=5.6.0, main !=5.6.0)
ALLOW_UNTESTED_ENV = "ATTOK_ALLOW_UNTESTED_LF"
_TRUE = ("1", "true", "yes", "on")


def lf_version() -> str:
    try:
        from llamafactory.extras.env import VERSION
    except Exception as err:  # noqa: BLE001 - reported as part of the version, never raised from the hook
        return f"unknown ({type(err).__name__}: {err})"
    return str(VERSION)


def transformers_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        return "not installed"


def release(text: str) -> tuple[int, ...] | None:
    """(major, minor, micro) of a version string ("5.8.0.dev0" -> (5, 8, 0)); None when it has none."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return None if match is None else tuple(int(part or 0) for part in match.groups())


def _range_text() -> str:
    low, high = (".".join(map(str, v)) for v in (TRANSFORMERS_MIN, TRANSFORMERS_MAX))
    return f"{low} to {high}"


def transformers_too_old() -> str | None:
    """Why this transformers cannot run AttTok at all (None: new enough). Not overridable."""
    found = transformers_version()
    got = release(found)
    if got is not None and got >= TRANSFORMERS_MIN:
        return None
    return (f"llamafactory-attok needs transformers {_range_text()} (found {found}; older releases, 4.x among "
            f"them, lack the weight-loading and tokenizer APIs AttTok uses); install a version your LLaMA-Factory "
            f"accepts, e.g. pip install '{TRANSFORMERS_RANGE}'")


def untested() -> list[str]:
    """The parts of this stack outside the tested matrix ("LLaMA-Factory 0.9.7", "transformers 5.9.0")."""
    parts = []
    if lf_version().split("+", 1)[0] not in TESTED_LF_VERSIONS:  # a local build (0.9.5+cu121) is that release
        parts.append(f"LLaMA-Factory {lf_version()}")
    got = release(transformers_version())
    if got is not None and got > TRANSFORMERS_MAX:
        parts.append(f"transformers {transformers_version()}")
    return parts


def untested_opt_in() -> bool:
    return os.environ.get(ALLOW_UNTESTED_ENV, "").strip().lower() in _TRUE


def stack_allowed() -> bool:
    """Whether the plugin may patch LF's internals here: a tested stack, or an untested one the user opted into."""
    if transformers_too_old() is not None:
        return False
    return not untested() or untested_opt_in()


def tested_text() -> str:
    return f"LLaMA-Factory {' and '.join(TESTED_LF_VERSIONS)} with transformers {_range_text()}"


def refusal_reason() -> str:
    """Why AttTok is refused on this stack (only called when :func:`stack_allowed` is false)."""
    too_old = transformers_too_old()
    if too_old is not None:
        return too_old
    return (f"llamafactory-attok is tested on {tested_text()}; found {', '.join(untested())}. Install a tested "
            f"version (docs/compatibility.md), remove the attok keys, or set {ALLOW_UNTESTED_ENV}=1 to try anyway "
            "(every patch point and private call is still checked, and AttTok stops if one is missing).")


_WARNED: list[bool] = []


def warn_untested_once() -> None:
    """One line on stderr per process when the user's opt-in lets AttTok patch an untested stack."""
    if _WARNED or not untested():
        return
    _WARNED.append(True)
    sys.stderr.write(f"llamafactory-attok: {ALLOW_UNTESTED_ENV} is set: patching untested "
                     f"{', '.join(untested())} (tested: {tested_text()}).\n")
