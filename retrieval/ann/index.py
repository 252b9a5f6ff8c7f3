"""FAISS indexes: the only module that imports faiss.

Indexes are derived data: the catalog holds the vectors, these files only make
search fast. Ids inside an index are catalog ids (``add_with_ids``), never row
positions. Vectors are L2-normalized, so inner product is cosine similarity.

The index type follows the collection size and the memory it may take: exact
(``IDMap2,Flat``) up to ``EXACT_LIMIT`` vectors, an inverted file above it whose ``nprobe``
is raised until recall@10 against exact search reaches ``TARGET_RECALL`` on the queries users
send (:mod:`retrieval.ann.probes`: image-like queries near the data and text queries far from
it, each set on its own). When float32 vectors would not fit the memory limit, the index
keeps 8-bit codes instead (``SQ8``, a quarter of the memory), and searches re-score
``rerank`` times k candidates (at least ``RERANK_FACTOR``; tuned with ``nprobe``) with the
exact vectors, which stay on disk in the catalog.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from retrieval.ann import probes as tuning_queries

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
    #: The lowest recall@10 against exact search of the query sets tuned on (see `recall_by_queries`).
    recall_at_10: float | None = None
    #: Candidates per result that searches re-score exactly (8-bit codes only).
    rerank: int | None = None
    #: Recall@10 of each query set at the chosen settings: {"near": ..., "far": ...}.
    recall_by_queries: dict | None = None
    #: What the recall was measured on, in words (recorded in the catalog, shown by `retrieval info`).
    tuned_on: str | None = None


#: Candidates fetched per result from an index of 8-bit codes, then re-scored exactly: the
#: least, and the width of indexes built before it was tuned. The build's tuning may choose
#: a wider one from RERANK_CHOICES (IndexInfo.rerank, stored in the catalog as index_rerank).
RERANK_FACTOR = 4
RERANK_CHOICES = (4, 8, 16, 32)
#: What re-scoring one candidate costs, in list entries scanned: a catalog lookup of a float32
#: vector took about 17 us at 1M (0.7 ms for 40), a scan of one 8-bit code about 60 ns (all
#: 1M codes in 59.6 ms; docs/search.md). The tuning minimizes nprobe * list size + this * candidates.
LOOKUP_COST = 300


def factory_for(n: int, dim: int | None = None, memory_limit: int | None = None) -> str:
    """The index type for `n` vectors: exact or IVF by size, 8-bit codes when float32 would exceed `memory_limit` bytes."""
    codes = "SQ8" if dim and memory_limit and n * dim * 4 > memory_limit else "Flat"
    if n <= EXACT_LIMIT:
        return f"IDMap2,{codes}"
    return f"IVF{int(4 * math.sqrt(n))},{codes}"


def reranks(factory: str | None) -> bool:
    """Whether searches of this index type re-score their candidates with exact vectors (compressed codes)."""
    return bool(factory) and (",SQ" in factory or ",PQ" in factory)


def memory_limit_default() -> int:
    """A quarter of this machine's memory: room for the model, decoding and the OS beside the index."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


#: A source of (ids, vectors) chunks; called once per pass over the collection.
Chunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]

#: Vectors an IVF quantizer is trained on (k-means needs far fewer than a million).
TRAIN_SAMPLE = 100_000
#: Training points per inverted list, at least. FAISS warns below 39, but with nprobe tuned
#: to the recall target afterwards 20 is plenty (recall@10 0.995 at 1M with 25); the sample
#: grows past TRAIN_SAMPLE only where 4*sqrt(n) lists need it (above about 1.5M vectors).
MIN_POINTS_PER_LIST = 20


#: A text encoder (texts -> normalized vectors), the aligner's: far tuning queries are real text.
TextEncoder = Callable[[list[str]], np.ndarray]


def build(
    ids: np.ndarray, vectors: np.ndarray, factory: str | None = None, encode_texts: TextEncoder | None = None
) -> tuple[faiss.Index, IndexInfo]:
    """Build an index over `vectors` with catalog `ids` (exact or IVF by size)."""
    dim = vectors.shape[1]
    return build_streamed(lambda: [(ids, vectors)], len(vectors), dim, factory, encode_texts)


