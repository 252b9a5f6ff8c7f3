"""The filtered search: exactly the best k among the images that pass the filters.

Not the best k overall with the failures dropped, which returns too few. How they are found
depends on how many pass, as vector databases do it (thresholds measured by
benchmarks/bench_filters.py, see docs/photo-library.md).

The filter is evaluated on the generation's columns kept in memory (retrieval/search/filters/columns.py):
a boolean mask over the ids in a few milliseconds, which counts exactly how many pass. Then:

- few (at most ``FilterTuning.exact_max``, by index type): their vectors are read from the index's
  own flat codes (the catalog's for 8-bit codes) and scored exactly;
- more: the FAISS index is searched restricted to the mask (an ``IDSelectorBitmap`` made from
  it, no id list); an IVF index probes more lists in proportion to 1/share.

Where the columns cannot answer (a catalog holding dates not in canonical form, the columns
turned off, or not read yet), the filter runs in SQL, chosen the same way on an estimated share:

- few (at most ``FilterTuning.exact_max``, by index type): their vectors are read from the catalog and
  scored exactly, whatever the index type;
- more (at most ``FilterTuning.restrict_max``): the FAISS index is searched restricted to their ids
  (an ``IDSelector``); an IVF index probes more lists in proportion;
- most: the index returns more candidates than asked for, enough for k of them to pass
  on the estimated share, and the candidates are checked in SQL; too few pass, fetch more.
  This never lists the passing ids, which costs more than the search when half a million pass.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval import ann
from retrieval.search.filters.columns import Columns, read_columns
from retrieval.search.filters.people import person_mask
from retrieval.search.filters.spec import Filters
from retrieval.search.filters.sql import where
from retrieval.storage import frames
from retrieval.storage.catalog import Catalog

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from retrieval.ann.quickscan import QuickScan
    from retrieval.search.searcher import Searcher

log = logging.getLogger(__name__)

#: ids -> their stored vectors (the catalog's ``image_vectors_by_id``).
Lookup = Callable[[list[int]], dict[int, np.ndarray]]


@dataclass(frozen=True)
class FilterTuning:
    """Thresholds between the three ways of running a filtered search (see the module docstring)."""

    #: Passing images scored exactly, at most, when the filter ran on the in-memory columns;
    #: None: by index type. Over the exact index a restricted search is itself exact and costs
    #: a bit test per stored vector: it ties with the exact scan near this many passing and
    #: wins above (docs/photo-library.md#the-figures-behind-the-thresholds).
    mask_exact_max: int | None = None
    mask_exact_max_flat: int = 1_000
    #: Over an inverted file a restricted search probes nprobe/share lists, so the choice
    #: follows nprobe: the exact scan when its cost, per passing vector (read through the
    #: id-to-list table, scored), is below the restricted search's, per probed list. Both
    #: costs were measured at 1,000,000 vectors by benchmarks/bench_filters.py
    #: (docs/photo-library.md#the-figures-behind-the-thresholds).
    exact_us_per_vector: float = 2.5
    restrict_us_per_list: float = 4.0
    #: A vector read from the catalog instead (8-bit codes, or an inverted file too large for
    #: the id-to-list table): a B-tree lookup, an order of magnitude dearer than a scanned
    #: vector (docs/photo-library.md#the-figures-behind-the-thresholds).
    catalog_us_per_vector: float = 40.0
    #: Over the exact index, from this share on the search over-fetches candidates and keeps
    #: those the mask passes: a plain scan, where a restricted one mispredicts a branch on
    #: every other vector and costs a multiple of the unfiltered scan
    #: (docs/photo-library.md#the-figures-behind-the-thresholds).
    mask_overfetch_share: float = 0.25
    #: Over an inverted file never (above 1): the restricted search probes few lists when many pass.
    mask_overfetch_share_ivf: float = 2.0
    #: Evaluate the filter on the in-memory columns (retrieval/search/filters/columns.py) when they can.
    columns: bool = True
    #: Read missing columns now instead of on a thread of their own while this search runs in SQL.
    wait_for_columns: bool = False
    #: SQL path: passing images scored from the catalog at most; None: by index type (below). Over the
    #: exact index a restricted search costs one scan whatever passes, and scoring from the
    #: catalog (a B-tree lookup per image) ties with it near 100 images at 100,000. Over an
    #: inverted file a selective filter makes the restricted search probe every list, so the
    #: catalog wins up to a few thousand passing (benchmarks/bench_filters.py,
    #: docs/photo-library.md#the-figures-behind-the-thresholds).
    exact_max: int | None = None
    exact_max_flat: int = 32
    exact_max_ivf: int = 2_000
    #: Listing the passing ids from SQL costs per id; above this many, over-fetching (which
    #: lists none) is cheaper (docs/photo-library.md#the-figures-behind-the-thresholds).
    restrict_max: int = 20_000
    #: Ids sampled to estimate the share that passes before choosing.
    sample: int = 1_000


@dataclass
class FilterResult:
    """What a filtered search found, and how it ran (for tests and benchmarks)."""

    #: (queries, k) scores, best first; -inf pads short rows.
    scores: np.ndarray
    #: (queries, k) ids; -1 pads short rows.
    ids: np.ndarray
    #: The way chosen: "exact", "restrict", "overfetch" or "none" (nothing passes).
    chosen: str
    #: Where the filter was evaluated: "columns" or "sql".
    evaluated: str


def search(
    catalog: Catalog, index: Any, queries: np.ndarray, k: int, filters: Filters, *,
    factory: str | None = None, tuning: FilterTuning | None = None, rerank: int | None = None,
    quick: QuickScan | None = None, searcher: Searcher | None = None,
) -> FilterResult:
    """The best k passing images per query (ids -1 pad short rows), and how they were found.

    Call inside the catalog snapshot the index belongs to. `rerank`: candidates per result
    that an index of 8-bit codes re-scores (the catalog's ``index_rerank``). `searcher`: the
    long-lived caller's, whose in-memory columns evaluate the filter; None (a one-shot search)
    keeps nothing and evaluates it in SQL, unless `tuning` says to wait for the columns.
    """
    tuning = tuning or FilterTuning()
    clauses = filters.clauses(catalog)  # also refuses a filter this catalog cannot answer
    columns = _columns(catalog, tuning, searcher)
    mask = columns.mask(filters) if columns is not None else None
    if mask is not None and filters.people:  # who is in a photo changes between generations: asked per query
        mask &= person_mask(catalog, filters.people, len(mask), searcher.people if searcher is not None else None)
    if mask is not None:
        lock = searcher.indexes.direct_map_lock if searcher is not None else None
        return _search_masked(catalog, index, queries, k, mask, factory, tuning, rerank, quick, lock)
    sql, args = where(clauses)
    n = index.ntotal
    queries = np.ascontiguousarray(queries, np.float32)
    share = _estimated_share(catalog, sql, args, tuning.sample) if n > 4 * tuning.sample else None
    ids = None
    if share is None or share * n <= 2 * tuning.restrict_max:
        rows = catalog.db.execute(f"SELECT id FROM images WHERE {sql} LIMIT ?", [*args, tuning.restrict_max + 1])
        ids = np.fromiter((r[0] for r in rows), np.int64)
        if len(ids) <= tuning.restrict_max and catalog.has_frames:
            ids = frames.with_frames(catalog.db.conn, ids)  # a passing video passes with every frame
        if len(ids) <= tuning.restrict_max:
            share = len(ids) / max(n, 1)
        else:
            ids, share = None, max(share or 0.0, tuning.restrict_max / max(n, 1))
    lookup = catalog.image_vectors_by_id
    if ids is not None and len(ids) == 0:
        return FilterResult(*_empty(len(queries), 0), "none", "sql")
    exact_max = tuning.exact_max
    if exact_max is None:
        exact_max = tuning.exact_max_ivf if ann.inverted(index) else tuning.exact_max_flat
    if ids is not None and len(ids) <= exact_max:
        return FilterResult(*_exact(lookup(ids.tolist()), queries, k), "exact", "sql")
    if ids is not None:
        params = ann.subset_params(index, ids, share)
        found = ann.search_ranked(
            index, queries, min(k, len(ids)), factory=factory, lookup=lookup, params=params, rerank=rerank
        )
        return FilterResult(*found, "restrict", "sql")
    assert share is not None  # set above whenever no ids were listed
    rows_found = [_overfetch(catalog, index, q[None], k, sql, args, share, factory, rerank) for q in queries]
    width = max((len(r[1]) for r in rows_found), default=0)
    scores, out = _empty(len(queries), width)
    for i, (s, found_ids) in enumerate(rows_found):
        scores[i, : len(s)], out[i, : len(found_ids)] = s, found_ids
    return FilterResult(scores, out, "overfetch", "sql")


def _columns(catalog: Catalog, tuning: FilterTuning, searcher: Searcher | None) -> Columns | None:
    """The in-memory columns of the catalog's generation, when they can be had without waiting
    (or `tuning` says to wait): a searcher's, else read now and kept by nobody."""
    if not tuning.columns:
        return None
    if searcher is not None:
        return searcher.columns_for(catalog, wait=tuning.wait_for_columns)
    if tuning.wait_for_columns:
        return read_columns(catalog.db.conn, catalog.generation, catalog.has_photo_meta)
    return None


def _search_masked(
    catalog: Catalog, index: Any, queries: np.ndarray, k: int, mask: np.ndarray, factory: str | None,
    tuning: FilterTuning, rerank: int | None = None, quick: QuickScan | None = None,
    lock: AbstractContextManager[Any] | None = None,
) -> FilterResult:
    """The filtered search once the passing ids are a mask indexed by id (`lock`: see ann.stored_vectors)."""
    queries = np.ascontiguousarray(queries, np.float32)
    # Videos' frames beyond the first pass with their file and count as vectors that pass.
    videos = frames.videos(catalog.db.conn) if catalog.has_frames else {}
    count = int(np.count_nonzero(mask)) + sum(n - 1 for i, n in videos.items() if i < len(mask) and mask[i])
    if count == 0:
        return FilterResult(*_empty(len(queries), 0), "none", "columns")
    share = count / max(index.ntotal, 1)
    lists = ann.probed_lists(index, share)
    if tuning.mask_exact_max is not None:
        exact = count <= tuning.mask_exact_max
    elif lists is None:
        exact = count <= tuning.mask_exact_max_flat
    else:
        from_index = ann.holds_vectors(index) and not ann.reranks(factory)
        per_vector = tuning.exact_us_per_vector if from_index else tuning.catalog_us_per_vector
        exact = count * per_vector <= lists * tuning.restrict_us_per_list
    lookup = catalog.image_vectors_by_id
    if exact:
        ids = np.flatnonzero(mask).astype(np.int64)
        if videos:
            ids = frames.with_frames(catalog.db.conn, ids)
        vectors = None if ann.reranks(factory) else ann.stored_vectors(index, ids, lock)
        if vectors is None:  # 8-bit codes: the exact vectors are the catalog's
            return FilterResult(*_exact(lookup(ids.tolist()), queries, k), "exact", "columns")
        return FilterResult(*ann.top_k(ids, ann.inner_products(queries, vectors), k), "exact", "columns")
    if share >= (tuning.mask_overfetch_share if lists is None else tuning.mask_overfetch_share_ivf):
        found = _overfetch_masked(index, queries, k, mask, share, factory, lookup, rerank, quick, count)
        return FilterResult(*found, "overfetch", "columns")
    # The mask is indexed by file id; videos' later frames have ids of their own (storage/frames.py),
    # so where there are videos the passing ids are listed, frames included.
    params = (ann.subset_params(index, frames.with_frames(catalog.db.conn, np.flatnonzero(mask).astype(np.int64)), share)
              if videos else ann.mask_params(index, mask, share))
    found = ann.search_ranked(
        index, queries, min(k, count), factory=factory, lookup=lookup, params=params, rerank=rerank
    )
    return FilterResult(*found, "restrict", "columns")


def _overfetch_masked(
    index: Any, queries: np.ndarray, k: int, mask: np.ndarray, share: float, factory: str | None,
    lookup: Lookup, rerank: int | None, quick: QuickScan | None, count: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The best candidates of the whole index that the mask passes, widened until k pass.

    `quick`: the 8-bit copy a long-lived caller keeps of an exact index (retrieval/ann/quickscan.py),
    searched as an unfiltered query is, so a broad filter costs what no filter costs."""
    n = index.ntotal
    count = int(np.count_nonzero(mask)) if count is None else count
    scores, out = _empty(len(queries), min(k, count))
    for row, query in enumerate(queries):
        fetch = min(n, math.ceil(k / share * 1.5) + 16)
        while True:
            if quick is not None:
                s, ids = quick.search(query[None], fetch)
            else:
                params = ann.subset_params(index, None, min(1.0, k / fetch))  # an IVF probes wider
                s, ids = ann.search_ranked(
                    index, query[None], fetch, factory=factory, lookup=lookup, params=params, rerank=rerank
                )
            s, ids = s[0], ids[0]
            files = frames.file_ids(ids)  # a video's frame passes as its file does
            keep = np.flatnonzero((ids >= 0) & (files < len(mask)) & mask[np.clip(files, 0, len(mask) - 1)])
            keep = keep[: out.shape[1]]
            if len(keep) >= out.shape[1] or fetch >= n:
                scores[row, : len(keep)], out[row, : len(keep)] = s[keep], ids[keep]
                break
            fetch = min(n, fetch * 4)
    return scores, out


def _empty(rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((rows, width), -np.inf, np.float32), np.full((rows, width), -1, np.int64)


def _estimated_share(catalog: Catalog, sql: str, args: list[Any], sample: int) -> float | None:
    """The share of images passing, from a random sample of ids: primary-key lookups, cheap beside the search."""
    top = catalog.db.execute("SELECT max(id) FROM images").fetchone()[0] or 0
    picks = random.Random(top).sample(range(1, top + 1), min(sample, top))
    marks = ",".join("?" * len(picks))
    seen, passed = catalog.db.execute(
        f"SELECT count(*), coalesce(sum(CASE WHEN {sql} THEN 1 ELSE 0 END), 0) FROM images WHERE id IN ({marks})",
        [*args, *picks],
    ).fetchone()
    # Too few live ids in the sample (many deleted): no estimate; the caller counts instead.
    return passed / seen if seen >= sample // 4 else None


def _exact(vectors: dict[int, np.ndarray], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k of `vectors` (id -> vector) for each query, scored exactly."""
    ids = np.sort(np.fromiter(vectors, np.int64, count=len(vectors)))
    matrix = np.stack([vectors[int(i)] for i in ids])
    return ann.top_k(ids, ann.inner_products(queries, matrix), k)


def _overfetch(
    catalog: Catalog, index: Any, query: np.ndarray, k: int, sql: str, args: list[Any], share: float,
    factory: str | None, rerank: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates from the whole index, checked against the filter, widened until k pass."""
    n = index.ntotal
    fetch = min(n, math.ceil(k / max(share, 1e-6) * 1.5) + 16)
    lookup = catalog.image_vectors_by_id
    while True:
        params = ann.subset_params(index, None, min(1.0, k / fetch))
        scores, ids = ann.search_ranked(
            index, query, fetch, factory=factory, lookup=lookup, params=params, rerank=rerank
        )
        scores, ids = scores[0], ids[0]
        found = [int(i) for i in ids if i >= 0]
        passing = _passing(catalog, sorted({i % frames.FRAME_STEP for i in found}), sql, args)
        keep = [j for j, i in enumerate(ids.tolist()) if i >= 0 and i % frames.FRAME_STEP in passing][:k]
        if len(keep) >= k or fetch >= n:
            return scores[keep], ids[keep]
        fetch = min(n, fetch * 4)


def _passing(catalog: Catalog, ids: list[int], sql: str, args: list[Any]) -> set[int]:
    out: set[int] = set()
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        marks = ",".join("?" * len(part))
        rows = catalog.db.execute(f"SELECT id FROM images WHERE id IN ({marks}) AND {sql}", [*part, *args])
        out.update(r[0] for r in rows)
    return out
