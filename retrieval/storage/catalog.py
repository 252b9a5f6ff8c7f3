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
- ``vectors.sameness`` (schema 3): a 64-bit perceptual hash of the pixels, for near-duplicates.
- ``cameras``: the distinct camera makes and models (schema 2), rebuilt at each publish
  so a camera filter never scans every image row.
- ``faces``, ``face_scans``, ``people`` (schema 5): faces found per content hash, the contents
  looked at, and the people faces are grouped into (retrieval/storage/faces.py, docs/people.md).
- ``meta``: schema version, aligner identity, dimension and the published generation.

Nothing a search sees changes until :meth:`Catalog.publishing` commits one transaction
that swaps in the new generation (see ``indexer.py``).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlite_utils

from retrieval.errors import RetrievalError
from retrieval.storage import frames
from retrieval.storage.known import KnownHashes

SCHEMA_VERSION = 5

#: Photo metadata on ``images`` (schema 2): EXIF date (or the file's mtime, see taken_source),
#: camera, GPS position and orientation. Filled by the indexer (retrieval.media.exif, staging.py).
PHOTO_COLUMNS = {
    "taken": "TEXT", "taken_offset": "TEXT", "taken_source": "TEXT", "camera_make": "TEXT",
    "camera_model": "TEXT", "lat": "REAL", "lon": "REAL", "orientation": "INTEGER",
}

