"""Searching an index: plain, re-ranked with exact vectors, restricted to some ids, and the
index's own exact vectors read back.

Ids inside an index are catalog ids (``add_with_ids``), never row positions. Vectors are
L2-normalized, so inner product is cosine similarity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import faiss
import numpy as np

from retrieval.ann.building import reranks
from retrieval.ann.settings import DEFAULT, AnnSettings

#: Fewer queries than this are searched on one thread (see :func:`search`).
SMALL_BATCH = 8
#: Vectors above which an inverted file gets no id-to-list table (see :func:`stored_vectors`).
DIRECT_MAP_LIMIT = 4_000_000


def search(
    index: faiss.Index, queries: np.ndarray, k: int, params: faiss.SearchParameters | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the k best matches for each query; ids -1 pad short results.

    `params` (:func:`subset_params`) restricts the search to some ids and widens an IVF probe.
    """
    if index.ntotal == 0:
        n = len(queries)
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    k = min(k, index.ntotal)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if len(queries) >= SMALL_BATCH:
        return index.search(queries, k, params=params)
    # One query is a memory-bound scan: a second OpenMP thread adds little, and on a busy
    # machine its team waits for a core, many times slower than one thread
    # (docs/search.md#search-speed; benchmarks/bench_search.py compares both).
    with omp_threads(1):
        return index.search(queries, k, params=params)


@contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """FAISS's OpenMP team limited to `n` threads inside the block, the previous size restored after."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def search_ranked(
    index: faiss.Index, queries: np.ndarray, k: int, *, factory: str | None,
    lookup: Callable[[list[int]], dict[int, np.ndarray]], params: faiss.SearchParameters | None = None,
    rerank: int | None = None, settings: AnnSettings = DEFAULT,
) -> tuple[np.ndarray, np.ndarray]:
    """Search as the engine does: an index of 8-bit codes gives candidates, exact vectors rank them.

    `lookup` maps ids to their float32 vectors (the catalog's, in the engine). `rerank`:
    candidates per result, as tuned at build time (the catalog's ``index_rerank``; None:
    ``settings.rerank_factor``). Scores of re-ranked results are exact cosines.
    """
    if not reranks(factory):
        return search(index, queries, k, params)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, candidates = search(index, queries, k * (rerank or settings.rerank_factor), params)
    vectors = lookup(sorted({int(i) for i in candidates.ravel() if i >= 0}))
    k = min(k, candidates.shape[1])
    scores = np.full((len(queries), k), -np.inf, np.float32)
    ids = np.full((len(queries), k), -1, np.int64)
    for row, (query, found) in enumerate(zip(queries, candidates)):
        known = [int(i) for i in found if i in vectors]
        if not known:
            continue
        exact = np.stack([vectors[i] for i in known]) @ query
        order = np.argsort(-exact, kind="stable")[:k]
        scores[row, : len(order)] = exact[order]
        ids[row, : len(order)] = np.array(known, np.int64)[order]
    return scores, ids


def subset_params(index: faiss.Index, allowed: np.ndarray | None, share: float = 1.0) -> faiss.SearchParameters | None:
    """Search parameters for a filtered search (see retrieval/search/filters/).

    `allowed`: the only ids a search may return (None: any). `share`: the part of the
    collection that passes the filter; an IVF index probes 1/share times more lists, since
    the nearest passing vectors lie that much farther out than the nearest of all.
    The parameters keep the arrays they read alive (FAISS holds bare pointers).
    """
    selector, keep = (None, None) if allowed is None else _selector(np.asarray(allowed, np.int64))
    return _params(index, selector, keep, share)


def mask_params(index: faiss.Index, mask: np.ndarray, share: float) -> faiss.SearchParameters | None:
    """As :func:`subset_params`, the allowed ids given as a bool array indexed by id: its bitmap
    is packed in one pass, no id list is made."""
    bitmap = np.packbits(np.asarray(mask, bool), bitorder="little")
    return _params(index, faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap, share)


def _params(index: faiss.Index, selector: Any, keep: np.ndarray | None, share: float) -> faiss.SearchParameters | None:
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is None and selector is None:
        return None
    # Any: `keep` below is an attribute of the Python object, unknown to FAISS's type hints.
    params: Any = faiss.SearchParameters() if ivf is None else faiss.SearchParametersIVF()
    if ivf is not None:
        params.nprobe = _probed(ivf, share)
    if selector is not None:
        params.sel = selector
    params.keep = (selector, keep)  # a Python attribute: lives as long as the parameters
    return params


def _selector(ids: np.ndarray) -> tuple[faiss.IDSelector, np.ndarray]:
    # A bitmap over the id range costs one bit test per vector scanned; a hash set (Batch)
    # costs a hash lookup but no memory proportional to the largest id. Ids are dense in
    # the engine (handed out in order, never reused), so the bitmap is the usual choice.
    top = int(ids.max()) + 1 if len(ids) else 1
    if top <= 64 * max(len(ids), 1):
        bits = np.zeros(top, bool)
        bits[ids] = True
        bitmap = np.packbits(bits, bitorder="little")
        return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap  # its size is in bytes
    ids = np.ascontiguousarray(ids)
    return faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids)), ids


def probed_lists(index: faiss.Index, share: float) -> int | None:
    """Lists a search restricted to `share` of an inverted file probes (as :func:`subset_params`
    sets them); None when `index` is not an inverted file."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    return _probed(ivf, share)


def _probed(ivf: faiss.IndexIVF, share: float) -> int:
    return min(ivf.nlist, max(ivf.nprobe, math.ceil(ivf.nprobe / max(share, 1e-9))))


def inverted(index: faiss.Index) -> bool:
    """Whether `index` is an inverted file (searches probe some of its lists)."""
    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return True


def holds_vectors(index: faiss.Index) -> bool:
    """Whether :func:`stored_vectors` reads vectors from this index (not None)."""
    if isinstance(index, faiss.IndexIDMap2):
        return isinstance(faiss.downcast_index(index.index), faiss.IndexFlat)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat) and ivf.ntotal <= DIRECT_MAP_LIMIT


def stored_vectors(
    index: faiss.Index, ids: np.ndarray, lock: AbstractContextManager[Any] | None = None
) -> np.ndarray | None:
    """The exact vectors of `ids` from the index's own float32 codes (an exact ``IDMap2,Flat``
    or an ``IVF...,Flat``), in the order given; None for other index types (8-bit codes).

    An inverted file gets an id-to-list hash table the first time (about 40 bytes an id),
    kept with the index object; above ``DIRECT_MAP_LIMIT`` vectors it would take hundreds of
    MB, and None is returned (the caller reads the catalog's vectors). `lock` is held while
    the table is looked for and built: a caller whose index objects other threads search too
    passes the lock of what shares them (a searcher's kept indexes, retrieval/search/resident.py).
    """
    ids = np.ascontiguousarray(ids, np.int64)
    if not holds_vectors(index):
        return None
    if not isinstance(index, faiss.IndexIDMap2):
        ivf = faiss.extract_index_ivf(index)
        with lock if lock is not None else nullcontext():
            # DirectMap is missing from FAISS's type hints, not from FAISS.
            if ivf.direct_map.type == faiss.DirectMap.NoMap:  # type: ignore[attr-defined]
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
    if not len(ids):
        return np.zeros((0, index.d), np.float32)
    # FAISS copies more than 1,000 vectors on an OpenMP team: on a busy machine it waits for cores.
    with omp_threads(1):
        return index.reconstruct_batch(ids)
