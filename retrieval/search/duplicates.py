"""Near-duplicate groups: the same photo resized, re-encoded, lightly cropped or re-saved, and bursts.

Pairs come from a range search of the index over its own vectors (see
:func:`retrieval.ann.near_pairs`), never from an all-pairs loop in Python; union-find
joins the pairs into groups. A group's first member is its largest image (the copy worth
keeping); every member's score is its cosine similarity to that one.

The default threshold was measured on altered copies of real photos among distinct ones
(benchmarks/dupes_eval.py; figures in docs/photo-library.md).

    >>> groups = find_duplicates(store)                      # doctest: +SKIP
    >>> [[m.path for m in g] for g in groups[:1]]            # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from retrieval import ann
from retrieval.errors import RetrievalError
from retrieval.progress import NullProgress, Progress
from retrieval.storage.store import IndexStore

log = logging.getLogger(__name__)

#: Cosine similarity above which two images are called copies, for the `default` aligner
#: (benchmarks/dupes_eval.py: see docs/photo-library.md for the precision and recall behind it).
DEFAULT_THRESHOLD = 0.99
#: Range searches of 8-bit codes take pairs this much below the threshold, then re-score them exactly.
CODE_MARGIN = 0.03


@dataclass
class Member:
    id: int
    path: str
    score: float
    rank: int = 0

    def as_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "score": self.score}


def find_duplicates(
    store: IndexStore, threshold: float = DEFAULT_THRESHOLD, progress: Progress | None = None,
    ann_settings: ann.AnnSettings = ann.DEFAULT,
) -> list[list[Member]]:
    """Groups of near-identical images, largest group first. `ann_settings`: how the pairs are found."""
    if not 0.0 < threshold <= 1.0:
        raise RetrievalError(f"--threshold must be above 0 and at most 1, got {threshold}")
    progress = progress or NullProgress()
    catalog = store.catalog
    with catalog.snapshot():
        n, generation, dim = catalog.count("images"), catalog.generation, catalog.dim
        path = store.faiss_path("images", generation)
        if n < 2 or dim is None or not path.exists():
            return []
        index = ann.read(path, mmap=True)
        factory = catalog.get_meta("index_factory")
        approximate = ann.reranks(factory)
        progress.start(n, "comparing")
        pairs = list(ann.near_pairs(
            index, catalog.image_vectors, n, dim,
            threshold - CODE_MARGIN if approximate else threshold, progress.advance, ann_settings,
        ))
        progress.close()
        a, b, _ = (np.concatenate(p) for p in zip(*pairs)) if pairs else (np.zeros(0, np.int64),) * 3
        groups = _union_find(a, b)
        members = sorted({i for g in groups for i in g})
        vectors = catalog.image_vectors_by_id(members)
        rows = catalog.rows_by_id("images", members)
    out = []
    for group in groups:
        out.extend(_rank(group, vectors, rows, threshold if approximate else None))
    out.sort(key=lambda g: (-len(g), g[0].id))
    for g in out:
        for rank, m in enumerate(g, 1):
            m.rank = rank
    return out


def _union_find(a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist()):
        rx, ry = root(x), root(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    groups: dict[int, list[int]] = {}
    for x in parent:
        groups.setdefault(root(x), []).append(x)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def _rank(group: list[int], vectors: dict, rows: dict, rescore: float | None) -> list[list[Member]]:
    """Order a group by similarity to its largest image; with `rescore`, split off members whose
    exact similarity to some other member is below it (8-bit codes found them)."""
    group = [i for i in group if i in vectors and i in rows]
    if rescore is not None:
        sims = np.stack([vectors[i] for i in group]) @ np.stack([vectors[i] for i in group]).T
        a, b = np.nonzero(np.triu(sims >= rescore, 1))
        parts = _union_find(np.array(group)[a], np.array(group)[b])
        return [g for p in parts for g in _rank(p, vectors, rows, None)]
    if len(group) < 2:
        return []
    head = max(group, key=lambda i: ((rows[i].get("width") or 0) * (rows[i].get("height") or 0), -i))
    scores = {i: float(vectors[i] @ vectors[head]) for i in group}
    ordered = sorted(group, key=lambda i: (i != head, -scores[i], i))
    return [[Member(id=i, path=rows[i]["path"], score=round(min(1.0, scores[i]), 4)) for i in ordered]]


def as_json(groups: list[list[Member]]) -> dict:
    return {"groups": [[m.as_dict() for m in g] for g in groups]}


#: Members of one group drawn on a sheet (two rows of six); the title counts the rest.
SHEET_MEMBERS = 12


def sheet_rows(groups: list[list[Member]]) -> list[tuple[str, list]]:
    """Rows for :func:`retrieval.search.sheet.contact_sheet`: one group each, its first SHEET_MEMBERS drawn."""
    return [
        (f"group {n}: {len(g)} images" + (f" (first {SHEET_MEMBERS} shown)" if len(g) > SHEET_MEMBERS else ""),
         g[:SHEET_MEMBERS])
        for n, g in enumerate(groups, 1)
    ]

