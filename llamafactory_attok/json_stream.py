"""JSON files written piece by piece: a list given as :class:`Lazy` is produced and written one element at a time,
so a dataset of N rows or a build manifest of N images is never held in memory as a whole (data builds keep peak
memory flat in N, BENCHMARKS §9).

The text is exactly ``json.dumps(value, indent=1, ensure_ascii=False)`` of the same value with every :class:`Lazy`
replaced by the list it yields (tested), so readers see no difference.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class Lazy:
    """A JSON list made on demand: ``make()`` returns a fresh iterable of its elements each time it is written."""

    def __init__(self, make: Callable[[], Iterable[Any]]) -> None:
        self.make = make


def _holds_lazy(value: Any) -> bool:
    if isinstance(value, Lazy):
        return True
    if isinstance(value, dict):
        return any(_holds_lazy(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_lazy(v) for v in value)
    return False


def _container(pairs: Iterable[tuple[str | None, Any]], opening: str, closing: str, level: int) -> Iterator[str]:
    inner, first = " " * (level + 1), True
    for key, item in pairs:
        yield (opening + "\n" if first else ",\n") + inner + (
            "" if key is None else json.dumps(key, ensure_ascii=False) + ": ")
        first = False
        yield from iter_json(item, level + 1)
    yield opening + closing if first else "\n" + " " * level + closing


def iter_json(value: Any, level: int = 0) -> Iterator[str]:
    """The text of ``value`` at indentation ``level``, in pieces (see the module docstring)."""
    if not _holds_lazy(value):
        yield json.dumps(value, indent=1, ensure_ascii=False).replace("\n", "\n" + " " * level)
    elif isinstance(value, dict):
        yield from _container(((str(k), v) for k, v in value.items()), "{", "}", level)
    else:
        yield from _container(((None, v) for v in (value.make() if isinstance(value, Lazy) else value)), "[", "]",
                              level)
