"""Decoding worker processes that cannot stall a run: a stuck or crashed worker is replaced.

Each worker stops its own slow decodes (``retrieval.media.deadline``). A decoder that hangs inside
one C call, or crashes its process, is caught here instead: a task that has not come back
within a generous limit (the per-file limit for each of its files, plus slack) makes the
pool be killed and started afresh, the other outstanding tasks are sent again, and the
task's files are retried one by one, so only the file at fault is skipped with a reason.

Not pebble's ProcessPool, although its per-task timeouts kill one worker instead of the
pool: its own issue tracker reports a task that, once workers are being killed for
timeouts, neither finishes nor times out, which is the stall this module exists to rule out;
here the parent's wait on every task is bounded (docs/reliability.md has the comparison).
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Container
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from types import TracebackType

from retrieval.media import heif
from retrieval.media.decode import FaceFn, Loaded, Transform, load_many
from retrieval.media.video import VideoSettings, is_video

log = logging.getLogger(__name__)

#: Seconds on top of the per-file limits before the parent gives up on a task.
SLACK_S = 10.0
#: Seconds new workers may take to start (spawn, imports) on a busy machine; not counted in any limit.
STARTUP_S = 300.0
#: prctl(2) option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


# -- inside a worker process ------------------------------------------------------
# A spawned worker imports this module, retrieval.media.decode and what they import (numpy,
# Pillow), never the indexer or a model, so it starts in a fraction of a second.
@dataclass(frozen=True)
class DecodeJob:
    """The settings every chunk of one run is decoded with: sent once per worker, not with every chunk."""

    transform: Transform | None
    skip_hashes: Container[str]
    draft: bool
    time_limit_s: float | None
    #: What finds faces in each decoded picture (its models load in the worker, on first use).
    faces: FaceFn | None = None
    #: How videos are sampled into frames (retrieval.media.video).
    video: VideoSettings | None = None

    def load(self, paths: list[str]) -> list[Loaded]:
        return load_many(paths, self.transform, self.skip_hashes, self.draft, self.time_limit_s, self.faces, self.video)


# This worker process's job. The one module-level variable here, and per process: a pool's
# initializer runs in the worker and can leave state nowhere but in that process's globals,
# and tasks reach it only as module functions. In the parent it stays None.
_job: DecodeJob | None = None


def init_worker(job: DecodeJob) -> None:
    """Process-pool initializer: keep `job` for :func:`load_chunk`, and die with the parent."""
    global _job
    # Ctrl-C reaches the whole process group; the parent alone decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    heif.register()  # once per worker, before its first HEIC (decode would otherwise on the first one)
    prepare = getattr(job.faces, "prepare", None)
    if prepare is not None:
        prepare()  # the face detector loads here, outside any file's time limit
    _job = job


def load_chunk(paths: list[str]) -> list[Loaded]:
    """A worker's task: `paths` loaded with the settings :func:`init_worker` kept."""
    if _job is None:
        raise RuntimeError("load_chunk runs in a worker that init_worker has set up")
    return _job.load(paths)


def _die_with_parent() -> None:
    """End this worker when its parent dies, even by SIGKILL (Linux).

    A spawned pool worker holds both ends of its task pipe, so it never sees end-of-file
    when the parent is killed: without this it would wait on the pipe forever.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(0)  # the parent died before the line above took effect


# -- in the parent ----------------------------------------------------------------


@dataclass
class Task:
    paths: list[str]
    future: cf.Future


class DecodePool:
    """``submit`` chunks of paths, then take each ``result`` in order."""

    def __init__(
        self, workers: int, transform: Transform | None, known: Container[str], draft: bool, time_limit_s: float | None,
        faces: FaceFn | None = None, video: VideoSettings | None = None,
    ):
        self.workers, self.time_limit_s = workers, time_limit_s
        self._video = video or VideoSettings()
        self._initargs = (DecodeJob(transform, known, draft, time_limit_s, faces, video),)
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
            return task.future.result(timeout=self._limit(task.paths))
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
            return future.result(timeout=self._limit([path]))[0]
        except cf.TimeoutError:
            self._replace(f"decoding {path} did not stop")
            return Loaded(path, error=f"decoding did not finish within {self._limit([path]):g}s (the worker was replaced)")
        except BrokenProcessPool:
            self._replace(f"decoding {path} crashed its worker")
            return Loaded(path, error="the decoder crashed on this file (the worker was replaced)")

    def _limit(self, paths: list[str]) -> float:
        per_file = self.time_limit_s or 60.0
        # A video samples for up to its own limit (scaled with its length), longer than a photo's.
        video = max(per_file, self._video.longest_s + 10.0)
        return sum(video if is_video(p) else per_file for p in paths) + per_file + SLACK_S

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

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            # Interrupted (Ctrl-C, an error downstream): do not wait for a worker that may be stuck.
            self._outstanding.clear()
            self._kill()
