"""Near-duplicate groups: the same photo resized, re-encoded, lightly cropped or re-saved, and bursts.

Candidate pairs come from a range search of the index over its own vectors (see
:func:`retrieval.ann.near_pairs`), never from an all-pairs loop in Python. Where the catalog
holds both images' perceptual hashes (retrieval/media/sameness.py, taken while indexing),
candidates are taken from a loose vector floor and a pair is kept when the hashes differ in
at most a few bits: the vector says "same kind of picture", the hash "same picture", so a
second shot of one scene is not a copy whatever its vector. Images without a hash (an index
from before the hashes) are paired by vector similarity alone, as before. Union-find joins the
pairs into groups. A group's first member is its largest image (the copy worth keeping);
every member's score is its cosine similarity to that one. A group whose members carry
distinct EXIF dates within a few seconds of each other is a burst; any other group holds copies.

One shot saved in two formats is a group of its own kind: a RAW and its JPEG ("raw+jpeg"),
a HEIC and a JPEG exported from it ("heic+jpeg"). Their candidates come from the catalog,
not the vectors: the same stem in one folder, or the same camera and EXIF capture time; a
pair is kept when its perceptual hashes agree (a RAW's demosaic and the camera's JPEG differ
in tone and sharpening, which moves more bits than a re-encode: up to LOOSE_BITS). A RAW
indexed as its JPEG's companion (the default of `retrieval index`) is such a group too, with
the RAW listed as the companion member.

The constants were measured on altered copies of real photos among distinct ones
(benchmarks/dupes_eval.py; figures in docs/photo-library.md).

    >>> groups = find_duplicates(store)                      # doctest: +SKIP
    >>> [[m.path for m in g] for g in groups[:1]]            # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from retrieval import ann
from retrieval.errors import RetrievalError
from retrieval.media.files import RAW_SUFFIXES
from retrieval.media.sameness import hamming
from retrieval.progress import NullProgress, Progress
from retrieval.storage import frames
from retrieval.storage.store import IndexStore

log = logging.getLogger(__name__)

#: Cosine similarity above which two images are called copies, for the `default` aligner
#: (benchmarks/dupes_eval.py: see docs/photo-library.md for the precision and recall behind it).
DEFAULT_THRESHOLD = 0.99
#: Range searches of 8-bit codes take pairs this much below the threshold, then re-score them exactly.
CODE_MARGIN = 0.03
#: Vector similarity from which two images with perceptual hashes are candidates (checked by hash).
CANDIDATE_FLOOR = 0.80
#: Bits (of 64) in which two copies' perceptual hashes may differ.
MAX_BITS = 10
#: A crop of a few percent moves more bits than any other copy does: pairs whose vectors are
#: this close may differ in up to LOOSE_BITS (still far from the ~32 of unrelated pictures).
CLOSE, LOOSE_BITS = 0.95, 20
#: Members of a burst were taken within this many seconds of the next (by EXIF date).
BURST_SECONDS = 10
#: Kinds of group in the JSON: copies of one picture, a burst, one shot as RAW and JPEG, one
#: shot as HEIC and a JPEG exported from it.
COPIES, BURST, RAW_JPEG, HEIC_JPEG = "copies", "burst", "raw+jpeg", "heic+jpeg"


@dataclass
class Member:
    id: int
    path: str
    score: float
    rank: int = 0
    #: Bits in which its perceptual hash differs from the first member's; None without hashes.
    bits: int | None = None
    #: A file listed with image `id` rather than indexed itself (the RAW of a RAW+JPEG pair).
    companion: bool = False

    def as_dict(self) -> dict:
        out: dict = {"id": self.id, "path": self.path, "score": self.score}
        if self.bits is not None:
            out["bits_differ"] = self.bits
        if self.companion:
            out["companion"] = True
        return out


class Group(list[Member]):
    """The members of one group, best copy first, and what kind of group it is (COPIES, BURST,
    RAW_JPEG or HEIC_JPEG)."""

    kind: str = COPIES


def find_duplicates(
    store: IndexStore, threshold: float = DEFAULT_THRESHOLD, progress: Progress | None = None,
    ann_settings: ann.AnnSettings = ann.DEFAULT, *, max_bits: int = MAX_BITS, floor: float = CANDIDATE_FLOOR,
) -> list[Group]:
    """Groups of near-identical images, largest group first. `ann_settings`: how the pairs are found.

    `threshold` pairs images that have no perceptual hash (by vector similarity); `floor` and
    `max_bits` pair images that have one (candidates from the vectors, checked by the hashes).
    """
    if not 0.0 < threshold <= 1.0:
        raise RetrievalError(f"--threshold must be above 0 and at most 1, got {threshold}")
    if not 0 <= max_bits <= 64:
        raise RetrievalError(f"--max-bits must be between 0 and 64, got {max_bits}")
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
        margin = CODE_MARGIN if approximate else 0.0
        hashed = catalog.has_sameness and catalog.db.execute(
            "SELECT 1 FROM vectors WHERE sameness IS NOT NULL LIMIT 1").fetchone() is not None
        lowest = min(floor, threshold) if hashed else threshold
        progress.start(n, "comparing")
        pairs = list(ann.near_pairs(index, catalog.image_vectors, n, dim, lowest - margin, progress.advance, ann_settings))
        progress.close()
        a, b, score = (np.concatenate(p) for p in zip(*pairs)) if pairs else (np.zeros(0, np.int64),) * 3
        # Files pair by their own vectors (a video's by its first frame), not by a video's later frames.
        files = (a < frames.FRAME_STEP) & (b < frames.FRAME_STEP)
        a, b, score = a[files], b[files], score[files]
        hashes: dict[int, int] = {}
        if hashed:
            a, b, hashes = _verified(catalog, a, b, score, threshold, margin, max_bits)
            approximate = False  # pairs without hashes were re-scored exactly in _verified
        shots = _shot_pairs(catalog, hashes if hashed else None)
        if len(shots):
            a, b = np.concatenate([a, shots[:, 0]]), np.concatenate([b, shots[:, 1]])
        groups = _union_find(a, b)
        members = sorted({i for g in groups for i in g})
        vectors = catalog.image_vectors_by_id(members)
        rows = catalog.rows_by_id("images", members)
        dates = catalog.dates_by_id(members) if catalog.has_photo_meta else {}
        paired = _companion_groups(catalog)
    same_shot = {frozenset(pair) for pair in shots.tolist()}
    out: list[Group] = []
    for group in groups:
        out.extend(_rank(group, vectors, rows, threshold if approximate else None, hashes))
    for g in out:
        ids = [m.id for m in g]
        shot = _shot_kind([m.path for m in g]) if len(g) == 2 and frozenset(ids) in same_shot else None
        g.kind = shot or _kind([dates.get(i) for i in ids])
    out.extend(paired)
    out.sort(key=lambda g: (-len(g), g[0].id))
    for g in out:
        for rank, m in enumerate(g, 1):
            m.rank = rank
    return out


def _suffix_kind(path: str) -> str | None:
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".jpg", ".jpeg"):
        return "jpeg"
    if suffix in RAW_SUFFIXES:
        return "raw"
    if suffix in (".heic", ".heif", ".hif"):
        return "heic"
    return None


def _shot_kind(paths: list[str]) -> str | None:
    """RAW_JPEG or HEIC_JPEG for two paths of those formats, else None."""
    kinds = sorted(_suffix_kind(p) or "" for p in paths)
    return {("jpeg", "raw"): RAW_JPEG, ("heic", "jpeg"): HEIC_JPEG}.get((kinds[0], kinds[1]))


def _shot_pairs(catalog, hashes: dict[int, int] | None) -> np.ndarray:
    """(n, 2) ids of a RAW or HEIC and a JPEG of one shot: same folder and stem, or same camera
    and EXIF capture time; kept when their perceptual hashes agree within LOOSE_BITS (or, with
    no hashes, their vectors within CANDIDATE_FLOOR)."""
    others: list[tuple[int, str, tuple | None]] = []
    jpegs_by_stem: dict[str, list[int]] = {}
    jpegs_by_shot: dict[tuple, list[int]] = {}
    meta = catalog.has_photo_meta
    cols = "id, path, camera_make, camera_model, taken, taken_source" if meta else "id, path, NULL, NULL, NULL, NULL"
    for id_, path, make, model, taken, source in catalog.db.conn.execute(f"SELECT {cols} FROM images"):
        kind = _suffix_kind(path)
        if kind is None:
            continue
        shot = (make, model, taken) if source == "exif" and taken and (make or model) else None
        if kind == "jpeg":
            jpegs_by_stem.setdefault(os.path.splitext(path)[0], []).append(id_)
            if shot is not None:
                jpegs_by_shot.setdefault(shot, []).append(id_)
        else:
            others.append((id_, path, shot))
    candidates = set()
    for id_, path, shot in others:
        # Its own name's JPEG when there is one: a burst shot within one second would otherwise
        # pair each RAW with its neighbours' JPEGs too.
        partners = jpegs_by_stem.get(os.path.splitext(path)[0]) or (jpegs_by_shot.get(shot, []) if shot else [])
        for partner in partners:
            candidates.add((min(id_, partner), max(id_, partner)))
    if not candidates:
        return np.zeros((0, 2), np.int64)
    ids = sorted({i for pair in candidates for i in pair})
    if hashes is not None:
        hashes.update(catalog.sameness_by_id([i for i in ids if i not in hashes]))
    vectors = None
    kept = []
    for x, y in sorted(candidates):
        if hashes is not None and x in hashes and y in hashes:
            ok = int(hamming(np.array([hashes[x]]), np.array([hashes[y]]))[0]) <= LOOSE_BITS
        else:
            vectors = vectors if vectors is not None else catalog.image_vectors_by_id(ids)
            ok = x in vectors and y in vectors and float(vectors[x] @ vectors[y]) >= CANDIDATE_FLOOR
        if ok:
            kept.append((x, y))
    return np.array(kept, np.int64).reshape(-1, 2)


def _companion_groups(catalog) -> list[Group]:
    """A RAW+JPEG pair indexed as one photo (the RAW its companion): a RAW_JPEG group of the
    JPEG and its RAW, both under the photo's id."""
    if not catalog.has_pairs():
        return []
    out = []
    for id_, path, companions in catalog.db.conn.execute(
            "SELECT id, path, companions FROM images WHERE companions IS NOT NULL ORDER BY id"):
        raws = [p for p in json.loads(companions) if _suffix_kind(p) == "raw"]
        if raws:
            group = Group([Member(id=id_, path=path, score=1.0)]
                          + [Member(id=id_, path=p, score=1.0, companion=True) for p in raws])
            group.kind = RAW_JPEG
            out.append(group)
    return out


