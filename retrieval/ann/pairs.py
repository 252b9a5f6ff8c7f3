"""Near-duplicate pairs: every pair of stored vectors closer than a threshold (retrieval/search/duplicates.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import faiss
import numpy as np

from retrieval.ann.chunks import Chunks
from retrieval.ann.settings import DEFAULT, AnnSettings

#: (a, b, score) arrays: pairs of ids and their inner product.
Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


def near_pairs(
    index: faiss.Index, chunks: Chunks, n: int, dim: int, threshold: float,
    advance: Callable[[int], None] | None = None, settings: AnnSettings = DEFAULT,
) -> Iterator[Pairs]:
    """(a, b, score) arrays of all pairs of stored vectors with inner product >= `threshold`, a < b.

    Each chunk of stored vectors is a batch of queries to a range search: the index's own
    when it is an inverted file or small (``settings.pairs_exact_limit``), otherwise a coarse
    inverted file that is filled chunk by chunk, each chunk searched right after it is added,
    so that every pair is met once, when its later member arrives (an exhaustive scan grows
    with the square of the count: docs/photo-library.md#near-duplicates). Scores are those of the index
    searched: approximate for 8-bit codes (callers re-score).
    """
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is None and n > settings.pairs_exact_limit:
        yield from _coarse_pairs(chunks, n, dim, threshold, advance, settings.pairs_nprobe)
        return
    params = None
    if ivf is not None:
        params = faiss.SearchParametersIVF()
        params.nprobe = min(ivf.nlist, max(ivf.nprobe, settings.pairs_nprobe))
    for ids, vectors in chunks():
        if not len(ids):
            continue
        lims, scores, found = index.range_search(np.ascontiguousarray(vectors, np.float32), threshold, params=params)
        rows = np.repeat(np.asarray(ids, np.int64), np.diff(lims).astype(np.int64))
        keep = rows < found
        yield rows[keep], found[keep], scores[keep]
        if advance is not None:
            advance(len(ids))


def _coarse_pairs(
    chunks: Chunks, n: int, dim: int, threshold: float, advance: Callable[[int], None] | None, nprobe: int
) -> Iterator[Pairs]:
    # The cells only partition the space (a near-duplicate lands in its original's cell or a
    # next one), so no k-means: the centroids are stored vectors drawn from the first chunk.
    # About 2 * sqrt(n) lists balance assigning vectors to cells against scanning the cells.
    nlist = max(1, int(2 * math.sqrt(n)))
    ivf, quantizer, params = None, None, faiss.SearchParametersIVF()
    for ids, vectors in chunks():
        if not len(ids):
            continue
        vectors = np.ascontiguousarray(vectors, np.float32)
        ids = np.asarray(ids, np.int64)
        if ivf is None:
            picks = np.random.default_rng(0).choice(len(vectors), min(nlist, len(vectors)), replace=False)
            quantizer = faiss.IndexFlatIP(dim)
            quantizer.add(vectors[np.sort(picks)])
            ivf = faiss.IndexIVFFlat(quantizer, dim, quantizer.ntotal, faiss.METRIC_INNER_PRODUCT)
            ivf.is_trained = True
            params.nprobe = min(quantizer.ntotal, nprobe)
        ivf.add_with_ids(vectors, ids)
        lims, scores, found = ivf.range_search(vectors, threshold, params=params)
        rows = np.repeat(ids, np.diff(lims).astype(np.int64))
        # Ids grow chunk by chunk: an earlier vector has the smaller id, so each pair once.
        keep = found < rows
        yield found[keep], rows[keep], scores[keep]
        if advance is not None:
            advance(len(ids))