def build_streamed(
    chunks: Chunks, n: int, dim: int, factory: str | None = None, encode_texts: TextEncoder | None = None
) -> tuple[faiss.Index, IndexInfo]:
    """Build an index over `n` vectors that arrive in chunks, never all in memory at once.

    Passes: a training sample (IVF only), adding, and tuning ``nprobe`` and the re-scoring
    width (IVF or 8-bit codes). `encode_texts`: the aligner's, so that the far tuning queries
    are real text (:mod:`retrieval.ann.probes`); without it a model-free stand-in takes their
    place. Peak memory is the index itself plus one chunk and the samples.
    """
    factory = factory or factory_for(n)
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
        tune(index, queries, truths, info, rerank=reranks(factory))
    return index, info


def gather(chunks: Chunks, positions: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The ids and vectors at `positions` (row numbers over all chunks), in the order given."""
    out_ids = np.zeros(len(positions), np.int64)
    out = np.zeros((len(positions), dim), np.float32)
    order = np.argsort(positions, kind="stable")
    sorted_pos = positions[order]
    offset = 0
    for ids, vectors in chunks():
        lo, hi = np.searchsorted(sorted_pos, [offset, offset + len(ids)])
        where = order[lo:hi]
        out_ids[where] = ids[sorted_pos[lo:hi] - offset]
        out[where] = vectors[sorted_pos[lo:hi] - offset]
        offset += len(ids)
    return out_ids, out


def probe_truth(
    chunks: Chunks, n: int, dim: int, encode_texts: TextEncoder | None = None
) -> tuple[tuning_queries.Probes, dict[str, np.ndarray]]:
    """The tuning queries (:func:`retrieval.ann.probes.make`) and their exact top 10: two passes."""
    picks = np.random.default_rng(1).choice(n, min(tuning_queries.NEAR_COUNT, n), replace=False)
    _, sample = gather(chunks, picks, dim)
    queries = tuning_queries.make(sample, encode_texts)
    return queries, split_truth(queries, exact_top_k(chunks, np.concatenate(list(queries.sets.values())), min(10, n)))


def split_truth(queries: tuning_queries.Probes, truth: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of `truth` (one per query, sets in order) split by query set."""
    out, start = {}, 0
    for name, q in queries.sets.items():
        out[name], start = truth[start : start + len(q)], start + len(q)
    return out


def tune(
    index: faiss.Index, queries: tuning_queries.Probes, truths: dict[str, np.ndarray], info: IndexInfo,
    rerank: bool = False,
) -> IndexInfo:
    """Set ``nprobe`` (and, with `rerank`, the re-scoring width) so that every query set reaches the target.

    Each set (near, far) must reach recall@10 >= TARGET_RECALL against exact search on its
    own (image-to-image queries need few lists, text queries many), plus two standard errors
    of that estimate (0.0036 for 300 queries): the recall is measured on a sample, and other
    queries of the kind must reach the target too. With `rerank`, recall
    counts the true top 10 among the width x 10 candidates that re-scoring sees, and the
    cheapest (nprobe, width) that reaches the target wins: nprobe x list size entries scanned
    plus LOOKUP_COST per candidate re-scored. Powers of two, up to every list (and the widest
    width) when the target cannot be met. Fills and returns `info`.
    """
    k = next(iter(truths.values())).shape[1]
    n = index.ntotal
    widths = RERANK_CHOICES if rerank else (1,)
    info.tuned_on = queries.described()
    if not isinstance(index, faiss.IndexIVF):  # an exact scan of 8-bit codes: no nprobe, least width
        info.rerank = widths[0] if rerank else None
        return _measured(index, queries, truths, info, k, widths[0])
    # An HNSW coarse quantizer returns at most efSearch lists, whatever nprobe asks: widen it
    # with nprobe, or the loop probes no more lists than efSearch and never reaches the target.
    hnsw = getattr(faiss.downcast_index(index.quantizer), "hnsw", None)
    base_ef = hnsw.efSearch if hnsw is not None else 0
    per_list = n / index.nlist
    goal = {name: _with_margin(truth.size) for name, truth in truths.items()}
    reached: dict[tuple[str, int], int] = {}  # (set, width) -> least nprobe that reaches the target
    best: tuple[float, int, int] | None = None  # (cost, nprobe, width)
    steps = [2**i for i in range(int(math.log2(index.nlist)) + 1) if 2**i < index.nlist] + [index.nlist]
    for nprobe in steps:
        if best is not None and (best[2] == widths[0] or nprobe * per_list >= best[0]):
            break  # nothing cheaper can follow
        _set_nprobe(index, hnsw, base_ef, nprobe)
        for name, q in queries.sets.items():
            if all((name, w) in reached for w in widths):
                continue  # more lists only find more
            got = index.search(q, min(k * widths[-1], n))[1]
            for w in widths:
                if (name, w) not in reached and recall_at_k(truths[name], got[:, : k * w]) >= goal[name]:
                    reached[name, w] = nprobe
        for w in widths:
            if all((name, w) in reached for name in queries.sets):
                need = max(reached[name, w] for name in queries.sets)
                cost = need * per_list + (LOOKUP_COST * w * k if rerank else 0)
                if best is None or cost < best[0]:
                    best = (cost, need, w)
    nprobe, width = (best[1], best[2]) if best is not None else (index.nlist, widths[-1])
    _set_nprobe(index, hnsw, base_ef, nprobe)
    info.nprobe, info.rerank = nprobe, (width if rerank else None)
    return _measured(index, queries, truths, info, k, width)


def _with_margin(neighbours: int) -> float:
    """TARGET_RECALL plus two standard errors of a recall measured over `neighbours` true neighbours."""
    return min(1.0, TARGET_RECALL + 2 * math.sqrt(TARGET_RECALL * (1 - TARGET_RECALL) / max(neighbours, 1)))


def _set_nprobe(index: faiss.IndexIVF, hnsw, base_ef: int, nprobe: int) -> None:
    index.nprobe = nprobe
    if hnsw is not None:
        hnsw.efSearch = max(base_ef, nprobe)


def _measured(index, queries: tuning_queries.Probes, truths: dict, info: IndexInfo, k: int, width: int) -> IndexInfo:
    fetch = min(k * width, index.ntotal)
    info.recall_by_queries = {
        name: round(recall_at_k(truths[name], index.search(q, fetch)[1]), 4) for name, q in queries.sets.items()
    }
    info.recall_at_10 = min(info.recall_by_queries.values())
    log.info("tuned on %s: nprobe %s, %s candidates per result, recall@10 %s", info.tuned_on, info.nprobe,
             (info.rerank or 1) * k, info.recall_by_queries)
    return info


def exact_top_k(chunks: Chunks, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of the exact top-k by inner product over all chunks, merged chunk by chunk."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for ids, vectors in chunks():
        if not len(ids):
            continue
        flat = faiss.IndexFlatIP(queries.shape[1])
        flat.add(np.ascontiguousarray(vectors, np.float32))
        scores, positions = flat.search(queries, min(k, len(ids)))
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_ids = np.concatenate([best_ids, np.asarray(ids, np.int64)[positions]], axis=1)
        keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
        best_ids = np.take_along_axis(best_ids, keep, axis=1)
    return best_ids


def recall_at_k(truth: np.ndarray, got: np.ndarray) -> float:
    """Share of the true top-k neighbours found in the approximate results (any width)."""
    hits = sum(len(set(t) & set(g)) for t, g in zip(truth.tolist(), got.tolist()))
    return hits / truth.size


def update(index: faiss.Index, remove: np.ndarray, adds: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
    """Remove ids, then add (ids, vectors) chunks, in place."""
    if len(remove):
        index.remove_ids(np.asarray(remove, dtype=np.int64))
    for ids, vectors in adds:
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, dtype=np.int64))


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
    # machine its team waits for a core (100k vectors on 2 loaded cores: 80 ms with 2
    # threads, 19 ms with 1; scripts/bench_search.py compares both).
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
    rerank: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Search as the engine does: an index of 8-bit codes gives candidates, exact vectors rank them.

    `lookup` maps ids to their float32 vectors (the catalog's, in the engine). `rerank`:
    candidates per result, as tuned at build time (the catalog's ``index_rerank``; None:
    RERANK_FACTOR). Scores of re-ranked results are exact cosines.
    """
    if not reranks(factory):
        return search(index, queries, k, params)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, candidates = search(index, queries, k * (rerank or RERANK_FACTOR), params)
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
    """Search parameters for a filtered search (see retrieval/search/filters.py).

    `allowed`: the only ids a search may return (None: any). `share`: the part of the
    collection that passes the filter; an IVF index probes 1/share times more lists, since
    the nearest passing vectors lie that much farther out than the nearest of all.
    The parameters keep the arrays they read alive (FAISS holds bare pointers).
    """
    selector, keep = (None, None) if allowed is None else _selector(np.asarray(allowed, np.int64))
    return _params(index, selector, keep, share)


def mask_params(index: faiss.Index, mask: np.ndarray, share: float) -> faiss.SearchParameters:
    """As :func:`subset_params`, the allowed ids given as a bool array indexed by id: its bitmap
    is packed in one pass, no id list is made."""
    bitmap = np.packbits(np.asarray(mask, bool), bitorder="little")
    return _params(index, faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap, share)


def _params(index: faiss.Index, selector, keep, share: float) -> faiss.SearchParameters | None:
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        params = faiss.SearchParametersIVF()
        params.nprobe = probed_lists(index, share)
    elif selector is None:
        return None
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    params.keep = (selector, keep)  # a Python attribute: lives as long as the parameters
    return params


_direct_map_lock = threading.Lock()
#: Vectors above which an inverted file gets no id-to-list table (see :func:`stored_vectors`).
DIRECT_MAP_LIMIT = 4_000_000


def holds_vectors(index: faiss.Index) -> bool:
    """Whether :func:`stored_vectors` reads vectors from this index (not None)."""
    if isinstance(index, faiss.IndexIDMap2):
        return isinstance(faiss.downcast_index(index.index), faiss.IndexFlat)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat) and ivf.ntotal <= DIRECT_MAP_LIMIT


def stored_vectors(index: faiss.Index, ids: np.ndarray) -> np.ndarray | None:
    """The exact vectors of `ids` from the index's own float32 codes (an exact ``IDMap2,Flat``
    or an ``IVF...,Flat``), in the order given; None for other index types (8-bit codes).

    An inverted file gets an id-to-list hash table the first time (about 40 bytes an id),
    kept with the index object; above ``DIRECT_MAP_LIMIT`` vectors it would take hundreds of
    MB, and None is returned (the caller reads the catalog's vectors).
    """
    ids = np.ascontiguousarray(ids, np.int64)
    if not holds_vectors(index):
        return None
    if not isinstance(index, faiss.IndexIDMap2):
        ivf = faiss.extract_index_ivf(index)
        with _direct_map_lock:
            if ivf.direct_map.type == faiss.DirectMap.NoMap:
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    if not len(ids):
        return np.zeros((0, index.d), np.float32)
    # FAISS copies more than 1,000 vectors on an OpenMP team: on a busy machine it waits for cores.
    with omp_threads(1):
        return index.reconstruct_batch(ids)


def probed_lists(index: faiss.Index, share: float) -> int | None:
    """Lists a search restricted to `share` of an inverted file probes (as :func:`subset_params`
    sets them); None when `index` is not an inverted file."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    return min(ivf.nlist, max(ivf.nprobe, math.ceil(ivf.nprobe / max(share, 1e-9))))


def inverted(index: faiss.Index) -> bool:
    """Whether `index` is an inverted file (searches probe some of its lists)."""
    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return True


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


def write(index: faiss.Index, path: Path) -> None:
    """Write atomically: readers see the old file or the new one, never half of one."""
    tmp = Path(f"{path}.tmp-{os.getpid()}")
    try:
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    except (OSError, RuntimeError):
        # A full disk leaves a partial file; drop it so the space is free again at once.
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def read(path: Path, mmap: bool = False) -> faiss.Index:
    """Load an index; with `mmap`, map it read-only instead (near-instant, shared page cache).

    IO_FLAG_MMAP_IFC maps flat code arrays, IO_FLAG_MMAP maps inverted lists; FAISS refuses
    the first for IVF files, so an IVF file is retried with the second alone. An index whose
    lists live on disk (:mod:`retrieval.ann.ondisk`) is always mapped, by FAISS itself.
    """
    if Path(path).with_suffix(".ivfdata").exists():
        from retrieval.ann import ondisk

        return ondisk.read(Path(path))
    if not mmap:
        return faiss.read_index(str(path))
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        return _no_prefetch(faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY))


def _no_prefetch(index: faiss.Index) -> faiss.Index:
    # FAISS maps an IVF file's lists as OnDiskInvertedLists, which before each search read every
    # probed list in full on 32 threads. From the page cache that is pure cost, and a filtered
    # search (which skips most vectors of each list) pays it for all it probes: at 1,000,000,
    # 400 lists took 11.8 ms with it and 3.8 without, and an unfiltered nprobe of 64 5.5 against
    # 1.8 (scripts/bench_filters.py, docs/photo-library.md). Indexes larger than memory
    # (retrieval.ann.ondisk) keep it.
    try:
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    except RuntimeError:
        return index
    if hasattr(lists, "prefetch_nthread"):
        lists.prefetch_nthread = 0
    return index


def describe(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return type(inner).__name__


def ids_of(index: faiss.Index) -> np.ndarray:
    """Every id stored in `index` (IDMap or IVF), for checking it against the catalog."""
    if isinstance(index, faiss.IndexIDMap):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    parts = [
        faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
        for i in range(ivf.nlist)
        if lists.list_size(i)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


# -- near-duplicate pairs (retrieval/search/duplicates.py) ------------------------------------------
#: Up to this many vectors the index itself answers the range search: an exhaustive scan, a
#: few seconds at most. Above it a coarse IVF built for the purpose keeps it in seconds.
PAIRS_EXACT_LIMIT = 4_000
#: Lists probed per vector in that IVF: near-duplicates sit in the same or a next cell.
PAIRS_NPROBE = 4


def near_pairs(
    index: faiss.Index, chunks: Chunks, n: int, dim: int, threshold: float,
    advance: Callable[[int], None] | None = None,
) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(a, b, score) arrays of all pairs of stored vectors with inner product >= `threshold`, a < b.

    Each chunk of stored vectors is a batch of queries to a range search: the index's own
    when it is an inverted file or small, otherwise a coarse inverted file that is filled
    chunk by chunk, each chunk searched right after it is added, so that every pair is
    met once, when its later member arrives (an exhaustive scan of 100,000 against 100,000
    takes minutes on 2 cores). Scores are those of the index searched: approximate for
    8-bit codes (callers re-score).
    """
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is None and n > PAIRS_EXACT_LIMIT:
        yield from _coarse_pairs(chunks, n, dim, threshold, advance)
        return
    params = None
    if ivf is not None:
        params = faiss.SearchParametersIVF()
        params.nprobe = min(ivf.nlist, max(ivf.nprobe, PAIRS_NPROBE))
    for ids, vectors in chunks():
        if not len(ids):
            continue
        lims, scores, found = index.range_search(np.ascontiguousarray(vectors, np.float32), threshold, params=params)
        rows = np.repeat(np.asarray(ids, np.int64), np.diff(lims).astype(np.int64))
        keep = rows < found
        yield rows[keep], found[keep], scores[keep]
        if advance is not None:
            advance(len(ids))


def _coarse_pairs(chunks: Chunks, n: int, dim: int, threshold: float, advance) -> Iterable:
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
            params.nprobe = min(quantizer.ntotal, PAIRS_NPROBE)
        ivf.add_with_ids(vectors, ids)
        lims, scores, found = ivf.range_search(vectors, threshold, params=params)
        rows = np.repeat(ids, np.diff(lims).astype(np.int64))
        # Ids grow chunk by chunk: an earlier vector has the smaller id, so each pair once.
        keep = found < rows
        yield found[keep], rows[keep], scores[keep]
        if advance is not None:
            advance(len(ids))
