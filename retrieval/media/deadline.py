"""A time limit on decoding one file, so a pathological image cannot stall an index run.

Inside a process's main thread :func:`time_limit` arms a one-shot SIGALRM timer; its handler
raises :class:`DecodeTimeout` at the next Python instruction. Pillow decodes in slices and
returns to Python between them, so this stops slow decodes without losing the process.
A decoder stuck inside one C call never returns to Python; for that the parent process
keeps a second, looser limit per task and replaces the worker (``retrieval.media.workers``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class DecodeTimeout(BaseException):
    """Raised inside a decode that ran past its limit.

    A BaseException, like KeyboardInterrupt, so that decoder code catching ``Exception``
    (metadata parsers do) cannot swallow it and carry on past the limit.
    """


def _expired(signum, frame):
    raise DecodeTimeout


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`DecodeTimeout` in the block after `seconds` (no limit off the main thread or with None)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