#: Forward migrations: the statements that bring a catalog from version v - 1 to v. Adding
#: columns is instant in SQLite (no table rewrite), so a migration costs nothing at any size.
MIGRATIONS: dict[int, list[str]] = {
    2: [
        *(f"ALTER TABLE images ADD COLUMN {name} {kind}" for name, kind in PHOTO_COLUMNS.items()),
        "CREATE INDEX IF NOT EXISTS images_taken ON images(taken)",
        "CREATE INDEX IF NOT EXISTS images_lat ON images(lat)",
        "CREATE INDEX IF NOT EXISTS images_make ON images(camera_make)",
        "CREATE INDEX IF NOT EXISTS images_model ON images(camera_model)",
        # The distinct cameras, kept at publishing: a camera filter matches its text against
        # these few rows, then looks the images up by index instead of scanning every row.
        "CREATE TABLE IF NOT EXISTS cameras (make TEXT, model TEXT, images INTEGER NOT NULL)",
    ],
    # A perceptual hash of the pixels per stored content (retrieval.media.sameness), for
    # near-duplicates. NULL for contents stored before (filled when a run decodes them again).
    3: ["ALTER TABLE vectors ADD COLUMN sameness INTEGER"],
    # Phones' and cameras' media (HEIC/AVIF/RAW pairs, videos sampled into timed frames).
    4: [
        # A photo's other files (retrieval.media.files.FileStat): the RAW of a RAW+JPEG pair
        # (a JSON list of paths) and a Live Photo's motion file. NULL when it has none.
        "ALTER TABLE images ADD COLUMN companions TEXT",
        "ALTER TABLE images ADD COLUMN motion TEXT",
        # Videos' sampled frames, keyed by content like vectors (retrieval/storage/frames.py).
        *frames.MIGRATION,
    ],
    # People: the faces found in each stored content, and the people they are grouped into.
    # Keyed by content hash like ``vectors``, so a moved or copied file keeps its faces; boxes
    # are in the EXIF-rotated picture's pixels; ``pinned`` marks a face the user placed
    # (named, merged, moved), which clustering never moves. ``face_scans`` records every
    # content scanned, with 0 faces too, so `retrieval people scan` resumes (docs/people.md).
    5: [
        """CREATE TABLE IF NOT EXISTS faces (
            id INTEGER PRIMARY KEY, hash TEXT NOT NULL, x INTEGER, y INTEGER, w INTEGER, h INTEGER,
            score REAL, embedding BLOB NOT NULL, person_id INTEGER, pinned INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX IF NOT EXISTS faces_hash ON faces(hash)",
        "CREATE INDEX IF NOT EXISTS faces_person ON faces(person_id)",
        "CREATE TABLE IF NOT EXISTS people (id INTEGER PRIMARY KEY, name TEXT, hidden INTEGER NOT NULL DEFAULT 0)",
        "CREATE TABLE IF NOT EXISTS face_scans (hash TEXT PRIMARY KEY, faces INTEGER NOT NULL, detector TEXT)",
    ],
}
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


#: Rows per chunk when vectors are read in bulk: about 16 MB of 512-d vectors, so a pass over
#: a million images never holds more than one chunk of them.
CHUNK_ROWS = 8_192


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
        #: (path, size, mtime_ns, crc) of the FAISS files this catalog records that were read in
        #: full and found right since it was opened (retrieval/storage/integrity.py): a later
        #: search of the same file only compares size and mtime.
        self.verified_files: set[tuple[str, int, int, int]] = set()
        #: True when the folder cannot be written (a read-only mount): searches only.
        self.readonly = self.path.exists() and not os.access(self.path.parent, os.W_OK)
        if self.readonly:
            from retrieval.storage.readonly import connect_readonly

            self.db = sqlite_utils.Database(connect_readonly(self.path))
            return
        conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        # WAL lets searches read a consistent snapshot while an index run writes.
        self.db.enable_wal()
        for statement in _DDL:
            self.db.execute(statement)
        if self.get_meta("schema_version") is None:
            # The tables above are version 1; a new catalog climbs the migrations at once. Another
            # process may be creating the same catalog now (a search opening it as the first index
            # run makes it): its values stand (OR IGNORE), and migrate() reads the version under
            # its write lock. Setting 1 over that process's migrated catalog made every later run
            # fail on "duplicate column name" (a CI failure of the torture test, 2026-12-07).
            self.db.conn.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in {"schema_version": 1, "generation": 0, "next_id": 1}.items()],
            )
            self.migrate()

    # -- schema -----------------------------------------------------------
    @property
    def schema_version(self) -> int:
        return int(self.get_meta("schema_version", 1))

    @property
    def has_photo_meta(self) -> bool:
        """Whether ``images`` has the photo metadata columns (readers of an old catalog check this)."""
        return self.schema_version >= 2

    @property
    def has_frames(self) -> bool:
        """Whether the catalog has videos' frames (schema 4; retrieval/storage/frames.py)."""
        return self.schema_version >= 4

    @property
    def has_sameness(self) -> bool:
        """Whether ``vectors`` has the perceptual hash column (an index from before schema 3 has not)."""
        return self.schema_version >= 3

    def refresh_cameras(self) -> None:
        """Rebuild the ``cameras`` summary from ``images`` (inside the publishing transaction)."""
        self.db.conn.execute("DELETE FROM cameras")
        self.db.conn.execute(
            "INSERT INTO cameras (make, model, images) SELECT camera_make, camera_model, count(*) FROM images "
            "WHERE camera_make IS NOT NULL OR camera_model IS NOT NULL GROUP BY camera_make, camera_model"
        )

    def migrate(self) -> None:
        """Bring an older catalog up to SCHEMA_VERSION, in one transaction.

        Only the writer calls this (an index run, under its lock); searches read an old
        catalog as it is, so an old index keeps working until its next run upgrades it.
        """
        with self.transaction("BEGIN IMMEDIATE") as conn:
            version = self.schema_version
            if version > SCHEMA_VERSION:
                raise RetrievalError(
                    f"{self.path} has catalog schema {version}, newer than this version of retrieval "
                    f"understands ({SCHEMA_VERSION}): upgrade retrieval to write to it"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    conn.execute(statement)
                self.set_meta(schema_version=target)

    def close(self) -> None:
        self.db.conn.close()

    # -- meta -------------------------------------------------------------
    def get_meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, **values) -> None:
        # Plain SQL, not sqlite-utils: this also runs inside :meth:`publishing`'s transaction,
        # which a library call that commits on its own would end early.
        self.db.conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in values.items()],
        )

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation", 0))

    @property
    def dim(self) -> int | None:
        return self.get_meta("dim")

    def vector_dim(self) -> int:
        """The width of the stored vectors, which exist only once a model has been bound."""
        dim = self.dim
        if dim is None:
            raise RetrievalError(f"{self.path}: the catalog holds vectors but records no vector width")
        return dim

    # -- reads ------------------------------------------------------------
    def files(self) -> dict[str, FileRow]:
        cursor = self.db.execute(
            "SELECT id, path, size, mtime, hash, width, height FROM images"
        )
        return {row[1]: FileRow(*row) for row in cursor}

    def skipped(self) -> dict[str, tuple[int, float, str]]:
        cursor = self.db.execute("SELECT path, size, mtime, reason FROM skipped")
        return {row[0]: (row[1], row[2], row[3]) for row in cursor}

    def known_hashes(self, faces: bool = False) -> KnownHashes:
        """A lookup of stored vectors' hashes that worker processes can take with them (with
        `faces`: of contents whose faces were looked for too)."""
        return KnownHashes(self.path, faces)

    def missing_hashes(self, hashes: Iterable[str]) -> set[str]:
        """The hashes among `hashes` that have no stored vector."""
        wanted = set(hashes)
        cursors = self._where_in("SELECT hash FROM vectors WHERE hash IN ({marks})", sorted(wanted))
        return wanted - {row[0] for cursor in cursors for row in cursor}

    def count(self, table: str) -> int:
        return self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def image_vectors(self, chunk: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids, vectors) of every indexed image, in id order, `chunk` rows at a time: what
        the image index holds, so videos' frames after the first too (their ids follow every file's)."""
        yield from self.vector_chunks(
            "SELECT images.id, vectors.vector FROM images JOIN vectors USING (hash) "
            "WHERE images.id > ? ORDER BY images.id LIMIT ?",
            chunk,
        )
        if self.has_frames:
            yield from self.vector_chunks(frames.frames_sql("SELECT id, hash FROM images", True), chunk)

    def indexed_count(self) -> int:
        """How many vectors the image index holds: one per file, and a video's other frames."""
        extra = frames.extra_count(self.db.conn, "SELECT hash FROM images") if self.has_frames else 0
        return self.count("images") + extra

    def caption_vectors(self, chunk: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from self.vector_chunks("SELECT id, vector FROM captions WHERE id > ? ORDER BY id LIMIT ?", chunk)

    def vector_chunks(self, sql: str, chunk: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) from `sql`, which selects (id, vector) ``WHERE id > ? ORDER BY id LIMIT ?``, paged by id."""
        dim, last, chunk = self.dim, 0, chunk or CHUNK_ROWS
        while True:
            rows = self.db.execute(sql, [last, chunk]).fetchall()
            if not rows:
                return
            dim = dim or self.vector_dim()
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield ids, from_blobs((r[1] for r in rows), dim)
            last = int(ids[-1])

    def _where_in(self, sql: str, values: Iterable) -> Iterator[sqlite3.Cursor]:
        """Cursors of `sql` (its ``IN ({marks})`` list filled) over `values`, 500 at a time:
        SQLite limits the number of variables in one statement."""
        values = list(values)
        for start in range(0, len(values), 500):
            part = values[start : start + 500]
            yield self.db.execute(sql.format(marks=",".join("?" * len(part))), part)

    def vectors_by_hash(self, hashes: list[str]) -> dict[str, np.ndarray]:
        sql = "SELECT hash, vector FROM vectors WHERE hash IN ({marks})"
        dim = self.vector_dim() if hashes else 0
        return {h: from_blobs([blob], dim)[0] for cursor in self._where_in(sql, hashes) for h, blob in cursor}

    def image_vectors_by_id(self, ids: list[int]) -> dict[int, np.ndarray]:
        """Exact vectors of indexed images, for re-scoring candidates from a compressed index."""
        sql = "SELECT images.id, vectors.vector FROM images JOIN vectors USING (hash) WHERE images.id IN ({marks})"
        ids = [int(i) for i in ids]
        dim = self.vector_dim() if ids else 0
        later = [i for i in ids if i >= frames.FRAME_STEP]  # videos' frames after the first
        out = {i: from_blobs([blob], dim)[0] for cursor in self._where_in(sql, ids) for i, blob in cursor}
        if later:
            out.update(frames.frame_vectors_by_id(self.db.conn, later, dim))
        return out

    def sameness_by_id(self, ids: Iterable[int]) -> dict[int, int]:
        """Perceptual hashes of indexed images by id; images without one are left out."""
        if not self.has_sameness:
            return {}
        sql = ("SELECT images.id, vectors.sameness FROM images JOIN vectors USING (hash) "
               "WHERE vectors.sameness IS NOT NULL AND images.id IN ({marks})")
        return {i: h for cursor in self._where_in(sql, [int(i) for i in ids]) for i, h in cursor}

    def rows_by_id(self, table: str, ids: list[int]) -> dict[int, dict]:
        """Look up catalog rows for FAISS ids (``images`` or ``captions``)."""
        cols = "id, path, size, width, height" if table == "images" else "id, text"
        if table == "images" and self.has_pairs():
            cols += ", companions, motion"  # a photo's RAW and a Live Photo's motion file (schema 4)
        out: dict[int, dict] = {}
        for cursor in self._where_in(f"SELECT {cols} FROM {table} WHERE id IN ({{marks}})", [int(i) for i in ids]):
            names = [d[0] for d in cursor.description]
            for row in cursor:
                out[row[0]] = dict(zip(names, row))
        return out

    def has_pairs(self) -> bool:
        """Whether ``images`` has schema 4's companions and motion columns: an index on a read-only
        mount is searched as its older schema left it."""
        return any(row[1] == "companions" for row in self.db.conn.execute("PRAGMA table_info(images)"))

    def dates_by_id(self, ids: list[int]) -> dict[int, tuple[str | None, str | None]]:
        """(taken, taken_source) of images by id: the date filters compare, and whether EXIF or the file gave it."""
        sql = "SELECT id, taken, taken_source FROM images WHERE id IN ({marks})"
        return {row[0]: (row[1], row[2]) for cursor in self._where_in(sql, [int(i) for i in ids]) for row in cursor}

    def snapshot(self):
        """A read transaction: everything read inside it belongs to one generation."""
        return self.transaction()

    # -- writes -----------------------------------------------------------
    @contextmanager
    def quick_commits(self) -> Iterator[None]:
        """Commit without waiting for the disk while vectors stream in, then restore the setting.

        In WAL mode, ``synchronous=NORMAL`` commits write to the log without an fsync, which on
        a busy disk costs far more than the write and, several times a second, would stall the
        encoder (docs/indexing.md#commits-while-vectors-stream-in). A killed process loses
        nothing (the log is in the OS's cache); a power cut
        may lose the last few commits, and those images are simply encoded again by the next
        run. Publishing happens after the setting is restored, with full durability.
        """
        before = int(self.db.execute("PRAGMA synchronous").fetchone()[0])
        self.db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self.db.execute(f"PRAGMA synchronous={before}")

    @contextmanager
    def transaction(self, begin: str = "BEGIN") -> Iterator[sqlite3.Connection]:
        """An explicit transaction on this connection, rolled back if anything raises.

        The connection is in autocommit mode, where each statement, and each row of an
        executemany, would otherwise be a commit of its own. Inside another transaction on
        this connection the block joins it: the outer one commits (the Ray driver commits a
        ready set's vectors and file rows together this way).
        """
        conn = self.db.conn
        if conn.in_transaction:
            yield conn
            return
        conn.execute(begin)
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def put_vectors(
        self, rows: list[tuple[str, np.ndarray, int, int]], sameness: Sequence[int | None] | None = None,
    ) -> None:
        """Store freshly encoded vectors, with each one's perceptual hash if given (same order);
        committed at once so a killed run keeps them."""
        hashes = list(sameness) if sameness is not None else [None] * len(rows)
        with self.transaction() as conn:
            if self.has_sameness:
                conn.executemany(
                    "INSERT OR REPLACE INTO vectors (hash, vector, width, height, sameness) VALUES (?, ?, ?, ?, ?)",
                    [(h, to_blob(v), w, ht, p) for (h, v, w, ht), p in zip(rows, hashes)],
                )
                return
            conn.executemany(
                "INSERT OR REPLACE INTO vectors (hash, vector, width, height) VALUES (?, ?, ?, ?)",
                [(h, to_blob(v), w, ht) for h, v, w, ht in rows],
            )

    @contextmanager
    def publishing(self) -> Iterator[sqlite3.Connection]:
        """The one transaction in which a run's changes and its new generation become visible.

        The caller changes rows and sets ``generation`` inside it; searches (other
        connections, WAL) keep reading the previous generation until it commits, and a run
        that dies inside it leaves the catalog as it was.
        """
        with self.transaction("BEGIN IMMEDIATE") as conn:
            yield conn
            # Vectors no file refers to any more are dead weight once the run is published.
            conn.execute("DELETE FROM vectors WHERE hash NOT IN (SELECT hash FROM images)")
            if self.has_frames:
                conn.execute("DELETE FROM frames WHERE hash NOT IN (SELECT hash FROM images)")
            if self.schema_version >= 5:  # faces too (people are kept: names outlive their photos)
                conn.execute("DELETE FROM faces WHERE hash NOT IN (SELECT hash FROM images)")
                conn.execute("DELETE FROM face_scans WHERE hash NOT IN (SELECT hash FROM images)")

    def put_video(
        self, digest: str, seconds: list[float], vectors: np.ndarray, width: int, height: int, sameness: int | None,
    ) -> None:
        """Store a video content's sampled frames (times in seconds, vectors in the same order):
        frame 0 as its ``vectors`` row, every frame in ``frames``; committed at once, all or nothing."""
        blobs = [to_blob(v) for v in vectors]
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO vectors (hash, vector, width, height, sameness, frames) VALUES (?, ?, ?, ?, ?, ?)",
                (digest, blobs[0], width, height, sameness, len(blobs)),
            )
            frames.put(conn, digest, seconds, blobs)

    def replace_captions(self, captions: list[dict]) -> None:
        """The caption corpus, replaced whole (inside :meth:`publishing`)."""
        self.db.conn.execute("DELETE FROM captions")
        self.db.conn.executemany("INSERT INTO captions (id, text, vector) VALUES (:id, :text, :vector)", captions)


def open_catalog(folder: Path) -> Catalog:
    return Catalog(Path(folder) / CATALOG_FILE)
