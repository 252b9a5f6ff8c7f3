"""The query thread: every catalog read, model call and FAISS search of the server runs here.

Why one thread: a catalog's SQLite connection belongs to the thread that opened it, and
the model and FAISS already use every core for one call; requests from the event loop
hand work over as jobs and await a future.

Micro-batching: whenever the thread becomes free it takes every job queued by then (up
to ``max_batch``) and answers the plain text queries among them together, with one aligner
call that encodes all their texts and one FAISS call that searches all their vectors. So a
batch grows with the load: while one batch runs, the next one queues. There is no fixed
wait: only when the thread finds a single query just after a shared batch (a burst may
still be arriving) does it wait up to ``window`` seconds for company; a lone client's
query never waits. With the window at 0 batching is off and every job runs alone
(benchmarks/bench_server.py compares both).

Two stages: a batchable job may come with a `prepare` step that needs no catalog (the
text encoder). With batching on and other queries in flight, batches are gathered and
prepared by a second thread, the encoder thread, and handed to the query thread to finish
(search, rows, responses), so the next batch is being encoded while the last one is
searched: the two run on two cores, each with one BLAS thread (numpy's BLAS releases the
GIL). A query with nothing else in flight goes straight to the query thread, which
prepares and finishes it: each hand-over between threads can wait for a core.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any

log = logging.getLogger(__name__)

#: Queries per batch at most: past this a batch only adds latency to its first member.
MAX_BATCH = 64


@dataclass
class Call:
    """A job that runs alone: fn() -> result, into `future` (None: nobody waits for it)."""

    fn: Callable[[], Any]
    future: Future | None = None


@dataclass
class Batchable:
    """Batchable jobs with equal keys are answered by one call of `batch_fn(key, payloads)`,
    or `batch_fn(key, payloads, prepare(key, payloads))` when `prepare` is given."""

    future: Future
    key: Hashable
    payload: Any
    batch_fn: Callable[..., list]
    prepare: Callable[..., Any] | None = None


Job = Call | Batchable


class QueryThread:
    """A worker thread that runs jobs in arrival order and batches the batchable ones."""

    def __init__(self, window_ms: float = 2.0, max_batch: int = MAX_BATCH, name: str = "retrieval-query"):
        self.window = max(0.0, window_ms) / 1000.0
        self.max_batch = max_batch
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        #: Batchable jobs with a prepare step wait here for the encoder thread (batching on only).
        self._staged: queue.Queue[Job | None] = queue.Queue()
        #: Whether the last batch answered more than one query (then a lone next one may wait for company).
        self._shared = {id(self._jobs): False, id(self._staged): False}
        #: Sizes of the latest batches (for tests and the benchmark); bounded, as a server runs for weeks.
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=4096)
        #: Queries with a prepare step not answered yet: under load they go through the encoder thread.
        self._in_flight = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        self._encoder = None
        if self.window > 0:
            self._encoder = threading.Thread(target=self._encode_loop, name=f"{name}-encoder", daemon=True)
            self._encoder.start()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the query thread; its result (or exception) arrives in the future."""
        future: Future = Future()
        self._jobs.put(Call(fn, future))
        return future

    def batched(
        self, key: Hashable, payload: Any, batch_fn: Callable[..., list],
        prepare: Callable[..., Any] | None = None,
    ) -> Future:
        """Queue a batchable job; `batch_fn(key, payloads)` returns one result per payload.

        With `prepare`, `batch_fn(key, payloads, prepare(key, payloads))`: `prepare` runs on the
        encoder thread when batching is on (it must not touch a catalog), on the query thread otherwise.
        """
        future: Future = Future()
        job = Batchable(future, key, payload, batch_fn, prepare)
        staged = False
        if prepare is not None and self._encoder is not None:
            # A query with none other in flight skips the encoder thread: each hand-over between
            # threads can wait for a core, which a lone client would pay on every query
            # (docs/serving-speed.md#under-load-micro-batching-second-round).
            with self._lock:
                staged = self._in_flight > 0
                self._in_flight += 1
            future.add_done_callback(self._landed)
        (self._staged if staged else self._jobs).put(job)
        return future

    def _landed(self, _future: Future) -> None:
        with self._lock:
            self._in_flight -= 1

    def close(self, timeout: float = 5.0) -> None:
        if self._encoder is not None:
            self._staged.put(None)
            self._encoder.join(timeout)
        self._jobs.put(None)
        self._thread.join(timeout)

    # -- the loops -------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            jobs, stop = self._next_batch(self._jobs)
            self._run(jobs)
            if stop:
                return

    def _encode_loop(self) -> None:
        while True:
            jobs, stop = self._next_batch(self._staged)
            for key, members in _groups(jobs).items():
                self.batch_sizes.append(len(members))
                payloads = [m.payload for m in members]
                prepare = members[0].prepare
                assert prepare is not None  # staged only with one: QueryThread.batched
                try:
                    prepared = prepare(key, payloads)
                except BaseException as exc:  # noqa: BLE001  (handed to every waiting request)
                    _fail(members, exc)
                    continue
                self._jobs.put(Call(partial(_answer, members, key, payloads, (prepared,))))
            if stop:
                return

    def _next_batch(self, jobs: queue.Queue[Job | None]) -> tuple[list[Job], bool]:
        """The next job, plus every batchable job queued by now when batching is on. True: stop after these."""
        job = jobs.get()
        if job is None:
            return [], True
        if isinstance(job, Call) or self.window == 0:
            return [job], False
        batch, stop = self._take_queued(jobs, [job])
        if len(batch) == 1 and self._shared[id(jobs)] and not stop:
            # Alone just after a shared batch: more of the burst is likely on its way.
            batch, stop = self._take_queued(jobs, batch, wait=self.window)
        self._shared[id(jobs)] = len(batch) > 1
        return batch, stop

    def _take_queued(self, jobs: queue.Queue[Job | None], batch: list[Job], wait: float = 0.0) -> tuple[list[Job], bool]:
        """`batch` plus every job queued now (until it is full); with `wait`, first up to
        `wait` seconds for one more. True when the stop signal was among them."""
        if wait > 0:
            try:
                job = jobs.get(timeout=wait)
            except queue.Empty:
                return batch, False
            if job is None:
                return batch, True
            batch.append(job)
        while len(batch) < self.max_batch:
            try:
                job = jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _run(self, jobs: list[Job]) -> None:
        for job in jobs:
            if isinstance(job, Call):
                _settle(job.future, job.fn)
        for key, members in _groups(jobs).items():
            self.batch_sizes.append(len(members))
            _answer(members, key, [m.payload for m in members])


