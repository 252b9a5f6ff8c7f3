"""Faces grouped into people, incrementally, on dlib's 128-d descriptors (Euclidean distance).

Two distances, because a person's mean face is a steadier thing to compare with than any one
of their faces (an expression, a turn of the head or the light moves one face's descriptor; the
mean of several moves less):

- ``threshold``: two single faces closer than this are taken for one person. Faces are grouped
  among themselves by Chinese whispers (label propagation on the graph of pairs closer than
  ``threshold``; Davis King's choice in dlib, which splits less eagerly than a threshold's
  connected components chain).
- ``join_threshold`` (looser): a face joins a person of two faces or more when it is this close
  to the mean of their faces. A person of one face is only a face, so ``threshold`` applies.

A run groups only what is new: a face without a person joins the existing person whose mean is
nearest within that person's distance; the faces left are grouped among themselves, then a
face left alone joins the nearest new group of two or more by the same rule; each group becomes
a new person. Nothing the user decided moves: a pinned face keeps its person, a named or hidden
person keeps its id and its faces. ``full=True`` regroups the other faces too (those of unnamed,
visible people), keeping the id of the person most of a new group came from.

dlib's published same-person threshold is 0.6; the defaults here are stricter, since two people
merged cost the user more than one person split (a merge is one command), and docs/people.md
measures them, and the alternatives, on the labelled set's halves.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from retrieval.storage.catalog import Catalog
from retrieval.storage.faces import new_person, stored_faces

#: Euclidean distance on dlib descriptors under which two faces are taken for one person.
DEFAULT_THRESHOLD = 0.5
#: Distance from a face to the mean face of a person of two faces or more under which it joins them.
DEFAULT_JOIN_THRESHOLD = 0.55


@dataclass(frozen=True)
class ClusterSettings:
    threshold: float = DEFAULT_THRESHOLD
    #: Looser distance to a person's mean face (two faces or more); at or under ``threshold``
    #: (0, say) faces join people within ``threshold`` only, as single-threshold grouping does.
    join_threshold: float = DEFAULT_JOIN_THRESHOLD
    #: Regroup the faces of unnamed, visible people too (not only faces without a person).
    full: bool = False
    #: Rounds of label propagation at most (it settles in a few on real faces).
    rounds: int = 20
    #: The order nodes are visited in is random; a fixed seed gives the same people every run.
    seed: int = 0


@dataclass
class ClusterSummary:
    faces: int = 0
    #: Faces that joined an existing person.
    joined: int = 0
    #: Faces grouped among themselves, and the people made of them.
    grouped: int = 0
    new_people: int = 0


def neighbours(embeddings: np.ndarray, threshold: float, chunk: int = 1024) -> list[np.ndarray]:
    """For each row, the other rows within `threshold` (Euclidean), computed `chunk` rows at a time."""
    x = np.asarray(embeddings, np.float32)
    squared = (x * x).sum(axis=1)
    out: list[np.ndarray] = []
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        d2 = squared[start : start + chunk, None] + squared[None, :] - 2.0 * part @ x.T
        for offset, row in enumerate(d2 < threshold * threshold):
            row[start + offset] = False
            out.append(np.flatnonzero(row))
    return out


def group(embeddings: np.ndarray, threshold: float = DEFAULT_THRESHOLD, rounds: int = 20, seed: int = 0,
          join_threshold: float = DEFAULT_JOIN_THRESHOLD) -> np.ndarray:
    """A group label (0..k-1, in order of first appearance) for each face descriptor: Chinese
    whispers within `threshold`, then each face left alone joins the group of two or more whose
    mean face is nearest, when within `join_threshold`.

    Pure: what the labelled set's measurements (benchmarks/people_eval.py) call.
    """
    x = np.asarray(embeddings, np.float32)
    labels = whispers(x, threshold, rounds, seed)
    if join_threshold > threshold and len(x):
        counts = np.bincount(labels)
        alone = np.flatnonzero(counts[labels] == 1)
        cores = np.flatnonzero(counts >= 2)
        if len(alone) and len(cores):
            sums = np.zeros((len(counts), x.shape[1]), np.float64)
            np.add.at(sums, labels, x)
            means = (sums[cores] / counts[cores, None]).astype(np.float32)
            nearest = _nearest_within(x[alone], means, np.full(len(cores), join_threshold, np.float32))
            found = nearest >= 0
            labels[alone[found]] = cores[nearest[found]]
    _, first = np.unique(labels, return_index=True)
    order = {int(labels[i]): rank for rank, i in enumerate(sorted(first))}
    return np.array([order[int(v)] for v in labels], np.int64)


def whispers(embeddings: np.ndarray, threshold: float, rounds: int = 20, seed: int = 0) -> np.ndarray:
    """Chinese whispers on the graph of pairs closer than `threshold`: a label per face (not renumbered)."""
    n = len(embeddings)
    labels = np.arange(n)
    adjacent = neighbours(embeddings, threshold)
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        changed = 0
        for i in rng.permutation(n):
            near = adjacent[i]
            if not len(near):
                continue
            votes = Counter(labels[near].tolist())
            best = max(votes.values())
            label = min(k for k, v in votes.items() if v == best)
            if label != labels[i]:
                labels[i], changed = label, changed + 1
        if not changed:
            break
    return labels


def cluster(catalog: Catalog, settings: ClusterSettings | None = None) -> ClusterSummary:
    """Give every face of the catalog a person (see the module's text); one transaction."""
    settings = settings or ClusterSettings()
    waiting = catalog.db.execute(
        "SELECT 1 FROM faces WHERE person_id IS NULL OR person_id NOT IN (SELECT id FROM people) LIMIT 1").fetchone()
    if not settings.full and waiting is None:
        return ClusterSummary(faces=catalog.count("faces"))  # every face has its person: nothing to read
    faces = stored_faces(catalog)
    summary = ClusterSummary(faces=len(faces.ids))
    people = {row[0]: (row[1], bool(row[2])) for row in catalog.db.execute("SELECT id, name, hidden FROM people")}
    person_ids = np.array([p if p in people else 0 for p in faces.person_ids.tolist()], np.int64)
    before = person_ids.copy()
    if settings.full:
        user_made = np.array([bool(people.get(p, (None, False))[0]) or people.get(p, (None, False))[1]
                              for p in person_ids.tolist()], bool)
        person_ids[~faces.pinned & ~user_made] = 0
    todo = np.flatnonzero(person_ids == 0)
    if len(todo):
        summary.joined = _join(faces.embeddings, person_ids, todo, settings)
        rest = np.flatnonzero(person_ids == 0)
        summary.grouped = len(rest)
    else:
        rest = todo
    new_groups: list[tuple[np.ndarray, int | None]] = []
    if len(rest):
        labels = group(faces.embeddings[rest], settings.threshold, settings.rounds, settings.seed, settings.join_threshold)
        taken = set(person_ids[person_ids != 0].tolist())
        for label in range(int(labels.max()) + 1):
            members = rest[labels == label]
            new_groups.append((members, _reusable(before[members], people, taken)))
    with catalog.transaction("BEGIN IMMEDIATE") as conn:
        for members, reuse in new_groups:
            if reuse is None:
                reuse = new_person(conn)
                summary.new_people += 1
            person_ids[members] = reuse
        changed = np.flatnonzero(person_ids != before)
        conn.executemany("UPDATE faces SET person_id = ? WHERE id = ?",
                         [(int(person_ids[i]), int(faces.ids[i])) for i in changed])
        # An unnamed, visible person left without faces is gone; a named or hidden one stays
        # (the user's word outlives the photos it was said about).
        conn.execute("DELETE FROM people WHERE name IS NULL AND hidden = 0 "
                     "AND id NOT IN (SELECT person_id FROM faces WHERE person_id IS NOT NULL)")
    return summary


def _join(embeddings: np.ndarray, person_ids: np.ndarray, todo: np.ndarray, settings: ClusterSettings) -> int:
    """Give each face in `todo` the existing person whose mean face is nearest within that
    person's distance (`join_threshold` for two faces or more, `threshold` for one)."""
    assigned = np.flatnonzero(person_ids != 0)
    if not len(assigned):
        return 0
    owners, inverse = np.unique(person_ids[assigned], return_inverse=True)
    sums = np.zeros((len(owners), embeddings.shape[1]), np.float64)
    np.add.at(sums, inverse, embeddings[assigned])
    counts = np.bincount(inverse)
    means = (sums / counts[:, None]).astype(np.float32)
    radii = np.where(counts >= 2, max(settings.threshold, settings.join_threshold), settings.threshold).astype(np.float32)
    nearest = _nearest_within(embeddings[todo], means, radii)
    found = nearest >= 0
    person_ids[todo[found]] = owners[nearest[found]]
    return int(found.sum())


def _nearest_within(x: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """For each row of `x`, the index of the nearest centre among those within their radius, or -1."""
    out = np.full(len(x), -1, np.int64)
    centre_squared = (centres * centres).sum(axis=1)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        d2 = (part * part).sum(axis=1)[:, None] + centre_squared[None, :] - 2.0 * part @ centres.T
        d2 = np.where(d2 < (radii * radii)[None, :], d2, np.inf)
        nearest = d2.argmin(axis=1)
        out[start : start + chunk] = np.where(np.isfinite(d2[np.arange(len(part)), nearest]), nearest, -1)
    return out


def _reusable(previous: np.ndarray, people: dict[int, tuple[str | None, bool]], taken: set[int]) -> int | None:
    """The unnamed person most of a regrouped group belonged to, if no other group has it yet."""
    votes = Counter(p for p in previous.tolist() if p and p in people and p not in taken)
    if not votes:
        return None
    best = votes.most_common(1)[0][0]
    taken.add(best)
    return int(best)
