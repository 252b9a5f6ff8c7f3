"""Exact top-k by inner product, written once for the engine.

Three shapes of the same question:

- :func:`top_k`: scores already computed for a set of ids (a filtered search over a few
  thousand vectors, retrieval/search/filters/); best first, equal scores by id;
- :class:`TopK`: queries against (ids, vectors) chunks that stream past once (the on-disk
  build finds its tuning truth during the adding pass);
- :func:`exact_top_k`: queries against a source of chunks (:data:`Chunks`), the truth that
  approximate indexes are tuned and measured against.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import faiss
import numpy as np

from retrieval.ann.chunks import Chunks


def inner_products(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(queries, vectors) inner products on this thread. numpy's matmul hands a product this
    small to a BLAS thread team, which on a busy machine waits for a core (docs/search.md)."""
    return np.einsum("ij,kj->ik", queries, vectors)


def top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of (queries, len(ids)) `scores` as (scores, ids), best first, equal scores by
    ascending id; k is cut to len(ids), so nothing is padded.

    numpy, not FAISS's heap (``faiss.ResultHeap``): that one keeps an arbitrary few of the
    scores tied at the k-th place and orders ties by descending id, so a filtered result would
    depend on it; it was also slower on scores already computed.
    """
    k = min(k, len(ids))
    out_scores = np.full((len(scores), k), -np.inf, np.float32)
    out = np.full((len(scores), k), -1, np.int64)
    if k == 0:
        return out_scores, out
    for row, s in enumerate(scores):
        # A partition finds the k-th score; everything tying with it stays in, then a full order.
        part = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
        keep = np.flatnonzero(s >= s[part].min())
        top = keep[np.lexsort((ids[keep], -s[keep]))][:k]
        out_scores[row], out[row] = s[top], ids[top]
    return out_scores, out


class TopK:
    """The exact top-k ids of `queries` over (ids, vectors) chunks that stream past it."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries, self.k = np.ascontiguousarray(queries, np.float32), k
        self.scores = np.full((len(queries), 0), -np.inf, np.float32)
        self.ids = np.zeros((len(queries), 0), np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not len(ids):
            return
        # FAISS's own exact search of the chunk (blocked BLAS products and a heap per query): no
        # (queries, rows) matrix in memory, and faster than numpy's product plus argpartition.
        scores, top = faiss.knn(self.queries, np.ascontiguousarray(vectors, np.float32), min(self.k, len(ids)),
                                metric=faiss.METRIC_INNER_PRODUCT)
        both = np.concatenate([self.scores, scores], axis=1)
        both_ids = np.concatenate([self.ids, np.asarray(ids, np.int64)[top]], axis=1)
        keep = np.argsort(-both, axis=1, kind="stable")[:, : self.k]
        self.scores, self.ids = np.take_along_axis(both, keep, 1), np.take_along_axis(both_ids, keep, 1)

    def watch(self, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Pass `chunks` through unchanged, adding each on its way."""
        for ids, vectors in chunks:
            self.add(ids, vectors)
            yield ids, vectors


def exact_top_k(chunks: Chunks, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of the exact top-k by inner product over all chunks, merged chunk by chunk."""
    best = TopK(queries, k)
    for ids, vectors in chunks():
        best.add(ids, vectors)
    return best.ids
