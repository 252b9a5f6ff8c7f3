"""The catalog: a SQLite database (through sqlite-utils) that is the truth about an index.

Tables:
- ``images``: one row per indexed file. Its ``id`` is the FAISS id; ids are handed out
  from ``meta.next_id`` and never reused, so a stale FAISS file can never point at a
  different picture.
- ``vectors``: image vectors keyed by content hash. Identical files share one row, a
  moved file finds its vector again, and rows are committed batch by batch so an
  interrupted run resumes without re-encoding.
- ``skipped``: files that could not be indexed, with the reason.
- ``captions``: a caption corpus for image-to-text search, with vectors.
- ``meta``: schema version, aligner identity, dimension and the published generation.

Nothing a search sees changes until :meth:`Catalog.publish` commits one transaction
that swaps in the new generation (see ``indexer.py``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlite_utils

SCHEMA_VERSION = 1
CATALOG_FILE = "catalog.db"

_DDL = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    """CREATE TABLE IF NOT EXISTS images (
        id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, size INTEGER, mtime REAL,
        hash TEXT NOT NULL, width INTEGER, height INTEGER, status TEXT NOT NULL DEFAULT 'ok')""",
    "CREATE INDEX IF NOT EXISTS images_hash ON images(hash)",
    """CREATE TABLE IF NOT EXISTS vectors (
        hash TEXT PRIMARY KEY, vector BLOB NOT NULL, width INTEGER, height INTEGER)""",
    """CREATE TABLE IF NOT EXISTS skipped (
        path TEXT PRIMARY KEY, size INTEGER, mtime REAL, reason TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS captions (
        id INTEGER PRIMARY KEY, text TEXT UNIQUE NOT NULL, vector BLOB NOT NULL)""",
]


def to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_blobs(blobs: Iterable[bytes], dim: int) -> np.ndarray:
    data = b"".join(blobs)
    return np.frombuffer(data, dtype="<f4").reshape(-1, dim).astype(np.float32, copy=True)


@dataclass(frozen=True)
class FileRow:
    id: int
    path: str
    size: int
    mtime: float
    hash: str
    width: int
    height: int


class Catalog:
    """A catalog database in an index folder. Open with :func:`open_catalog`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        # WAL lets searches read a consistent snapshot while an index run writes.
        self.db.enable_wal()
        for statement in _DDL:
            self.db.execute(statement)
        if self.get_meta("schema_version") is None:
            self.set_meta(schema_version=SCHEMA_VERSION, generation=0, next_id=1)

    def close(self) -> None:
        self.db.conn.close()

    # -- meta -------------------------------------------------------------
    def get_meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, **values) -> None:
        self.db["meta"].upsert_all(
            [{"key": k, "value": json.dumps(v)} for k, v in values.items()], pk="key"
        )

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation", 0))

    @property
    def dim(self) -> int | None:
        return self.get_meta("dim")

    # -- reads ------------------------------------------------------------
    def files(self) -> dict[str, FileRow]:
        cursor = self.db.execute(
            "SELECT id, path, size, mtime, hash, width, height FROM images"
        )
        return {row[1]: FileRow(*row) for row in cursor}

    def skipped(self) -> dict[str, tuple[int, float, str]]:
        cursor = self.db.execute("SELECT path, size, mtime, reason FROM skipped")
        return {row[0]: (row[1], row[2], row[3]) for row in cursor}

    def known_hashes(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT hash FROM vectors")}

    def count(self, table: str) -> int:
        return self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def image_vectors(self, chunk: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids, vectors) of every indexed image, in id order, `chunk` rows at a time."""
        yield from self._chunks(
            "SELECT images.id, vectors.vector FROM images JOIN vectors USING (hash) "
            "WHERE images.id > ? ORDER BY images.id LIMIT ?",
            chunk,
        )

    def caption_vectors(self, chunk: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from self._chunks(
            "SELECT id, vector FROM captions WHERE id > ? ORDER BY id LIMIT ?", chunk
        )

    def _chunks(self, sql: str, chunk: int):
        dim, last = self.dim, 0
        while True:
            rows = self.db.execute(sql, [last, chunk]).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield ids, from_blobs((r[1] for r in rows), dim)
            last = int(ids[-1])

    def vectors_by_hash(self, hashes: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(hashes), 500):
            part = hashes[start : start + 500]
            marks = ",".join("?" * len(part))
            for h, blob in self.db.execute(
                f"SELECT hash, vector FROM vectors WHERE hash IN ({marks})", part
            ):
                out[h] = from_blobs([blob], self.dim)[0]
        return out

    def rows_by_id(self, table: str, ids: list[int]) -> dict[int, dict]:
        """Look up catalog rows for FAISS ids (``images`` or ``captions``)."""
        cols = "id, path, size, width, height" if table == "images" else "id, text"
        out: dict[int, dict] = {}
        for start in range(0, len(ids), 500):
            part = [int(i) for i in ids[start : start + 500]]
            marks = ",".join("?" * len(part))
            cursor = self.db.execute(f"SELECT {cols} FROM {table} WHERE id IN ({marks})", part)
            names = [d[0] for d in cursor.description]
            for row in cursor:
                out[row[0]] = dict(zip(names, row))
        return out

    def snapshot(self):
        """A read transaction: everything read inside it belongs to one generation."""
        return _ReadTransaction(self.db.conn)

    # -- writes -----------------------------------------------------------
    @contextmanager
    def quick_commits(self) -> Iterator[None]:
        """Commit without waiting for the disk while vectors stream in, then restore the setting.

        In WAL mode, ``synchronous=NORMAL`` commits write to the log without an fsync: a commit
        costs about 1 ms instead of about 100 ms here (10 fsyncs a second would stall the
        encoder). A killed process loses nothing (the log is in the OS's cache); a power cut
        may lose the last few commits, and those images are simply encoded again by the next
        run. Publishing happens after the setting is restored, with full durability.
        """
        before = int(self.db.execute("PRAGMA synchronous").fetchone()[0])
        self.db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self.db.execute(f"PRAGMA synchronous={before}")

    def put_vectors(self, rows: list[tuple[str, np.ndarray, int, int]]) -> None:
        """Store freshly encoded vectors; committed at once so a killed run keeps them."""
        with self.db.conn:
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO vectors (hash, vector, width, height) VALUES (?, ?, ?, ?)",
                [(h, to_blob(v), w, ht) for h, v, w, ht in rows],
            )

    def allocate_ids(self, n: int) -> np.ndarray:
        """Reserve `n` fresh ids. They are only committed by :meth:`publish`."""
        start = int(self.get_meta("next_id", 1))
        return np.arange(start, start + n, dtype=np.int64)

    def publish(
        self,
        *,
        upserts: list[dict],
        deletes: list[int],
        skipped: list[dict],
        captions: list[dict] | None,
        next_id: int,
        generation: int,
        extra_meta: dict | None = None,
    ) -> None:
        """Commit one run's changes and its generation in a single transaction."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(deletes), 500):
                part = deletes[start : start + 500]
                conn.execute(
                    f"DELETE FROM images WHERE id IN ({','.join('?' * len(part))})", part
                )
            conn.executemany(
                "INSERT OR REPLACE INTO images (id, path, size, mtime, hash, width, height, status)"
                " VALUES (:id, :path, :size, :mtime, :hash, :width, :height, 'ok')",
                upserts,
            )
            conn.execute("DELETE FROM skipped")
            conn.executemany(
                "INSERT INTO skipped (path, size, mtime, reason) VALUES (:path, :size, :mtime, :reason)",
                skipped,
            )
            if captions is not None:
                conn.execute("DELETE FROM captions")
                conn.executemany(
                    "INSERT INTO captions (id, text, vector) VALUES (:id, :text, :vector)",
                    captions,
                )
            # Vectors no file refers to any more are dead weight once the run is published.
            conn.execute("DELETE FROM vectors WHERE hash NOT IN (SELECT hash FROM images)")
            meta = {"next_id": next_id, "generation": generation, **(extra_meta or {})}
            conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in meta.items()],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


class _ReadTransaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN")
        return self

    def __exit__(self, *exc):
        self.conn.execute("COMMIT")
        return False


def open_catalog(folder: Path) -> Catalog:
    return Catalog(Path(folder) / CATALOG_FILE)
