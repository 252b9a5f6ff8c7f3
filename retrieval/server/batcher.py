"""The engine thread: every catalog read, model call and FAISS search of the server runs here.

Why one thread: a catalog's SQLite connection belongs to the thread that opened it, and
the model and FAISS already use every core for one call; requests from the event loop
hand work over as jobs and await a future.

Micro-batching: plain text queries that arrive within ``window`` seconds of each other
(up to ``max_batch``) are answered together, with one aligner call that encodes all
their texts and one FAISS call that searches all their vectors. Under load this turns a
queue of single queries into a few batched ones. The window is waited only under load
(queries already queued, or the previous batch shared), so a lone client's query is not
delayed; with the window at 0 every job runs alone (scripts/bench_server.py compares both).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: Queries per batch at most: past this a batch only adds latency to its first member.
MAX_BATCH = 64


@dataclass
class Job:
    future: Future
    #: Runs alone: fn() -> result.
    fn: Callable[[], Any] | None = None
    #: Batchable: jobs with equal keys are answered by one call of `batch_fn(key, payloads)`.
    key: Hashable | None = None
    payload: Any = None
    batch_fn: Callable[[Hashable, list], list] | None = None


class EngineThread:
    """A worker thread that runs jobs in arrival order and batches the batchable ones."""

    def __init__(self, window_ms: float = 2.0, max_batch: int = MAX_BATCH):
        self.window = max(0.0, window_ms) / 1000.0
        self.max_batch = max_batch
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        #: Whether the last batch answered more than one query (then the next one waits for company).
        self._shared = False
        self._thread = threading.Thread(target=self._loop, name="retrieval-engine", daemon=True)
        self._thread.start()
        #: Sizes of the batches run so far (for tests and the benchmark).
        self.batch_sizes: list[int] = []

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the engine thread; its result (or exception) arrives in the future."""
        future: Future = Future()
        self._jobs.put(Job(future, fn=fn))
        return future

    def batched(self, key: Hashable, payload: Any, batch_fn: Callable[[Hashable, list], list]) -> Future:
        """Queue a batchable job; `batch_fn(key, payloads)` returns one result per payload."""
        future: Future = Future()
        self._jobs.put(Job(future, key=key, payload=payload, batch_fn=batch_fn))
        return future

    def close(self, timeout: float = 5.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)

    # -- the loop --------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.batch_fn is None or self.window == 0:
                self._run([job])
                continue
            # Wait for company only under load (jobs queued now, or the last batch was shared): a
            # lone client never pays the window.
            window = self.window if (self._shared or not self._jobs.empty()) else 0.0
            jobs, stop = self._gather(job, window)
            self._shared = len(jobs) > 1
            self._run(jobs)
            if stop:
                return

    def _gather(self, first: Job, window: float) -> tuple[list[Job], bool]:
        """The first job plus whatever arrives within `window` seconds (or until the batch is full)."""
        jobs, deadline = [first], time.monotonic() + window
        while len(jobs) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                job = self._jobs.get(timeout=left) if left > 0 else self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run(self, jobs: list[Job]) -> None:
        groups: dict[Hashable, list[Job]] = {}
        for job in jobs:
            if job.batch_fn is None:
                _settle(job.future, job.fn)
            else:
                groups.setdefault(job.key, []).append(job)
        for key, members in groups.items():
            self.batch_sizes.append(len(members))
            try:
                results = members[0].batch_fn(key, [m.payload for m in members])
            except BaseException as exc:  # noqa: BLE001  (handed to every waiting request)
                for m in members:
                    m.future.set_exception(exc)
                continue
            for m, result in zip(members, results):
                if isinstance(result, BaseException):
                    m.future.set_exception(result)
                else:
                    m.future.set_result(result)


def _settle(future: Future, fn: Callable[[], Any]) -> None:
    try:
        future.set_result(fn())
    except BaseException as exc:  # noqa: BLE001  (the request that asked gets it)
        future.set_exception(exc)
