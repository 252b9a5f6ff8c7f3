"""Decoding worker processes that cannot stall a run: a stuck or crashed worker is replaced.

Each worker stops its own slow decodes (``retrieval.media.deadline``). A decoder that hangs inside
one C call, or crashes its process, is caught here instead: a task that has not come back
within a generous limit (the per-file limit for each of its files, plus slack) makes the
pool be killed and started afresh, the other outstanding tasks are sent again, and the
task's files are retried one by one, so only the file at fault is skipped with a reason.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from retrieval.media.loader import Loaded, init_worker, load_chunk

log = logging.getLogger(__name__)

#: Seconds on top of the per-file limits before the parent gives up on a task.
SLACK_S = 10.0
#: Seconds new workers may take to start (spawn, imports) on a busy machine; not counted in any limit.
STARTUP_S = 300.0


@dataclass
class Task:
    paths: list[str]
    future: cf.Future


class DecodePool:
    """``submit`` chunks of paths, then take each ``result`` in order."""

    def __init__(self, workers: int, transform, known, draft: bool, time_limit_s: float | None):
        self.workers, self.time_limit_s = workers, time_limit_s
        self._initargs = (transform, known, draft, time_limit_s)
        self._outstanding: list[Task] = []
        self.replaced = 0
        self._pool = self._start()

    def _start(self) -> cf.ProcessPoolExecutor:
        # spawn, not fork: the parent holds torch's thread pools, which do not survive fork.
        context = multiprocessing.get_context("spawn")
        pool = cf.ProcessPoolExecutor(self.workers, mp_context=context, initializer=init_worker, initargs=self._initargs)
        # Answered as soon as a worker is up: time limits start counting then, not while
        # Python starts (seconds on a loaded machine).
        self._ready = pool.submit(os.getpid)
        return pool

    def _wait_until_started(self) -> None:
        try:
            self._ready.result(timeout=STARTUP_S)
        except (cf.TimeoutError, BrokenProcessPool, cf.CancelledError):
            pass  # the task's own limit decides what happens next

    def submit(self, paths: list[str]) -> Task:
        task = Task(paths, self._pool.submit(load_chunk, paths))
        self._outstanding.append(task)
        return task

    def result(self, task: Task) -> list[Loaded]:
        self._wait_until_started()
        try:
            return task.future.result(timeout=self._limit(len(task.paths)))
        except (cf.TimeoutError, BrokenProcessPool) as exc:
            self._outstanding.remove(task)
            self._replace(f"a decoding task {'timed out' if isinstance(exc, cf.TimeoutError) else 'crashed its worker'}")
            return [self._alone(path) for path in task.paths]
        finally:
            if task in self._outstanding:
                self._outstanding.remove(task)

    def _alone(self, path: str) -> Loaded:
        future = self._pool.submit(load_chunk, [path])
        self._wait_until_started()
        try:
            return future.result(timeout=self._limit(1))[0]
        except cf.TimeoutError:
            self._replace(f"decoding {path} did not stop")
            return Loaded(path, error=f"decoding did not finish within {self._limit(1):g}s (the worker was replaced)")
        except BrokenProcessPool:
            self._replace(f"decoding {path} crashed its worker")
            return Loaded(path, error="the decoder crashed on this file (the worker was replaced)")

    def _limit(self, files: int) -> float:
        return (self.time_limit_s or 60.0) * (files + 1) + SLACK_S

    def _replace(self, why: str) -> None:
        log.warning("%s: replacing the decoding workers", why)
        self.replaced += 1
        self._kill()
        self._pool = self._start()
        for task in self._outstanding:
            task.future = self._pool.submit(load_chunk, task.paths)

    def _kill(self) -> None:
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        for process in processes:
            process.kill()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(5)

    def close(self) -> None:
        for task in self._outstanding:
            task.future.cancel()
        self._outstanding.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            # Interrupted (Ctrl-C, an error downstream): do not wait for a worker that may be stuck.
            self._outstanding.clear()
            self._kill()
