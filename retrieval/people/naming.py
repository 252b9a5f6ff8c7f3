"""The user's requests on people: list, name, merge, move faces, hide, forget.

Each correction is stored so that clustering keeps it (retrieval/people/clustering.py): the
faces of a named or hidden person stay with it, a face moved or merged is pinned to its
person, and ids of named people never change. A person is given by id or by name
(case-insensitive). Every mistake (an unknown id, a name another person has) is a
:class:`~retrieval.errors.PeopleError` with one line.
"""

from __future__ import annotations

from typing import Any

from retrieval.errors import PeopleError
from retrieval.storage import faces as tables
from retrieval.storage.catalog import Catalog


def _require_faces(catalog: Catalog) -> None:
    if not tables.has_faces(catalog):
        raise PeopleError(f"{catalog.path.parent} has no faces yet: run `retrieval people scan` on it")


def resolve(catalog: Catalog, ref: str | int) -> int:
    """The id of the person `ref` names: an id, or a name (case-insensitive)."""
    _require_faces(catalog)
    text = str(ref).strip()
    if text.isdigit():
        if tables.person(catalog, int(text)) is None:
            raise PeopleError(f"no person {text} in this index (`retrieval people` lists them)")
        return int(text)
    found = tables.person_named(catalog, text)
    if found is None:
        raise PeopleError(f"no person named {text!r} in this index (`retrieval people` lists them)")
    return found


def listing(catalog: Catalog, hidden: bool = False, faces_each: int | None = None) -> list[dict[str, Any]]:
    """People with counts and their faces: ``{"id", "name", "count", "faces": [{"image_id", "path", "box"}]}``
    (plus ``hidden`` and each face's ``face_id``); `faces_each` caps the faces listed per person."""
    if not tables.has_faces(catalog):
        return []
    out = []
    for row in tables.people_rows(catalog, hidden):
        faces = tables.person_faces(catalog, row["id"], faces_each)
        out.append({**row, "faces": faces})
    return out


def name(catalog: Catalog, ref: str | int, new_name: str, merge: bool = False) -> int:
    """Name a person. A name another person has is refused, or with `merge` this person joins
    that one (whose id stays). Returns the id of the person now called `new_name`."""
    person_id = resolve(catalog, ref)
    new_name = " ".join(new_name.split())
    if not new_name:
        raise PeopleError("a person's name cannot be empty")
    if new_name.isdigit():
        raise PeopleError(f"a name cannot be a number ({new_name} would read as a person's id)")
    other = tables.person_named(catalog, new_name)
    if other is not None and other != person_id:
        if not merge:
            taken = (tables.person(catalog, other) or {}).get("name") or new_name
            raise PeopleError(f"person {other} is already called {taken!r}: add --merge to make them one person")
        merge_people(catalog, other, person_id)
        person_id = other
    with catalog.transaction("BEGIN IMMEDIATE") as conn:
        conn.execute("UPDATE people SET name = ? WHERE id = ?", (new_name, person_id))
    return person_id


def merge_people(catalog: Catalog, keep: str | int, other: str | int) -> int:
    """Move every face of `other` to `keep` (pinned there) and remove `other`. `keep` takes
    `other`'s name when it has none. Returns `keep`'s id."""
    keep_id, other_id = resolve(catalog, keep), resolve(catalog, other)
    if keep_id == other_id:
        raise PeopleError(f"person {keep_id} cannot be merged with itself")
    kept, gone = tables.person(catalog, keep_id), tables.person(catalog, other_id)
    assert kept is not None and gone is not None
    with catalog.transaction("BEGIN IMMEDIATE") as conn:
        conn.execute("UPDATE faces SET person_id = ?, pinned = 1 WHERE person_id = ?", (keep_id, other_id))
        # Its own faces are the user's now too: a full regrouping must not take them apart again.
        conn.execute("UPDATE faces SET pinned = 1 WHERE person_id = ?", (keep_id,))
        if not kept["name"] and gone["name"]:
            conn.execute("UPDATE people SET name = ? WHERE id = ?", (gone["name"], keep_id))
        conn.execute("DELETE FROM people WHERE id = ?", (other_id,))
    return keep_id


def move(catalog: Catalog, face_ids: list[int], to: str | int) -> int:
    """Move faces to a person (`to` = "new" makes a new person of them: a split); they stay
    there whatever clustering later finds. Returns the person's id."""
    _require_faces(catalog)
    for face_id in face_ids:
        if tables.face(catalog, face_id) is None:
            raise PeopleError(f"no face {face_id} in this index (`retrieval people --json` lists face ids)")
    with catalog.transaction("BEGIN IMMEDIATE") as conn:
        if str(to).strip().lower() == "new":
            person_id = tables.new_person(conn)
        else:
            person_id = resolve(catalog, to)
        conn.executemany("UPDATE faces SET person_id = ?, pinned = 1 WHERE id = ?", [(person_id, f) for f in face_ids])
        # The person a face left, empty now and unnamed, goes.
        conn.execute("DELETE FROM people WHERE name IS NULL AND hidden = 0 "
                     "AND id NOT IN (SELECT person_id FROM faces WHERE person_id IS NOT NULL)")
    return person_id


def hide(catalog: Catalog, ref: str | int, hidden: bool = True) -> int:
    """Leave a person (a stranger in the background) out of listings, or show them again."""
    person_id = resolve(catalog, ref)
    with catalog.transaction("BEGIN IMMEDIATE") as conn:
        conn.execute("UPDATE people SET hidden = ? WHERE id = ?", (int(hidden), person_id))
    return person_id


def forget(catalog: Catalog) -> dict[str, int]:
    """Remove every face, scan and person; index runs stop looking for faces. Returns what was removed."""
    removed = tables.counts(catalog)
    if tables.has_faces(catalog):
        tables.forget(catalog)
    return removed