def _verified(
    catalog, a: np.ndarray, b: np.ndarray, score: np.ndarray, threshold: float, margin: float, max_bits: int,
) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """The candidate pairs that are duplicates: by hash where both have one, else by exact similarity."""
    hashes = catalog.sameness_by_id(np.unique(np.concatenate([a, b])).tolist()) if len(a) else {}
    # Looked up as sorted arrays: a loose floor can give millions of candidates.
    known = np.fromiter(sorted(hashes), np.int64, len(hashes))
    values = np.array([hashes[int(i)] for i in known], np.int64)

    def lookup(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = np.minimum(np.searchsorted(known, ids), max(len(known) - 1, 0))
        found = known[at] == ids if len(known) else np.zeros(len(ids), bool)
        return found, values[at] if len(known) else np.zeros(len(ids), np.int64)

    (has_a, ha), (has_b, hb) = lookup(a), lookup(b)
    both = has_a & has_b
    bits = hamming(ha, hb)
    by_hash = both & ((bits <= max_bits) | ((bits <= max(max_bits, LOOSE_BITS)) & (score >= CLOSE)))
    by_vector = ~both & (score >= threshold - margin)
    if margin and by_vector.any():
        # 8-bit codes found them: keep those whose exact vectors are at the threshold.
        ids = np.unique(np.concatenate([a[by_vector], b[by_vector]])).tolist()
        exact = catalog.image_vectors_by_id(ids)
        for k in np.nonzero(by_vector)[0]:
            by_vector[k] = float(exact[int(a[k])] @ exact[int(b[k])]) >= threshold
    keep = by_hash | by_vector
    return a[keep], b[keep], hashes


def _kind(dates: list[tuple[str | None, str | None] | None]) -> str:
    """BURST when the members carry at least two distinct EXIF dates, each within BURST_SECONDS of
    the next (frames of one burst); COPIES otherwise (copies of one shot keep its date, or lose it)."""
    taken = sorted({d[0] for d in dates if d is not None and d[0] and d[1] == "exif"})
    if len(taken) < 2:
        return COPIES
    try:
        times = [datetime.fromisoformat(t[:19]) for t in taken]
    except ValueError:
        return COPIES
    gaps = [(later - earlier).total_seconds() for earlier, later in zip(times, times[1:])]
    return BURST if max(gaps) <= BURST_SECONDS else COPIES


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


def _rank(
    group: list[int], vectors: dict, rows: dict, rescore: float | None, hashes: dict[int, int] | None = None,
) -> list[Group]:
    """Order a group by similarity to its largest image; with `rescore`, split off members whose
    exact similarity to some other member is below it (8-bit codes found them)."""
    group = [i for i in group if i in vectors and i in rows]
    if rescore is not None:
        sims = np.stack([vectors[i] for i in group]) @ np.stack([vectors[i] for i in group]).T
        a, b = np.nonzero(np.triu(sims >= rescore, 1))
        parts = _union_find(np.array(group)[a], np.array(group)[b])
        return [g for p in parts for g in _rank(p, vectors, rows, None, hashes)]
    if len(group) < 2:
        return []
    head = max(group, key=lambda i: ((rows[i].get("width") or 0) * (rows[i].get("height") or 0), -i))
    scores = {i: float(vectors[i] @ vectors[head]) for i in group}
    ordered = sorted(group, key=lambda i: (i != head, -scores[i], i))
    hashes = hashes or {}

    def bits(i: int) -> int | None:
        if i not in hashes or head not in hashes:
            return None
        return int(hamming(np.array([hashes[i]]), np.array([hashes[head]]))[0])

    return [Group(Member(id=i, path=rows[i]["path"], score=round(min(1.0, scores[i]), 4), bits=bits(i)) for i in ordered)]


def as_json(groups: Sequence[list[Member]]) -> dict:
    """`{"groups": [...]}`, each group its members (best first); `{"kinds": [...]}` says each group's kind."""
    return {
        "groups": [[m.as_dict() for m in g] for g in groups],
        "kinds": [getattr(g, "kind", COPIES) for g in groups],
    }


#: Members of one group drawn on a sheet (two rows of six); the title counts the rest.
SHEET_MEMBERS = 12


def sheet_rows(groups: Sequence[list[Member]]) -> list[tuple[str, list]]:
    """Rows for :func:`retrieval.search.sheet.contact_sheet`: one group each, its first SHEET_MEMBERS drawn."""
    return [
        (f"group {n}: {len(g)} images" + (f" (first {SHEET_MEMBERS} shown)" if len(g) > SHEET_MEMBERS else ""),
         g[:SHEET_MEMBERS])
        for n, g in enumerate(groups, 1)
    ]

