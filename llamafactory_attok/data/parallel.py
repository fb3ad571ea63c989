"""Image work over all cores, in order, with bounded memory: what ``--workers`` of the data builders runs.

Each task's output depends on the task alone (its index, source, seed), so the files are the same, byte for byte,
with 1 or N workers. At most ``4 × workers`` tasks are in flight: a source of any length is never held in memory
as images, only as the tasks waiting their turn. Workers are started with ``spawn`` (no fork of a process that has
imported torch), and an error in a worker (an unreadable image, named) stops the build as it would with one worker.
"""

from __future__ import annotations

import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import TypeVar

from ..errors import AttTokError

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """The CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_workers(workers: int) -> int:
    if workers < 1:
        raise AttTokError(f"--workers {workers}: must be at least 1")
    return workers


MIN_PARALLEL_TASKS = 64  # below this, starting worker processes costs more than it saves


def ordered_map(fn: Callable[[T], R], tasks: Iterable[T], workers: int, total: int | None = None,
                window_per_worker: int = 4) -> Iterator[R]:
    """``map(fn, tasks)`` over ``workers`` processes, results in task order; in this process when ``workers`` is 1
    or there are fewer than :data:`MIN_PARALLEL_TASKS` (``total``) — the results are the same either way."""
    if workers <= 1 or (total is not None and total < MIN_PARALLEL_TASKS):
        yield from map(fn, tasks)
        return
    pending: deque[Future] = deque()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_leave_signals)
    try:
        for task in tasks:
            pending.append(pool.submit(fn, task))
            if len(pending) >= workers * window_per_worker:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BaseException:  # an error, Ctrl-C / SIGTERM in this process, or the consumer stopping early
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _leave_signals() -> None:
    """Workers leave Ctrl-C and SIGTERM (sent to the whole process group by a terminal or a scheduler) to the build
    process, which stops, keeps the finished images and says so: a worker's own KeyboardInterrupt traceback, or a
    worker killed mid-task, would only bury that message."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
