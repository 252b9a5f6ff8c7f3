"""The faces and people of a catalog (schema 5): found faces written, read, and the user's corrections.

``faces`` rows are keyed by content hash like ``vectors`` (a moved or copied file keeps its
faces); ``face_scans`` says which contents were looked at, with 0 faces too, so a scan resumes;
``people`` are the groups, with the user's names and hidden flags. A face the user placed
(``pinned``) is never moved by clustering (retrieval/people/clustering.py). The schema is in
docs/people.md.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from retrieval.storage.catalog import Catalog, from_blobs, to_blob

#: Length of a stored face descriptor (dlib's ResNet model).
FACE_DIM = 128
#: The index meta key that says whether index runs look for faces.
FACES_META = "faces"


@dataclass(frozen=True)
class FaceScan:
    """What looking at one content found: its faces (objects with box, score, embedding), and
    which detector looked (``face_scans.detector``)."""

    hash: str
    faces: Sequence[Any]
    detector: str


@dataclass(frozen=True)
class StoredFaces:
    """Every stored face, as arrays in face-id order: what clustering reads."""

    ids: np.ndarray  # int64
    person_ids: np.ndarray  # int64, 0 where no person
    pinned: np.ndarray  # bool
    embeddings: np.ndarray  # float32 (n, 128)


def has_faces(catalog: Catalog) -> bool:
    """Whether the catalog has the faces tables (an index from before schema 5 has not, until migrated)."""
    return catalog.schema_version >= 5


def faces_on(catalog: Catalog) -> bool:
    """Whether index runs of this index look for faces (meta ``faces``)."""
    return bool(catalog.get_meta(FACES_META, False))


def put_scans(catalog: Catalog, scans: Iterable[FaceScan]) -> int:
    """Store each scanned content's faces and its scan, once per content; committed at once so a
    killed run keeps them. Returns how many faces were stored."""
    stored = 0
    with catalog.transaction() as conn:
        for scan in scans:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO face_scans (hash, faces, detector) VALUES (?, ?, ?)",
                (scan.hash, len(scan.faces), scan.detector),
            )
            if cursor.rowcount == 0:
                continue  # the same content met twice (copies), or scanned since
            conn.executemany(
                "INSERT INTO faces (hash, x, y, w, h, score, embedding) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(scan.hash, *(int(v) for v in face.box), float(face.score), to_blob(face.embedding))
                 for face in scan.faces],
            )
            stored += len(scan.faces)
    return stored


def scanned(catalog: Catalog, hashes: Iterable[str]) -> set[str]:
    """The hashes among `hashes` whose faces were looked for."""
    found: set[str] = set()
    values = sorted(set(hashes))
    for start in range(0, len(values), 500):
        part = values[start : start + 500]
        rows = catalog.db.execute(f"SELECT hash FROM face_scans WHERE hash IN ({','.join('?' * len(part))})", part)
        found.update(row[0] for row in rows)
    return found


def unscanned(catalog: Catalog) -> list[tuple[str, str]]:
    """(hash, path) of each indexed content whose faces were never looked for, one path per content."""
    return [
        (row[0], row[1]) for row in catalog.db.execute(
            "SELECT hash, min(path) FROM images WHERE status = 'ok' "
            "AND hash NOT IN (SELECT hash FROM face_scans) GROUP BY hash ORDER BY min(path)"
        )
    ]


def has_unscanned(catalog: Catalog) -> bool:
    """Whether some indexed content's faces were never looked for."""
    return catalog.db.execute(
        "SELECT 1 FROM images WHERE status = 'ok' AND hash NOT IN (SELECT hash FROM face_scans) LIMIT 1"
    ).fetchone() is not None


def stored_faces(catalog: Catalog) -> StoredFaces:
    rows = catalog.db.execute("SELECT id, person_id, pinned, embedding FROM faces ORDER BY id").fetchall()
    return StoredFaces(
        ids=np.array([r[0] for r in rows], np.int64),
        person_ids=np.array([r[1] or 0 for r in rows], np.int64),
        pinned=np.array([bool(r[2]) for r in rows], bool),
        embeddings=from_blobs((r[3] for r in rows), FACE_DIM) if rows else np.zeros((0, FACE_DIM), np.float32),
    )


def people_rows(catalog: Catalog, hidden: bool = False) -> list[dict[str, Any]]:
    """Every person with (id, name, hidden, count): count = the indexed images their faces are in;
    most images first. Hidden people only when `hidden`."""
    sql = (
        "SELECT people.id, people.name, people.hidden, count(DISTINCT images.id) AS n FROM people "
        "LEFT JOIN faces ON faces.person_id = people.id "
        "LEFT JOIN images ON images.hash = faces.hash AND images.status = 'ok' "
        f"{'' if hidden else 'WHERE people.hidden = 0 '}GROUP BY people.id ORDER BY n DESC, people.id"
    )
    return [{"id": r[0], "name": r[1], "hidden": bool(r[2]), "count": r[3]} for r in catalog.db.execute(sql)]


def person_faces(catalog: Catalog, person_id: int, limit: int | None = None) -> list[dict[str, Any]]:
    """A person's faces in indexed images: face id, image id, path and box (one row per face and file)."""
    sql = (
        "SELECT faces.id, images.id, images.path, faces.x, faces.y, faces.w, faces.h FROM faces "
        "JOIN images ON images.hash = faces.hash AND images.status = 'ok' "
        "WHERE faces.person_id = ? ORDER BY faces.score DESC, faces.id, images.id"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [{"face_id": r[0], "image_id": r[1], "path": r[2], "box": [r[3], r[4], r[5], r[6]]}
            for r in catalog.db.execute(sql, [person_id])]


def person(catalog: Catalog, person_id: int) -> dict[str, Any] | None:
    row = catalog.db.execute("SELECT id, name, hidden FROM people WHERE id = ?", [person_id]).fetchone()
    return None if row is None else {"id": row[0], "name": row[1], "hidden": bool(row[2])}


def person_named(catalog: Catalog, name: str) -> int | None:
    """The id of the person called `name` (case-insensitive), if any."""
    row = catalog.db.execute("SELECT id FROM people WHERE lower(name) = lower(?) ORDER BY id", [name]).fetchone()
    return None if row is None else int(row[0])


def face(catalog: Catalog, face_id: int) -> dict[str, Any] | None:
    row = catalog.db.execute("SELECT id, hash, person_id FROM faces WHERE id = ?", [face_id]).fetchone()
    return None if row is None else {"id": row[0], "hash": row[1], "person_id": row[2]}


def forget(catalog: Catalog) -> None:
    """Every face, scan and person gone, and index runs stop looking for faces."""
    with catalog.transaction("BEGIN IMMEDIATE") as conn:
        conn.execute("DELETE FROM faces")
        conn.execute("DELETE FROM face_scans")
        conn.execute("DELETE FROM people")
        catalog.set_meta(**{FACES_META: False})


def counts(catalog: Catalog) -> dict[str, int]:
    """Faces, scanned contents and people: what `retrieval info` and `check` report."""
    if not has_faces(catalog):
        return {"faces": 0, "face_scans": 0, "people": 0}
    return {table: catalog.count(table) for table in ("faces", "face_scans", "people")}


def new_person(conn: sqlite3.Connection) -> int:
    """A new, unnamed person (inside the caller's transaction); returns its id."""
    row_id = conn.execute("INSERT INTO people (name, hidden) VALUES (NULL, 0)").lastrowid
    if row_id is None:  # sqlite3 gives None only when no row was inserted, which an INSERT always does
        raise sqlite3.DatabaseError("no person was inserted")
    return int(row_id)
