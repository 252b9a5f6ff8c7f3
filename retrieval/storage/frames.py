"""Videos' sampled frames in the catalog: their table, their FAISS ids, and reading them back.

A video is indexed like a photo, plus its frames. Its ``images`` row (one per file) and its
``vectors`` row (one per content, ``vectors.frames`` = how many frames were sampled) hold
frame 0; the ``frames`` table holds every sampled frame of a content, keyed by content hash
like ``vectors``, so a copy shares them, a moved or renamed video finds them again, and an
unchanged video is never decoded again.

FAISS ids: a photo's id is its ``images.id``, as always, so an index from before videos keeps
working. Frame n of the video whose ``images.id`` is i has id ``i + n * FRAME_STEP``: frame 0
is the file's own id, and ``id % FRAME_STEP`` gives any frame's file back without a lookup
(ids are handed out from 1 and never reach 2**40, a trillion files). So a filter on the file
(date, folder, camera) applies to its frames, and search results group by file.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator

import numpy as np

#: Distance between the ids of one video's consecutive frames (see the module docstring).
FRAME_STEP = 1 << 40

#: The catalog's statements for frames (schema 4, catalog.MIGRATIONS).
MIGRATION = (
    # Sampled frames per video content: n from 0 in time order, time in seconds.
    """CREATE TABLE IF NOT EXISTS frames (
        hash TEXT NOT NULL, n INTEGER NOT NULL, time REAL NOT NULL, vector BLOB NOT NULL,
        PRIMARY KEY (hash, n)) WITHOUT ROWID""",
    # How many frames a content's video was sampled into; NULL for a photo.
    "ALTER TABLE vectors ADD COLUMN frames INTEGER",
    "CREATE INDEX IF NOT EXISTS vectors_video ON vectors(frames) WHERE frames IS NOT NULL",
)


def file_ids(ids: np.ndarray) -> np.ndarray:
    """The ``images.id`` of each FAISS id (a photo's is itself); -1 stays -1."""
    ids = np.asarray(ids, np.int64)
    return np.where(ids >= 0, ids % FRAME_STEP, ids)


def frame_numbers(ids: np.ndarray) -> np.ndarray:
    """Which frame of its video each FAISS id is (0 for a photo and for a video's first frame)."""
    ids = np.asarray(ids, np.int64)
    return np.where(ids >= 0, ids // FRAME_STEP, 0)


def _where_in(conn: sqlite3.Connection, sql: str, values: list) -> Iterator[tuple]:
    for start in range(0, len(values), 500):
        part = values[start : start + 500]
        yield from conn.execute(sql.format(marks=",".join("?" * len(part))), part)


def videos(conn: sqlite3.Connection, image_ids: Iterable[int] | None = None) -> dict[int, int]:
    """{images.id: frames} of the videos among `image_ids` (every video when None)."""
    base = "SELECT images.id, vectors.frames FROM images JOIN vectors USING (hash) WHERE vectors.frames IS NOT NULL"
    if image_ids is None:
        return {i: n for i, n in conn.execute(base)}
    return {i: n for i, n in _where_in(conn, base + " AND images.id IN ({marks})", sorted({int(i) for i in image_ids}))}


def counts(conn: sqlite3.Connection) -> tuple[int, int]:
    """(video files, their frames): a copy counts as a file, its frames once per file as it searches."""
    row = conn.execute(
        "SELECT count(*), coalesce(sum(vectors.frames), 0) FROM images JOIN vectors USING (hash) "
        "WHERE vectors.frames IS NOT NULL"
    ).fetchone()
    return int(row[0]), int(row[1])


def with_frames(conn: sqlite3.Connection, image_ids: np.ndarray) -> np.ndarray:
    """`image_ids` and the ids of every frame of the videos among them (for a filter's passing set)."""
    found = videos(conn, image_ids.tolist()) if len(image_ids) else {}
    extra = [i + n * FRAME_STEP for i, count in found.items() for n in range(1, count)]
    if not extra:
        return image_ids
    return np.sort(np.concatenate([np.asarray(image_ids, np.int64), np.asarray(extra, np.int64)]))


def extra_count(conn: sqlite3.Connection, sql: str, args: tuple = ()) -> int:
    """Frames beyond the first of the contents `sql` selects (``SELECT hash ...``): the FAISS rows
    they add beside one row per file."""
    row = conn.execute(
        f"SELECT coalesce(sum(v.frames - 1), 0) FROM ({sql}) s JOIN vectors v ON v.hash = s.hash "
        "WHERE v.frames IS NOT NULL", args,
    ).fetchone()
    return int(row[0] or 0)


def frame_vectors_by_id(conn: sqlite3.Connection, ids: list[int], dim: int) -> dict[int, np.ndarray]:
    """Stored vectors of frame ids (n >= 1): the file's content, then its frame n."""
    wanted = {int(i) for i in ids}
    owners = sorted({i % FRAME_STEP for i in wanted})
    sql = "SELECT images.id, frames.n, frames.vector FROM images JOIN frames USING (hash) WHERE images.id IN ({marks})"
    out: dict[int, np.ndarray] = {}
    for image_id, n, blob in _where_in(conn, sql, owners):
        fid = image_id + n * FRAME_STEP
        if fid in wanted:
            out[fid] = np.frombuffer(blob, dtype="<f4").astype(np.float32)[:dim]
    return out


def times(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, float]:
    """{FAISS id: seconds into its video} for the frame ids among `ids` (frame 0 included)."""
    ids = [int(i) for i in ids]
    owners = videos(conn, {i % FRAME_STEP for i in ids})
    if not owners:
        return {}
    wanted = {i for i in ids if i % FRAME_STEP in owners}
    sql = "SELECT images.id, frames.n, frames.time FROM images JOIN frames USING (hash) WHERE images.id IN ({marks})"
    out = {}
    for image_id, n, seconds in _where_in(conn, sql, sorted(owners)):
        fid = image_id + n * FRAME_STEP
        if fid in wanted:
            out[fid] = float(seconds)
    return out


def put(conn: sqlite3.Connection, digest: str, seconds: list[float], blobs: list[bytes]) -> None:
    """A content's frames, replacing any it had (inside the caller's transaction)."""
    conn.execute("DELETE FROM frames WHERE hash = ?", (digest,))
    conn.executemany(
        "INSERT INTO frames (hash, n, time, vector) VALUES (?, ?, ?, ?)",
        [(digest, n, float(t), blob) for n, (t, blob) in enumerate(zip(seconds, blobs))],
    )


#: Every frame beyond the first, with its FAISS id, ascending by id: ``{rows}`` names the rows
#: (id, hash) whose videos are read, ``{join}`` how they meet the frames (see frames_sql).
_FRAMES_BY_ID = (
    "SELECT fid, vector FROM (SELECT s.id + f.n * {step} AS fid, f.vector AS vector FROM {join} "
    "WHERE f.n > 0) WHERE fid > ? ORDER BY fid LIMIT ?"
)


def frames_sql(rows: str, indexed_by_hash: bool) -> str:
    """SQL for :meth:`Catalog.vector_chunks` over the frames (n >= 1) of the rows `rows` selects (id, hash).

    `indexed_by_hash`: `rows` come from a table with an index on hash (``images``), so the loop
    runs over the frames, a few per video, and finds their files by it; otherwise (a run's
    staging table) over the rows, each finding its frames by the frames' primary key. CROSS
    JOIN fixes that order: left to itself SQLite would scan every image for every page."""
    join = f"frames f CROSS JOIN ({rows}) s ON s.hash = f.hash" if indexed_by_hash else \
        f"({rows}) s CROSS JOIN frames f ON f.hash = s.hash"
    return _FRAMES_BY_ID.format(step=FRAME_STEP, join=join)


# -- import (retrieval/ingest/embeddings.py) -----------------------------------------------
#: An import gathers videos' frames here until every row of the export is read: an export lists
#: rows by FAISS id, so every file's first frame comes before any video's second, and a video's
#: frames lie far apart in it. A temporary table: it lives on disk beside the catalog, not in memory.
_STAGE = """CREATE TEMP TABLE IF NOT EXISTS import_frames (
    file INTEGER NOT NULL, n INTEGER NOT NULL, path TEXT NOT NULL, time REAL NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (file, n)) WITHOUT ROWID"""


def import_digest(data: bytes) -> str:
    """The content hash of an imported row, which has no file to hash: ``import:`` and a digest
    of what it holds (a photo's vector: exchange.import_hash; a video's frames and times)."""
    return "import:" + hashlib.sha256(data).hexdigest()[:40]


def stage_imported(conn: sqlite3.Connection, rows: list[tuple[int, int, str, float, bytes]]) -> int:
    """Keep imported frame rows (file id, frame number, path, seconds, vector blob) until
    :func:`settle_imported`; returns how many were new (a repeated (file, frame) is not)."""
    conn.execute(_STAGE)
    before = conn.total_changes
    conn.executemany("INSERT OR IGNORE INTO import_frames (file, n, path, time, vector) VALUES (?, ?, ?, ?, ?)", rows)
    return conn.total_changes - before


def staged_conflict(conn: sqlite3.Connection) -> tuple[int, list[str]] | None:
    """A staged video whose frame rows name more than one path: (file id, its paths), or None."""
    conn.execute(_STAGE)
    row = conn.execute("SELECT file FROM import_frames GROUP BY file HAVING count(DISTINCT path) > 1 LIMIT 1").fetchone()
    if row is None:
        return None
    return int(row[0]), [p for (p,) in conn.execute("SELECT DISTINCT path FROM import_frames WHERE file = ?", row)]


def settle_imported(conn: sqlite3.Connection) -> int:
    """Turn the staged frames into catalog rows as an index run stores a video: per file, its
    ``images`` row (its id, its path; size and time unknown as for any imported row), one
    ``vectors`` row holding its first frame with ``frames`` = how many, and its frames, renumbered
    0, 1, 2... in their order (what FAISS ids and the search assume). The content hash is
    ``import:`` and a digest of every frame's vector and time, so copies of one video share their
    frames as copies of a file do, and two videos that only begin alike do not. Returns how many
    videos; the staging table is emptied (inside the caller's transaction)."""
    conn.execute(_STAGE)
    videos = [(int(f), str(p)) for f, p in conn.execute("SELECT file, min(path) FROM import_frames GROUP BY file ORDER BY file")]
    for file, path in videos:
        rows = conn.execute("SELECT time, vector FROM import_frames WHERE file = ? ORDER BY n", (file,)).fetchall()
        seconds, blobs = [float(t) for t, _ in rows], [bytes(b) for _, b in rows]
        digest = import_digest(b"".join(blobs) + np.asarray(seconds, "<f8").tobytes())
        known = conn.execute("SELECT 1 FROM vectors WHERE hash = ?", (digest,)).fetchone()
        if known is None:  # a copy of a video already settled shares its rows
            conn.execute("INSERT INTO vectors (hash, vector, frames) VALUES (?, ?, ?)", (digest, blobs[0], len(blobs)))
            put(conn, digest, seconds, blobs)
        conn.execute("INSERT OR IGNORE INTO images (id, path, size, mtime, hash) VALUES (?, ?, NULL, NULL, ?)",
                     (file, path, digest))
    conn.execute("DELETE FROM import_frames")
    return len(videos)
