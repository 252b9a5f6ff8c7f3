"""Decoded files as a stream: read and decode ahead in worker processes, in order, with bounded memory.

Indexing, evaluation and training all take their pixels from :func:`load_stream`;
:func:`batched` cuts any stream into the batches a model encodes.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Container, Iterable, Iterator
from typing import TypeVar

from retrieval.ingest.settings import IndexSettings
from retrieval.media.decode import FaceFn, Loaded, Transform, load_many
from retrieval.media.workers import DecodePool, Task

T = TypeVar("T")
log = logging.getLogger(__name__)


def load_stream(
    paths: Iterable[str],
    transform: Transform | None,
    known: Container[str],
    settings: IndexSettings,
    count: int | None = None,
    faces: FaceFn | None = None,
) -> Iterator[Loaded]:
    """Yield loaded files in order, decoding ahead in worker processes with bounded memory.

    `paths` may be a lazy iterable (then give `count`); it is consumed a chunk at a time.
    What the decoders said about a file is logged here, with its path, at INFO (`-v`). With
    `faces`, each decoded picture's faces are looked for too (``Loaded.faces``); a file the
    face detector fails on gets one warning.
    """
    for loaded in _decoded(paths, transform, known, settings, count, faces):
        say_decoded(loaded)
        yield loaded


def say_decoded(loaded: Loaded) -> None:
    """Log what the decoders said about a file, with its path (a local run's and a cluster's alike)."""
    for note in loaded.notes:
        # A video's notes say it was indexed only in part (the cap, the time limit, damage): shown by default.
        log.log(logging.WARNING if loaded.times is not None else logging.INFO, "%s: %s", loaded.path, note)
    if loaded.face_error:
        log.warning("%s: no faces looked for (the face detector failed: %s)", loaded.path, loaded.face_error)


def _decoded(
    paths: Iterable[str], transform: Transform | None, known: Container[str], settings: IndexSettings, count: int | None,
    faces: FaceFn | None = None,
) -> Iterator[Loaded]:
    count = len(paths) if count is None else count  # type: ignore[arg-type]
    chunks = batched(paths, settings.chunk)
    workers = settings.worker_count()
    limit = settings.decode_seconds
    if workers == 0 or count <= settings.chunk:
        for chunk in chunks:
            yield from load_many(chunk, transform, known, settings.draft, limit, faces, settings.video)
        return
    # A stuck or crashed worker is replaced and only the file at fault is skipped (retrieval.media.workers).
    with DecodePool(workers, transform, known, settings.draft, limit, faces, settings.video) as pool:
        pending: deque[Task] = deque()
        first = next(chunks, None)
        try:
            for chunk in chunks:
                pending.append(pool.submit(chunk))
                if len(pending) >= 2 * workers + 2:
                    break
            # Spawned workers need a few tenths of a second to start; this process would sit
            # idle until then, so it decodes the first chunk itself and the model starts sooner.
            if first is not None:
                yield from load_many(first, transform, known, settings.draft, limit, faces, settings.video)
            while pending:
                done = pool.result(pending.popleft())
                nxt = next(chunks, None)
                if nxt is not None:
                    pending.append(pool.submit(nxt))
                yield from done
        finally:
            pending.clear()


def batched(items: Iterable[T], size: int, first: int | None = None) -> Iterator[list[T]]:
    """Lists of `size` items (the last may be shorter); the first list holds `first` items if given.

    Not itertools.batched (Python 3.12; we support 3.10) nor more_itertools.chunked: neither
    has `first`, the short first batch that lets the model start on the first decoded chunk.
    """
    batch: list[T] = []
    limit = first or size
    for item in items:
        batch.append(item)
        if len(batch) == limit:
            yield batch
            batch, limit = [], size
    if batch:
        yield batch
