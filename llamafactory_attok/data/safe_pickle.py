"""Loading an untrusted pickle (PathVQA's ``*_qa.pkl``) without running code from it.

A pickle can name any importable callable and call it while loading (``__reduce__``): ``pickle.load`` on a file
from elsewhere is running that file's code. :func:`load_plain_pickle` uses an unpickler whose ``find_class``
refuses every global, so only what pickle builds from its own opcodes loads: lists, tuples, dicts, strings,
bytes, numbers, booleans and ``None``. Anything else (a class instance, a NumPy array, a pandas frame, a
function call) is refused with the global it named, before it is imported or called.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from ..errors import AttTokError


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle named a global (a class or callable); plain data never does."""


class PlainUnpickler(pickle.Unpickler):
    """Builds plain containers and strings only; every global and persistent id is refused."""

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        raise RefusedGlobal(f"it refers to {module}.{name}")

    def persistent_load(self, pid):  # noqa: D102 - pickle API
        raise RefusedGlobal(f"it uses a persistent id {pid!r}")


def load_plain_pickle(path: str | Path) -> object:
    """The plain data in ``path``; a pickle needing any class or callable is an :class:`AttTokError` saying why."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return PlainUnpickler(handle, encoding="utf-8").load()
    except FileNotFoundError as err:
        raise AttTokError(f"{path}: file does not exist") from err
    except RefusedGlobal as err:
        raise AttTokError(f"{path}: refused: {err}; only plain lists, dicts and strings are accepted (a pickle can "
                          "run code when loaded, so this one is not loaded)") from err
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError, OverflowError,
            MemoryError) as err:  # what a corrupt or truncated pickle raises
        raise AttTokError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from err
