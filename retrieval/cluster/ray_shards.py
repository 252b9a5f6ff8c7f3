"""An on-disk index's shards built as Ray tasks (the middle step of :func:`retrieval.ann.ondisk.build`).

The driver trains the coarse quantizer, reads the vectors from its catalog in id order,
and merges the shards with FAISS's own merge, exactly as a one-process build does. Only
adding vectors to shards, the step that grows with the collection, runs on the cluster:

    driver    reads a shard's chunks from the catalog -> object store
    task      trained index + those chunks -> ondisk.build_shard (in its own temp folder)
              -> the shard file's bytes -> object store
    driver    writes the shard into the build's work folder; merges when all are in

How a task gets its vectors: through the object store, from the driver. A worker could
open the catalog file instead when it lies on a shared path, but (1) the rows being
published exist only inside the driver's uncommitted publishing transaction, which no
other connection sees, and (2) a driver that joins with ``ray://`` or keeps its index on a
local disk shares no path with the workers. Reading is the cheap side: the driver reads
vectors from SQLite several times faster than FAISS adds them on one thread
(docs/scaling.md#d-per-stage-cpu-cost-for-the-model-below), so a few tasks in flight keep
pace with one reader.
The shard comes back the same way, as bytes: 8-bit codes and ids, about a quarter of the
float32 vectors that went out.

A task whose worker or node dies is retried by Ray (its inputs are the driver's objects);
the shards are numbered by their place in id order, so the merged index is the same
whatever order the tasks finish in. A task that never returns (resources no live node
offers, a hung worker) would leave Ray waiting forever: when no shard finishes for the run's
``stall_seconds`` beyond what the shards in flight may take (:func:`_patience`), the build
ends in one line; the catalog's committed rows are kept and the same command builds the
index again.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray

from retrieval.ann import ondisk
from retrieval.errors import RetrievalError

log = logging.getLogger(__name__)

#: Shard tasks in flight at most (fewer on a smaller cluster): each holds one shard's float32
#: vectors in the object store (1.5 GB for a million 384-d vectors), and past a few the
#: driver's reading of the catalog is the limit anyway.
MAX_IN_FLIGHT = 4
#: Vectors a second a shard task adds at least, for the time it is allowed before a wait counts
#: as stalled: a tenth of the slowest rate measured here (docs/scaling.md#f-on-disk-shards-one-process-against-ray-tasks:
#: 200,000 vectors added in 38.3 s by Ray tasks on 2 loaded cores), so a big shard on a slow
#: node is never taken for a hung one; a million-row shard is allowed about 190 s more.
SLOWEST_ADD_RATE = 5_000.0


@ray.remote(num_cpus=1)
def build_shard_task(trained: np.ndarray, chunk_refs: list) -> np.ndarray:
    """:func:`retrieval.ann.ondisk.build_shard` on a worker: the shard file's bytes, from the trained index's bytes."""
    with tempfile.TemporaryDirectory(prefix="retrieval-shard-") as tmp:
        trained_path, out = Path(tmp) / "trained.faiss", Path(tmp) / "shard.faiss"
        trained.tofile(trained_path)
        # One chunk of the shard fetched at a time: the task holds no more than FAISS needs.
        ondisk.build_shard(trained_path, (ray.get(ref) for ref in chunk_refs), out)
        return np.fromfile(out, dtype=np.uint8)


def add_shards(
    trained: Path, parts: Iterator[Iterator[tuple[np.ndarray, np.ndarray]]], work: Path, n: int,
    stall_seconds: float = 120.0, task: Any = None,
) -> list[Path]:
    """:data:`retrieval.ann.ondisk.AddShards` on Ray: one task per shard, shard files written into `work`.

    Raises a one-line :class:`RetrievalError` when no shard finishes for `stall_seconds` (the
    run's ``RaySettings.stall_seconds``) beyond what the shards in flight may take. `task` is
    the remote function that builds a shard (:func:`build_shard_task`; tests give one that hangs).
    """
    task = task or build_shard_task
    trained_ref = ray.put(np.fromfile(trained, dtype=np.uint8))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    limit = max(1, min(MAX_IN_FLIGHT, cpus))
    pending: dict = {}  # task ref -> (shard number, its vectors' refs, vectors)
    shards: list[Path] = []
    done, started = 0, time.monotonic()

    def collect(ref) -> None:
        nonlocal done
        number, _, rows = pending.pop(ref)
        ray.get(ref).tofile(shards[number])
        done += rows
        rate = done / max(time.monotonic() - started, 1e-9)
        log.info("shard %d built on Ray: %d of %d vectors added, %.0f a second, about %.0f s left",
                 number, done, n, rate, (n - done) / rate)

    for number, part in enumerate(parts):
        chunk_refs, rows = [], 0
        for ids, vectors in part:  # the run is read from the catalog here, in id order
            chunk_refs.append(ray.put((ids, vectors)))
            rows += len(ids)
        shards.append(work / f"shard-{number}.faiss")
        # The chunk refs stay referenced until the task is collected, so a retried task finds its inputs.
        pending[task.remote(trained_ref, chunk_refs)] = (number, chunk_refs, rows)
        while len(pending) >= limit:
            collect(_next(pending, stall_seconds, done, n))
    while pending:
        collect(_next(pending, stall_seconds, done, n))
    return shards


def capacity() -> str:
    """The cluster's CPUs, all and free, as a stall's message quotes them; empty when the
    cluster cannot say (it may be what failed: the message goes out without it)."""
    try:
        return (f" (cluster CPUs: {ray.cluster_resources().get('CPU', 0):g}, "
                f"free: {ray.available_resources().get('CPU', 0):g})")
    except Exception:  # noqa: BLE001
        return ""


def _patience(pending: dict, stall_seconds: float) -> float:
    """Seconds to wait for the next shard: the stall limit, plus the time the biggest shard in
    flight may take to add at the slowest rate allowed (SLOWEST_ADD_RATE)."""
    biggest = max((rows for _, _, rows in pending.values()), default=0)
    return stall_seconds + biggest / SLOWEST_ADD_RATE


def _next(pending: dict, stall_seconds: float, done: int, n: int) -> Any:
    """The next shard task to finish, or the one line that ends a build in which none does."""
    waited = _patience(pending, stall_seconds)
    ready, _ = ray.wait(list(pending), num_returns=1, timeout=waited)
    if ready:
        return ready[0]
    for ref in pending:  # their workers may hold CPUs the next run needs
        ray.cancel(ref, force=True)
    raise RetrievalError(
        f"the Ray cluster built no index shard for {waited:.0f}s ({done} of {n} vectors added){capacity()}; "
        "the catalog's committed rows are kept and nothing was published: run the same command again, "
        "with the cluster's capacity back, to build the index"
    )
