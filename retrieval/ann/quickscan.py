"""An 8-bit copy of an exact index, kept in memory by long-lived searchers: a quarter of the bytes per query.

An exact search over 100,000 vectors of 384 floats reads 150 MB, and on this class of
machine that read is the whole cost (docs/serving-speed.md#what-a-warm-query-does-now). A
long-lived caller (the server, an opened :class:`retrieval.api.Index`) keeps the exact
index loaded (:mod:`retrieval.search.resident`) and, beside it, this copy: one byte per dimension
(FAISS's ``SQ8``), built in memory from the exact vectors the first time a loaded index is
searched again, so a one-shot ``retrieval search`` never pays for it. A query scans the
codes for ``RERANK`` times k candidates and ranks them by their exact float32 cosines, read
from the exact index itself; what comes back has the exact index's scores.

Recall of the top 10 against exact search is measured on real text queries of the
``default`` aligner by ``benchmarks/bench_server.py`` (docs/serving-speed.md gives it: the
copy loses nothing at the candidate count used). Nothing on disk changes: an index built before this
is served the same way, and the copy is rebuilt whenever the exact file is read again.

A small batch of queries scans the codes on one OpenMP thread: the server encodes the next
batch on the other core meanwhile. The codes' scan costs the same per query in any batch,
so a batch of ``AnnSettings.quick_batch_exact`` queries or more (the server's micro-batches under load) is
searched exactly instead, by FAISS's own matrix product (BLAS ``sgemm``) over the float32
vectors, which reads them once for the whole batch: exact results, and less CPU per query
from that size on (``benchmarks/bench_batch_scan.py`` compares the ways by batch size).
FAISS only takes the product past its ``distance_compute_blas_threshold``, so the search
lowers it for that call. (numpy's own product over the same memory was no way: a
memory-mapped FAISS file holds its vectors at an unaligned address, where numpy skips BLAS.)
"""

from __future__ import annotations

import logging
import time
from typing import cast

import faiss
import numpy as np

from retrieval.ann.searching import omp_threads, search
from retrieval.ann.settings import DEFAULT, AnnSettings

log = logging.getLogger(__name__)

#: Candidates per result taken from the codes, then ranked by exact cosine.
RERANK = 10
#: Past this many candidates per query (deep pages) the exact scan is used instead.
MAX_FETCH = 2_000
#: OpenMP threads (so BLAS threads) for that product: the server's encoder thread has the other core.
BATCH_THREADS = 1
#: Vectors encoded per step while building (bounds the temporary memory).
_CHUNK = 32_768


def eligible(index: faiss.Index, settings: AnnSettings = DEFAULT) -> bool:
    """Whether `index` is an exact inner-product index (``IDMap2,Flat``) big enough to be worth a copy
    (``settings.quick_min`` vectors)."""
    if not isinstance(index, faiss.IndexIDMap2) or index.ntotal < settings.quick_min:
        return False
    inner = faiss.downcast_index(index.index)
    return isinstance(inner, faiss.IndexFlat) and inner.metric_type == faiss.METRIC_INNER_PRODUCT


class QuickScan:
    """8-bit codes of an ``IDMap2,Flat`` index, searched first; exact cosines rank the candidates.

    >>> quick = QuickScan(exact)                    # doctest: +SKIP
    >>> scores, ids = quick.search(queries, 10)     # doctest: +SKIP
    """

    def __init__(self, exact: faiss.IndexIDMap2, settings: AnnSettings = DEFAULT):
        t = time.perf_counter()
        self.exact = exact
        self.batch_exact = settings.quick_batch_exact
        # Kept: the views below point into it. eligible() checked that it is an IndexFlat.
        self._flat = cast(faiss.IndexFlat, faiss.downcast_index(exact.index))
        n, d = self._flat.ntotal, self._flat.d
        self.vectors = faiss.rev_swig_ptr(self._flat.get_xb(), n * d).reshape(n, d)
        self.ids = faiss.vector_to_array(exact.id_map).astype(np.int64)
        self.codes = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        self.codes.train(self.vectors)  # per-dimension range: one pass
        for start in range(0, n, _CHUNK):
            self.codes.add(np.ascontiguousarray(self.vectors[start : start + _CHUNK]))
        log.debug("8-bit copy of %d vectors made in %.2f s", n, time.perf_counter() - t)

    @property
    def nbytes(self) -> int:
        return self.codes.ntotal * self.codes.code_size

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) as ``searching.search(exact, queries, k)`` gives them: exact cosines, -1 padding."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n = self.codes.ntotal
        k = min(k, n)
        fetch = min(k * RERANK, n)
        if k == 0 or fetch > MAX_FETCH:
            return search(self.exact, queries, k)
        if len(queries) >= self.batch_exact:
            return self.search_exact_batch(queries, k)
        with omp_threads(1):
            _, found = self.codes.search(queries, fetch)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for row, (query, positions) in enumerate(zip(queries, found)):
            positions = positions[positions >= 0]
            exact = self.vectors[positions] @ query
            order = np.argsort(-exact, kind="stable")[:k]
            scores[row, : len(order)] = exact[order]
            ids[row, : len(order)] = self.ids[positions[order]]
        return scores, ids

    def search_exact_batch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search of a batch by FAISS's matrix product: the float32 vectors read once for all queries."""
        threshold = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = 1  # process-wide; both of FAISS's ways are exact
        try:
            with omp_threads(BATCH_THREADS):
                return self.exact.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.exact.ntotal))
        finally:
            faiss.cvar.distance_compute_blas_threshold = threshold
