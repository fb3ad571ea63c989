"""The images a classification build wrote, kept on disk instead of in memory.

One JSON line per image — split, raw label, path relative to the output folder, source — appended as each image is
placed, in the order the datasets list them (originals in source order, then the augmented training images). The
datasets and the manifest are then written from it one split at a time (:class:`~..json_stream.Lazy`), so a build
of any size holds none of their rows in memory (BENCHMARKS §9: peak memory flat in N).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

Record = tuple[str, str, dict]  # (raw label, path relative to the output folder, extra row fields: source)


class ImageRecords:
    """Append-only file of ``(split, label, path, source)``; readable per split once :meth:`close` d."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()
        self._handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def add(self, split: str, label: str, path: str, source: str) -> None:
        self._handle.write(json.dumps([split, label, path, source], ensure_ascii=False) + "\n")
        self.counts[split] += 1

    def close(self) -> None:
        self._handle.close()

    def of_split(self, split: str) -> Iterator[Record]:
        """The records of ``split``, in the order they were added."""
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                record_split, label, path, source = json.loads(line)
                if record_split == split:
                    yield label, path, {"source": source}

    @property
    def splits(self) -> set[str]:
        return {split for split, count in self.counts.items() if count}
