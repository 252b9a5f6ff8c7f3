"""FAISS indexes: the only module that imports faiss.

Indexes are derived data: the catalog holds the vectors, these files only make
search fast. Ids inside an index are catalog ids (``add_with_ids``), never row
positions. Vectors are L2-normalized, so inner product is cosine similarity.

The index type follows the collection size: exact (``IDMap2,Flat``) up to
``EXACT_LIMIT`` vectors, an inverted file above it whose ``nprobe`` is raised until
recall@10 against exact search reaches ``TARGET_RECALL`` on a sample of the data.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

# Below this many vectors exact search answers a query in a few milliseconds on this
# class of machine (see scripts/bench_search.py), so approximation buys nothing.
EXACT_LIMIT = 200_000
TARGET_RECALL = 0.99
#: Fewer queries than this are searched on one thread (see :func:`search`).
SMALL_BATCH = 8


@dataclass
class IndexInfo:
    factory: str
    ntotal: int
    nprobe: int | None = None
    recall_at_10: float | None = None


def factory_for(n: int) -> str:
    if n <= EXACT_LIMIT:
        return "IDMap2,Flat"
    nlist = int(4 * math.sqrt(n))
    return f"IVF{nlist},Flat"


def build(ids: np.ndarray, vectors: np.ndarray, factory: str | None = None) -> tuple[faiss.Index, IndexInfo]:
    """Build an index over `vectors` with catalog `ids` (exact or IVF by size)."""
    n, dim = vectors.shape if len(vectors) else (0, vectors.shape[1])
    factory = factory or factory_for(n)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    info = IndexInfo(factory=factory, ntotal=n)
    if not index.is_trained:
        train = vectors
        if n > 100_000:
            rng = np.random.default_rng(0)
            train = vectors[rng.choice(n, 100_000, replace=False)]
        log.info("training %s on %d vectors", factory, len(train))
        index.train(train)
    if n:
        index.add_with_ids(vectors, ids.astype(np.int64))
    if isinstance(index, faiss.IndexIVF):
        info.nprobe, info.recall_at_10 = tune_nprobe(index, ids, vectors)
    return index, info


def tune_nprobe(
    index: faiss.IndexIVF, ids: np.ndarray, vectors: np.ndarray, n_queries: int = 500
) -> tuple[int, float]:
    """Smallest power-of-two nprobe whose recall@10 vs exact search reaches the target."""
    rng = np.random.default_rng(1)
    sample = rng.choice(len(vectors), min(n_queries, len(vectors)), replace=False)
    # Perturbed copies of stored vectors stand in for queries near the data.
    queries = vectors[sample] + rng.normal(0, 0.05, (len(sample), vectors.shape[1])).astype(np.float32)
    faiss.normalize_L2(queries)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, positions = exact.search(queries, 10)
    truth = ids[positions]
    nprobe, recall = 1, 0.0
    while nprobe <= index.nlist:
        index.nprobe = nprobe
        _, got = index.search(queries, 10)
        recall = recall_at_k(truth, got)
        if recall >= TARGET_RECALL:
            break
        nprobe *= 2
    index.nprobe = min(nprobe, index.nlist)
    return index.nprobe, recall


def recall_at_k(truth: np.ndarray, got: np.ndarray) -> float:
    """Share of the true top-k neighbours found in the approximate top-k."""
    hits = sum(len(set(t) & set(g)) for t, g in zip(truth.tolist(), got.tolist()))
    return hits / truth.size


def update(index: faiss.Index, remove: np.ndarray, add_ids: np.ndarray, add_vectors: np.ndarray) -> None:
    if len(remove):
        index.remove_ids(np.asarray(remove, dtype=np.int64))
    if len(add_ids):
        index.add_with_ids(add_vectors, np.asarray(add_ids, dtype=np.int64))


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the k best matches for each query; ids -1 pad short results."""
    if index.ntotal == 0:
        n = len(queries)
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    k = min(k, index.ntotal)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if len(queries) >= SMALL_BATCH:
        return index.search(queries, k)
    # One query is a memory-bound scan: a second OpenMP thread adds little, and on a busy
    # machine its team waits for a core (100k vectors on 2 loaded cores: 80 ms with 2
    # threads, 19 ms with 1; scripts/bench_search.py compares both).
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(queries, k)
    finally:
        faiss.omp_set_num_threads(threads)


def write(index: faiss.Index, path: Path) -> None:
    """Write atomically: readers see the old file or the new one, never half of one."""
    tmp = Path(f"{path}.tmp-{os.getpid()}")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read(path: Path, mmap: bool = False) -> faiss.Index:
    """Load an index; with `mmap`, map it read-only instead (near-instant, shared page cache).

    IO_FLAG_MMAP_IFC maps flat code arrays, IO_FLAG_MMAP maps inverted lists; FAISS refuses
    the first for IVF files, so an IVF file is retried with the second alone.
    """
    if not mmap:
        return faiss.read_index(str(path))
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)


def describe(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return type(inner).__name__
