"""Tuning an approximate index to the recall target, and measuring recall against exact search.

An inverted file's ``nprobe`` is raised until recall@10 against exact search reaches the
target on the queries users send (:mod:`retrieval.ann.tuning_queries`: image-like queries
near the data and text queries far from it, each set on its own); an index of 8-bit codes
also chooses how many candidates per result searches re-score with the exact vectors.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from retrieval.ann import tuning_queries
from retrieval.ann.chunks import Chunks, gather
from retrieval.ann.exact import exact_top_k
from retrieval.ann.settings import DEFAULT, AnnSettings

log = logging.getLogger(__name__)

#: What re-scoring one candidate costs, in list entries scanned: the ratio of a catalog lookup
#: of one float32 vector to the scan of one 8-bit code, both measured at 1M vectors
#: (docs/search.md#when-the-index-must-be-smaller-8-bit-codes-and-exact-re-scoring).
#: The tuning minimizes nprobe * list size + this * candidates.
LOOKUP_COST = 300

#: A text encoder (texts -> normalized vectors), the aligner's: far tuning queries are real text.
TextEncoder = tuning_queries.TextEncoder


@dataclass
class IndexInfo:
    """A built index's type and what its tuning chose and measured (recorded in the catalog)."""

    factory: str
    ntotal: int
    nprobe: int | None = None
    #: The lowest recall@10 against exact search of the query sets tuned on (see `recall_by_queries`).
    recall_at_10: float | None = None
    #: Candidates per result that searches re-score exactly (8-bit codes only).
    rerank: int | None = None
    #: Recall@10 of each query set at the chosen settings: {"near": ..., "far": ...}.
    recall_by_queries: dict[str, float] | None = None
    #: What the recall was measured on, in words (recorded in the catalog, shown by `retrieval info`).
    tuned_on: str | None = None


def probe_truth(
    chunks: Chunks, n: int, dim: int, encode_texts: TextEncoder | None = None
) -> tuple[tuning_queries.Probes, dict[str, np.ndarray]]:
    """The tuning queries (:func:`retrieval.ann.tuning_queries.make`) and their exact top 10: two passes."""
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


def recall_at_k(truth: np.ndarray, got: np.ndarray) -> float:
    """Share of the true top-k neighbours found in the approximate results (any width)."""
    hits = sum(len(set(t) & set(g)) for t, g in zip(truth.tolist(), got.tolist()))
    return hits / truth.size


def tune(
    index: faiss.Index, queries: tuning_queries.Probes, truths: dict[str, np.ndarray], info: IndexInfo,
    rerank: bool = False, settings: AnnSettings = DEFAULT,
) -> IndexInfo:
    """Set ``nprobe`` (and, with `rerank`, the re-scoring width) so that every query set reaches the target.

    Each set (near, far) must reach recall@10 >= ``settings.target_recall`` against exact
    search on its own (image-to-image queries need few lists, text queries many), plus two
    standard errors of that estimate (0.0036 for 300 queries): the recall is measured on a
    sample, and other queries of the kind must reach the target too. With `rerank`, recall
    counts the true top 10 among the width x 10 candidates that re-scoring sees, and the
    cheapest (nprobe, width) that reaches the target wins: nprobe x list size entries scanned
    plus LOOKUP_COST per candidate re-scored. Powers of two, up to every list (and the widest
    width) when the target cannot be met. Fills and returns `info`.
    """
    k = next(iter(truths.values())).shape[1]
    n = index.ntotal
    widths = settings.rerank_choices if rerank else (1,)
    info.tuned_on = queries.described()
    if not isinstance(index, faiss.IndexIVF):  # an exact scan of 8-bit codes: no nprobe, least width
        info.rerank = widths[0] if rerank else None
        return _measured(index, queries, truths, info, k, widths[0])
    # An HNSW coarse quantizer returns at most efSearch lists, whatever nprobe asks: widen it
    # with nprobe, or the loop probes no more lists than efSearch and never reaches the target.
    hnsw = getattr(faiss.downcast_index(index.quantizer), "hnsw", None)
    base_ef = hnsw.efSearch if hnsw is not None else 0
    per_list = n / index.nlist
    goal = {name: _with_margin(settings.target_recall, truth.size) for name, truth in truths.items()}
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


def _with_margin(target: float, neighbours: int) -> float:
    """`target` plus two standard errors of a recall measured over `neighbours` true neighbours."""
    return min(1.0, target + 2 * math.sqrt(target * (1 - target) / max(neighbours, 1)))


def _set_nprobe(index: faiss.IndexIVF, hnsw: Any, base_ef: int, nprobe: int) -> None:
    index.nprobe = nprobe
    if hnsw is not None:
        hnsw.efSearch = max(base_ef, nprobe)


def _measured(
    index: faiss.Index, queries: tuning_queries.Probes, truths: dict[str, np.ndarray], info: IndexInfo, k: int, width: int
) -> IndexInfo:
    fetch = min(k * width, index.ntotal)
    info.recall_by_queries = {
        name: round(recall_at_k(truths[name], index.search(q, fetch)[1]), 4) for name, q in queries.sets.items()
    }
    info.recall_at_10 = min(info.recall_by_queries.values())
    log.info("tuned on %s: nprobe %s, %s candidates per result, recall@10 %s", info.tuned_on, info.nprobe,
             (info.rerank or 1) * k, info.recall_by_queries)
    return info
