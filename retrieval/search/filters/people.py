"""The people filter: images in which every named person has a face (``--person``, repeatable).

A person is given by name (case-insensitive, as ``people.name``) or by id (hidden people too:
hiding keeps a stranger out of listings, not out of a search that names them). Faces are keyed
by content hash (docs/people.md), so an image passes when its hash carries a face of each
person: one ``hash IN (SELECT hash FROM faces WHERE person_id = ?)`` per person, which SQLite
answers from the ``faces_person`` index. Who is in which image changes without a new
generation (merging, moving faces, clustering), so the passing ids are not part of a
generation's filter columns: they are looked up per query
(docs/people.md#searching-by-person); a long-lived searcher keeps the masks of people asked
for while nothing is committed to the catalog (:class:`PeopleMasks`).

An unknown name is one line naming the close names (difflib), never a traceback.
"""

from __future__ import annotations

import difflib
import threading
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np

from retrieval.search.filters.sql import Clause, FilterError
from retrieval.storage.catalog import Catalog

#: How a person's condition reads in SQL over ``images`` rows.
PERSON_SQL = "hash IN (SELECT hash FROM faces WHERE person_id = ?)"


def parse_people(value: str | int | Iterable[str | int] | None) -> tuple[str, ...]:
    """Names or ids as given (one or several), spaces tidied, empty ones and repeats dropped."""
    if value is None:
        return ()
    values = [value] if isinstance(value, str | int) else list(value)
    out: list[str] = []
    for item in values:
        text = " ".join(str(item).split())
        if text and text.lower() not in (o.lower() for o in out):
            out.append(text)
    return tuple(out)


def resolve_people(catalog: Catalog, refs: Iterable[str]) -> list[tuple[str, int]]:
    """(ref, person id) for each name or id; FilterError with close names for an unknown one."""
    refs = list(refs)
    if not refs:
        return []
    if catalog.schema_version < 5 or not catalog.db.execute("SELECT EXISTS (SELECT 1 FROM people)").fetchone()[0]:
        raise FilterError(
            f"--person {refs[0]}: {catalog.path.parent} has no people yet: run "
            f"`retrieval people scan --index {catalog.path.parent}` to find and group its faces"
        )
    out = []
    for ref in refs:
        if ref.isdigit():
            row = catalog.db.execute("SELECT id FROM people WHERE id = ?", [int(ref)]).fetchone()
        else:
            row = catalog.db.execute("SELECT id FROM people WHERE lower(name) = lower(?) ORDER BY id", [ref]).fetchone()
        if row is None:
            raise FilterError(_unknown(catalog, ref))
        out.append((ref, int(row[0])))
    return out


def _unknown(catalog: Catalog, ref: str) -> str:
    names = [r[0] for r in catalog.db.execute("SELECT name FROM people WHERE name IS NOT NULL ORDER BY name")]
    if ref.isdigit():
        return f"--person {ref}: no person has id {ref} in this index (`retrieval people` lists them)"
    if not names:
        return (f"--person {ref!r}: no one in this index has a name yet "
                "(`retrieval people` lists the groups found; `retrieval people name ID NAME` names one)")
    by_lower = {n.lower(): n for n in names}
    wanted = ref.lower()
    # A part of a name ("Obama" for "Barack Obama") is as close as a misspelling of the whole.
    close = [n for n in names if wanted in n.lower()]
    close += [by_lower[c] for c in difflib.get_close_matches(wanted, list(by_lower), n=3, cutoff=0.6)]
    words = {w: n for n in names for w in n.lower().split()}
    close += [words[c] for c in difflib.get_close_matches(wanted, list(words), n=3, cutoff=0.75)]
    close = list(dict.fromkeys(close))[:3]
    if close:
        return f"--person {ref!r}: no one has that name; did you mean {', '.join(close)}?"
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"--person {ref!r}: no one has that name (named people: {shown})"


def person_clauses(catalog: Catalog, refs: Iterable[str]) -> list[Clause]:
    """One condition over ``images`` per person: all of them must be in the image."""
    return [Clause(f"--person {ref}", PERSON_SQL, [person_id]) for ref, person_id in resolve_people(catalog, refs)]


