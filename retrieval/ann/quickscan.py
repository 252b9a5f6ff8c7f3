"""An 8-bit copy of an exact index, kept in memory by long-lived searchers: a quarter of the bytes per query.

An exact search over 100,000 vectors of 384 floats reads 150 MB, and on this class of
machine that read is the whole cost (about 7 ms quiet, 10-30 ms on a busy machine). A
long-lived caller (the server, an opened :class:`retrieval.api.Index`) keeps the exact
index loaded (:mod:`retrieval.search.resident`) and, beside it, this copy: one byte per dimension
(FAISS's ``SQ8``), built in memory from the exact vectors the first time a loaded index is
searched again, so a one-shot ``retrieval search`` never pays for it. A query scans the
codes for ``RERANK`` times k candidates and ranks them by their exact float32 cosines, read
from the exact index itself; what comes back has the exact index's scores.

Recall of the top 10 against exact search is measured on real text queries of the
``default`` aligner by ``scripts/bench_server.py`` (1.0 at 100,000 vectors with 10 x k
candidates; docs/serving-speed.md). Nothing on disk changes: an index built before this
is served the same way, and the copy is rebuilt whenever the exact file is read again.

A small batch of queries scans the codes on one OpenMP thread: the server encodes the next
batch on the other core meanwhile. The codes' scan costs the same per query in any batch,
so a batch of ``BATCH_EXACT`` queries or more (the server's micro-batches under load) is
searched exactly instead, by FAISS's own matrix product (BLAS ``sgemm``) over the float32
vectors, which reads them once for the whole batch: exact results, and less CPU per query
from that size on (``scripts/bench_batch_scan.py`` compares the ways by batch size).
FAISS only takes the product past its ``distance_compute_blas_threshold``, so the search
lowers it for that call. (numpy's own product over the same memory was no way: a
memory-mapped FAISS file holds its vectors at an unaligned address, where numpy skips BLAS.)
"""

from __future__ import annotations

import logging
import time

import faiss
import numpy as np

from retrieval.ann import index as faiss_index

log = logging.getLogger(__name__)

#: Below this many vectors an exact scan is a millisecond or two: no copy is made.
QUICK_MIN = 20_000
#: Candidates per result taken from the codes, then ranked by exact cosine.
RERANK = 10
#: Past this many candidates per query (deep pages) the exact scan is used instead.
MAX_FETCH = 2_000
#: From this many queries in one call, the batch is searched exactly by one BLAS product.
BATCH_EXACT = 16
#: OpenMP threads (so BLAS threads) for that product: the server's encoder thread has the other core.
BATCH_THREADS = 1
#: Vectors encoded per step while building (bounds the temporary memory).
_CHUNK = 32_768


def eligible(index: faiss.Index) -> bool:
    """Whether `index` is an exact inner-product index (``IDMap2,Flat``) big enough to be worth a copy."""
    if not isinstance(index, faiss.IndexIDMap2) or index.ntotal < QUICK_MIN:
        return False
    inner = faiss.downcast_index(index.index)
    return isinstance(inner, faiss.IndexFlat) and inner.metric_type == faiss.METRIC_INNER_PRODUCT


class QuickScan:
    """8-bit codes of an ``IDMap2,Flat`` index, searched first; exact cosines rank the candidates.

    >>> quick = QuickScan(exact)                    # doctest: +SKIP
    >>> scores, ids = quick.search(queries, 10)     # doctest: +SKIP
    """

    def __init__(self, exact: faiss.IndexIDMap2):
        t = time.perf_counter()
        self.exact = exact
        self._flat = faiss.downcast_index(exact.index)  # kept: the views below point into it
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
        """(scores, ids) as ``faiss_index.search(exact, queries, k)`` gives them: exact cosines, -1 padding."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n = self.codes.ntotal
        k = min(k, n)
        fetch = min(k * RERANK, n)
        if k == 0 or fetch > MAX_FETCH:
            return faiss_index.search(self.exact, queries, k)
        if len(queries) >= BATCH_EXACT:
            return self.search_exact_batch(queries, k)
        with faiss_index.omp_threads(1):
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
            with faiss_index.omp_threads(BATCH_THREADS):
                return self.exact.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.exact.ntotal))
        finally:
            faiss.cvar.distance_compute_blas_threshold = threshold
