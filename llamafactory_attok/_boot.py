"""Startup hook (stdlib only): patch LLaMA-Factory modules right after LLaMA-Factory imports them.

Installed as ``llamafactory_attok.pth`` (and the PEP 829 ``llamafactory_attok.start``) in site-packages, so it
reaches every process: ``llamafactory-cli``, LF's torchrun relaunch of ``launcher.py`` and WebUI-spawned training.
It only puts a finder on ``sys.meta_path``; nothing heavy is imported until LF itself is. ``ATTOK_DISABLE=1``
turns AttTok off; the hook then only warns when a folder saved with AttTok state is loaded. It never raises at
interpreter start.
"""

import os
import sys

from llamafactory_attok.lf_patches import (  # stdlib-only: the one table of patch points
    DISABLE_FALSE,
    DISABLE_TRUE,
    DISABLED_POINTS,
    POINTS,
)

TARGET_MODULES = frozenset(POINTS)
# With ATTOK_DISABLE set only these are watched, to warn when a saved AttTok run is loaded without AttTok.
DISABLED_TARGETS = frozenset(DISABLED_POINTS)


class _PatchingLoader:
    """Wraps a module's real loader; after the module body runs, hands it to ``lf_patches``."""

    def __init__(self, loader, name, disabled):
        self._loader = loader
        self._name = name
        self._disabled = disabled

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)  # LF's own import errors are LF's: they propagate unchanged
        _patch_safely(self._name, module, self._disabled)

    def __getattr__(self, item):
        return getattr(self._loader, item)


class _Finder:
    """Meta-path finder that claims only its target modules and delegates the actual finding."""

    def __init__(self, disabled=False):
        self.disabled = disabled
        self.targets = DISABLED_TARGETS if disabled else TARGET_MODULES

    def find_spec(self, name, path, target=None):
        if name not in self.targets:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader, name, self.disabled)
                return spec
        return None


def _patch_safely(name, module, disabled):
    """Hand ``module`` to ``lf_patches`` (which never raises); should even that fail, the LF import succeeds."""
    try:
        from llamafactory_attok import lf_patches

        (lf_patches.patch_disabled if disabled else lf_patches.patch_module)(name, module)
    except Exception as err:  # the plugin must never break a vanilla LF import
        sys.stderr.write(
            f"llamafactory-attok: could not patch {name} ({type(err).__name__}: {err}); LLaMA-Factory runs as "
            "shipped, and AttTok runs will stop with an error.\n"
        )


def is_disabled() -> bool:
    """``ATTOK_DISABLE`` is one of ``DISABLE_TRUE`` (off) or ``DISABLE_FALSE`` (on); any other value also turns
    AttTok off (the variable was set to turn something off) and is named at start and by any AttTok key."""
    return disable_setting() != "enabled"


def disable_setting() -> str:
    """"enabled", "disabled", or "invalid" for the current ``ATTOK_DISABLE`` value."""
    value = os.environ.get("ATTOK_DISABLE", "").strip().lower()
    if value in DISABLE_FALSE:
        return "enabled"
    return "disabled" if value in DISABLE_TRUE else "invalid"


def install() -> None:
    """Idempotently put the finder first on ``sys.meta_path``; with ``ATTOK_DISABLE=1`` it only warns."""
    try:
        if any(isinstance(f, _Finder) for f in sys.meta_path):
            return
        finder = _Finder(disabled=is_disabled())
        if disable_setting() == "invalid":
            sys.stderr.write(f"llamafactory-attok: ATTOK_DISABLE={os.environ['ATTOK_DISABLE']!r} is not one of "
                             f"{', '.join(DISABLE_TRUE)} (AttTok off) or {', '.join(DISABLE_FALSE[1:])} or empty "
                             "(AttTok on); AttTok is off.\n")
        sys.meta_path.insert(0, finder)
        already = [name for name in finder.targets if name in sys.modules]
        for name in already:  # LF imported before us (unusual): patch what is loaded now
            _patch_safely(name, sys.modules[name], finder.disabled)
    except Exception as err:  # interpreter start must never fail; say why instead of staying silent
        sys.stderr.write(f"llamafactory-attok: startup hook not installed: {err!r}\n")
