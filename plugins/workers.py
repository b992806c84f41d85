"""Run a serial kernel over blocks of a tensor's elements on several threads.

numba's parallel loops give each thread an equal share and then wait for every thread.
On a machine shared with other jobs, a thread the scheduler has not run yet holds up
the whole loop: each call of the kernel then lost a time slice or more (tens of
milliseconds, about 200 calls per merge), and idle threads spun between calls. Here the
calling thread and helper threads take blocks of elements from one counter until none
is left. A helper that has not started by then takes no block and nobody waits for it:
the caller waits only for blocks a helper has begun. The kernels release the GIL, so
the threads compute at once.

The thread count is torch's (`torch.set_num_threads`, mergekit's `--num-threads`).
The result cannot depend on it: each block writes its own elements, and per-thread
counters are summed in integers.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from typing import Callable, List, Optional

import torch

# Elements per block: a few milliseconds of kernel time, so the threads finish within
# about one block of each other and the per-block call overhead stays below 1%.
BLOCK = 1 << 20

_helpers: List["queue.SimpleQueue"] = []
_helpers_lock = threading.Lock()


def _forget_helpers() -> None:
    # A forked child has none of the parent's threads: queued jobs would never run.
    global _helpers_lock
    _helpers.clear()
    _helpers_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)


def threads_for(numel: int, block: Optional[int] = None) -> int:
    """How many threads (the caller included) a job of `numel` elements uses."""
    return max(1, min(torch.get_num_threads(), -(-numel // (block or BLOCK))))


class _Job:
    def __init__(self, numel: int, block: int, fn: Callable[[int, int, int], None]):
        self.numel, self.block, self.fn = numel, block, fn
        self.next = 0
        self.running = 0
        self.error = None
        self.cond = threading.Condition()

    def _claim(self):
        with self.cond:
            start = self.next
            if start >= self.numel or self.error is not None:
                return None
            self.next = min(start + self.block, self.numel)
            self.running += 1
            return start, self.next

    def work(self, slot: int) -> None:
        while (span := self._claim()) is not None:
            try:
                self.fn(span[0], span[1], slot)
            except BaseException as e:  # handed to the caller, which raises it
                with self.cond:
                    self.error = self.error or e
            finally:
                with self.cond:
                    self.running -= 1
                    self.cond.notify_all()

    def wait(self) -> None:
        with self.cond:
            while self.running:
                self.cond.wait()
        if self.error is not None:
            raise self.error


class _Task:
    """A call made on a helper thread, nobody waiting for it."""

    def __init__(self, fn: Callable[[], None]):
        self.fn = fn

    def work(self, slot: int) -> None:
        try:
            self.fn()
        except Exception as e:  # the helper thread must live on; nobody waits to raise it
            warnings.warn(f"sftmerge: a background task failed: {e!r}", RuntimeWarning)
        self.fn = None  # drop what it holds (tensors) at once


def _helper(jobs: "queue.SimpleQueue", slot: int) -> None:
    while True:
        jobs.get().work(slot)


def _ensure_helpers(count: int) -> None:
    with _helpers_lock:
        while len(_helpers) < count:
            jobs = queue.SimpleQueue()
            threading.Thread(target=_helper, args=(jobs, len(_helpers) + 1), daemon=True,
                             name=f"sftmerge-kernel-{len(_helpers) + 1}").start()
            _helpers.append(jobs)


def run_blocks(numel: int, fn: Callable[[int, int, int], None], threads: int, block: Optional[int] = None) -> None:
    """Call fn(start, stop, slot) for consecutive blocks covering [0, numel).

    `slot` is 0 for the calling thread and 1..threads-1 for helpers: a thread's own
    index into per-thread outputs. Returns when every block is done; re-raises the
    first exception of any block.
    """
    job = _Job(numel, block or BLOCK, fn)
    if threads > 1:
        _ensure_helpers(threads - 1)
        for jobs in _helpers[: threads - 1]:
            jobs.put(job)
    job.work(0)
    job.wait()


def later(fn: Callable[[], None]) -> None:
    """Call fn() on a helper thread and return at once; in this thread when torch has one.

    For work nobody waits on, such as dropping the pages of inputs already merged: it
    then overlaps the caller's next steps instead of delaying them.
    """
    if torch.get_num_threads() < 2:
        fn()
        return
    _ensure_helpers(1)
    _helpers[0].put(_Task(fn))