def _groups(jobs: list[Job]) -> dict[Hashable, list[Batchable]]:
    """Batchable jobs by key, in arrival order."""
    groups: dict[Hashable, list[Batchable]] = {}
    for job in jobs:
        if isinstance(job, Batchable):
            groups.setdefault(job.key, []).append(job)
    return groups


def _answer(members: list[Batchable], key: Hashable, payloads: list, prepared: tuple | None = None) -> None:
    """Run one batch call and hand each member its result (or the call's exception).

    `prepared`: the prepare step's result in a 1-tuple, when the encoder thread has run it.
    """
    first = members[0]
    try:
        if first.prepare is None:
            results = first.batch_fn(key, payloads)
        else:
            (ready,) = prepared if prepared is not None else (first.prepare(key, payloads),)
            results = first.batch_fn(key, payloads, ready)
    except BaseException as exc:  # noqa: BLE001  (handed to every waiting request)
        _fail(members, exc)
        return
    for m, result in zip(members, results):
        if isinstance(result, BaseException):
            m.future.set_exception(result)
        else:
            m.future.set_result(result)


def _fail(members: list[Batchable], exc: BaseException) -> None:
    for m in members:
        m.future.set_exception(exc)


def _settle(future: Future | None, fn: Callable[[], Any]) -> None:
    try:
        result = fn()
    except BaseException as exc:  # noqa: BLE001  (the request that asked gets it)
        if future is None:  # nobody waits on it: say so, and keep the thread running
            log.exception("query thread job failed")
            return
        future.set_exception(exc)
        return
    if future is not None:
        future.set_result(result)
