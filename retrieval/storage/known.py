"""Which file contents already have a vector: a read-only view of the catalog's ``vectors`` table.

Decoding workers ask it for every file they hash, so a renamed, moved or touched photo is
never decoded again. It answers from the database rather than from a set handed to each
worker, so it costs the same memory for ten files or ten million. It needs only the
standard library's sqlite3 (not sqlite-utils), so a spawned worker that unpickles it still
starts in a fraction of a second.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class KnownHashes:
    """``digest in known`` is true when the catalog at `path` holds a vector for that content
    (and, with `faces`, has looked for its faces too: a run that finds faces decodes the rest)."""

    def __init__(self, path: str | Path, faces: bool = False):
        self.path = str(Path(path).resolve())
        self.faces = faces
        self._conn: sqlite3.Connection | None = None

    def __contains__(self, digest: object) -> bool:
        if self._conn is None:
            # Read-only, and a connection of its own: the indexer's writes commit batch by
            # batch, and WAL lets this reader see each commit without blocking the writer.
            uri = Path(self.path).as_uri() + "?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
        sql = "SELECT 1 FROM vectors WHERE hash = ?"
        if self.faces:
            sql += " AND EXISTS (SELECT 1 FROM face_scans WHERE face_scans.hash = vectors.hash)"
        row = self._conn.execute(sql, (digest,)).fetchone()
        return row is not None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # A connection cannot cross a process boundary; each worker opens its own.
    def __getstate__(self) -> dict:
        return {"path": self.path, "faces": self.faces}

    def __setstate__(self, state: dict) -> None:
        self.path, self.faces, self._conn = state["path"], state.get("faces", False), None
