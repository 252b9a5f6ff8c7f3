"""Building and updating an in-memory index: its type by size and memory, training, adding, tuning.

The index type follows the collection size and the memory it may take: exact
(``IDMap2,Flat``) up to ``settings.exact_limit`` vectors, an inverted file above it, tuned
to the recall target (:mod:`retrieval.ann.tuning`). When float32 vectors would not fit the
memory limit, the index keeps 8-bit codes instead (``SQ8``, a quarter of the memory), and
searches re-score candidates with the exact vectors, which stay on disk in the catalog.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable

import faiss
import numpy as np

from retrieval.ann.chunks import Chunks, gather
from retrieval.ann.settings import DEFAULT, AnnSettings
from retrieval.ann.tuning import IndexInfo, TextEncoder, probe_truth, tune

log = logging.getLogger(__name__)

#: Vectors an IVF quantizer is trained on (k-means needs far fewer than a million).
TRAIN_SAMPLE = 100_000
#: Training points per inverted list, at least. FAISS warns below 39, but with nprobe tuned
#: to the recall target afterwards 20 is plenty (recall@10 0.995 at 1M with 25); the sample grows past
#: TRAIN_SAMPLE only where 4*sqrt(n) lists need it (above about 1.5M vectors).
MIN_POINTS_PER_LIST = 20


def factory_for(n: int, dim: int | None = None, memory_limit: int | None = None, settings: AnnSettings = DEFAULT) -> str:
    """The index type for `n` vectors: exact or IVF by size, 8-bit codes when float32 would exceed `memory_limit` bytes."""
    codes = "SQ8" if dim and memory_limit and n * dim * 4 > memory_limit else "Flat"
    if n <= settings.exact_limit:
        return f"IDMap2,{codes}"
    return f"IVF{int(4 * math.sqrt(n))},{codes}"


def reranks(factory: str | None) -> bool:
    """Whether searches of this index type re-score their candidates with exact vectors (compressed codes)."""
    return factory is not None and (",SQ" in factory or ",PQ" in factory)


def memory_limit_default() -> int:
    """A quarter of this machine's memory: room for the model, decoding and the OS beside the index."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def build(
    ids: np.ndarray, vectors: np.ndarray, factory: str | None = None, encode_texts: TextEncoder | None = None,
    settings: AnnSettings = DEFAULT,
) -> tuple[faiss.Index, IndexInfo]:
    """Build an index over `vectors` with catalog `ids` (exact or IVF by size)."""
    dim = vectors.shape[1]
    return build_streamed(lambda: [(ids, vectors)], len(vectors), dim, factory, encode_texts, settings)


def build_streamed(
    chunks: Chunks, n: int, dim: int, factory: str | None = None, encode_texts: TextEncoder | None = None,
    settings: AnnSettings = DEFAULT,
) -> tuple[faiss.Index, IndexInfo]:
    """Build an index over `n` vectors that arrive in chunks, never all in memory at once.

    Passes: a training sample (IVF only), adding, and tuning ``nprobe`` and the re-scoring
    width (IVF or 8-bit codes). `encode_texts`: the aligner's, so that the far tuning queries
    are real text (:mod:`retrieval.ann.tuning_queries`); without it a model-free stand-in takes
    their place. Peak memory is the index itself plus one chunk and the samples.
    """
    factory = factory or factory_for(n, settings=settings)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    info = IndexInfo(factory=factory, ntotal=n)
    if not index.is_trained:
        rng = np.random.default_rng(0)
        sample = TRAIN_SAMPLE
        if isinstance(index, faiss.IndexIVF):
            sample = max(sample, MIN_POINTS_PER_LIST * index.nlist)
            index.cp.min_points_per_centroid = MIN_POINTS_PER_LIST
        picks = np.arange(n) if n <= sample else rng.choice(n, sample, replace=False)
        _, train = gather(chunks, picks, dim)
        log.info("training %s on %d vectors", factory, len(train))
        index.train(train)
    for ids, vectors in chunks():
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))
    if n and (isinstance(index, faiss.IndexIVF) or reranks(factory)):
        queries, truths = probe_truth(chunks, n, dim, encode_texts)
        tune(index, queries, truths, info, rerank=reranks(factory), settings=settings)
    return index, info


def update(index: faiss.Index, remove: np.ndarray, adds: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
    """Remove ids, then add (ids, vectors) chunks, in place."""
    if len(remove):
        # FAISS's type hints know only its IDSelector form; its Python wrapper takes an id array too.
        index.remove_ids(np.asarray(remove, dtype=np.int64))  # type: ignore[arg-type]
    for ids, vectors in adds:
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, dtype=np.int64))