def person_mask(catalog: Catalog, refs: Iterable[str], size: int, kept: PeopleMasks | None = None) -> np.ndarray:
    """Which ids (a bool array of `size`) show every one of the people `refs` name; `kept`: a
    long-lived caller's masks of recently asked people, reused while the catalog is unchanged."""
    keep = np.ones(size, bool)
    for _, person_id in resolve_people(catalog, refs):
        keep &= kept.mask(catalog, person_id, size) if kept is not None else _shows(catalog, person_id, size)
    return keep


def _shows(catalog: Catalog, person_id: int, size: int) -> np.ndarray:
    ids = np.fromiter((r[0] for r in catalog.db.execute(f"SELECT id FROM images WHERE {PERSON_SQL}", [person_id])),
                      np.int64)
    shows = np.zeros(size, bool)
    shows[ids[ids < size]] = True
    return shows


class PeopleMasks:
    """The masks of the people searched for lately, per catalog, while nothing was committed to it.

    Listing a person's photos costs a B-tree lookup per photo (about 60 ms for 10,000 of them at
    100,000 photos, docs/people.md#searching-by-person), far more than the search itself. Who is
    in which photo changes with any commit (an index run, clustering, a merge or move), by this
    connection or another, so a mask is kept only while the connection's ``data_version`` (commits
    by others) and ``total_changes`` (its own) stay as they were; thread-safe.
    """

    #: Masks kept per catalog at most (each a byte per image id).
    most = 32

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: weakref.WeakKeyDictionary[Catalog, tuple[tuple[int, ...], dict[int, np.ndarray]]] = (
            weakref.WeakKeyDictionary())

    def mask(self, catalog: Catalog, person_id: int, size: int) -> np.ndarray:
        """The photos showing `person_id` as a bool array of `size` (call inside the catalog's snapshot)."""
        conn = catalog.db.conn
        state = (catalog.generation, int(conn.execute("PRAGMA data_version").fetchone()[0]), conn.total_changes, size)
        with self._lock:
            kept_state, masks = self._kept.get(catalog, ((), {}))
            if kept_state == state and person_id in masks:
                return masks[person_id]
        shows = _shows(catalog, person_id, size)
        with self._lock:
            kept_state, masks = self._kept.get(catalog, ((), {}))
            if kept_state != state:
                masks = {}
            if len(masks) >= self.most:
                masks.pop(next(iter(masks)))
            masks[person_id] = shows
            self._kept[catalog] = (state, masks)
        return shows


def people_in(catalog: Catalog, image_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """Who is in each image: per image id, its faces with their person (``{"face_id", "box",
    "person_id", "name"}``, largest face first; a face not grouped yet has no person)."""
    ids = sorted({int(i) for i in image_ids})
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if catalog.schema_version < 5:
        return out
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        rows = catalog.db.execute(
            "SELECT images.id, faces.id, faces.x, faces.y, faces.w, faces.h, faces.person_id, people.name, "
            "coalesce(people.hidden, 0) FROM images JOIN faces ON faces.hash = images.hash "
            f"LEFT JOIN people ON people.id = faces.person_id WHERE images.id IN ({','.join('?' * len(part))}) "
            "ORDER BY images.id, faces.w * faces.h DESC, faces.id",
            part,
        )
        for image_id, face_id, x, y, w, h, person_id, name, hidden in rows:
            out[image_id].append({"face_id": face_id, "box": [x, y, w, h], "person_id": person_id, "name": name,
                                  "hidden": bool(hidden)})
    return out


def face_scores(catalog: Catalog, image_ids: Iterable[int], person_ids: list[int]) -> dict[int, float]:
    """Per image, the detector score of the named people's faces in it (the weakest person's
    best face): what a search by person alone ranks by (docs/people.md#searching-by-person)."""
    ids = sorted({int(i) for i in image_ids})
    out: dict[int, float] = {}
    if not person_ids:
        return out
    people = ",".join("?" * len(person_ids))
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        rows = catalog.db.execute(
            f"SELECT images.id, faces.person_id, max(faces.score) FROM images JOIN faces ON faces.hash = images.hash "
            f"WHERE images.id IN ({','.join('?' * len(part))}) AND faces.person_id IN ({people}) "
            "GROUP BY images.id, faces.person_id",
            [*part, *person_ids],
        )
        for image_id, _, score in rows:
            score = float(score or 0.0)
            out[image_id] = min(out.get(image_id, score), score)
    return out
