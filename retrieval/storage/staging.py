"""One index run's view of its folders, staged in temporary SQLite tables.

A run over a million files must not hold a million paths in Python. The walk streams into
``run_files``; the hash (or the reason for failing) of each file read comes back batch by
batch; the plan and its publication are SQL over these tables and the catalog. Python holds
one page of rows at a time, so the indexer's memory does not grow with the folder.

The tables are TEMP tables on the catalog's own connection: other connections (searches,
decoding workers) never see them, SQLite's page cache spills them to a temporary file
rather than keeping them in memory, and they vanish when the run ends or is killed. A
killed run loses nothing here: its vectors are already in the catalog, keyed by content.

Life of a row in ``run_files``::

    add_stats()     path, size, mtime, and the published row for that path (old_id, old_hash)
    (todo)          1 when the file is new or changed since it was last indexed or skipped
    record()        hash, or error, once the file has been read
    plan()          action: keep | keep_bad | touch | new | fail, and new_id for 'new'
    apply()         inside the publishing transaction: images and skipped rows follow the plan
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.media.decode import Loaded
from retrieval.media.exif import COLUMNS as EXIF_COLUMNS
from retrieval.media.exif import EMPTY
from retrieval.media.files import FileStat
from retrieval.storage import frames
from retrieval.storage.catalog import Catalog

_META_SET = ", ".join(f"{c} = ?" for c in EXIF_COLUMNS)
# Photo metadata for the catalog: a file without an EXIF date is dated by its modification
# time (local wall-clock time, like EXIF dates), and the source says which it is.
_META_COLUMNS = "taken_source, " + ", ".join(EXIF_COLUMNS)
_META_VALUES = (
    "CASE WHEN f.taken IS NULL THEN 'mtime' ELSE 'exif' END, "
    "coalesce(f.taken, strftime('%Y-%m-%dT%H:%M:%S', f.mtime, 'unixepoch', 'localtime')), "
    + ", ".join(f"f.{c}" for c in EXIF_COLUMNS[1:])
)

#: Kept rows whose companions or motion file differ from the published row's.
_RELINKED = """SELECT {count} FROM run_files f JOIN images i ON i.id = f.old_id WHERE f.action = 'keep'
               AND (i.companions IS NOT f.companions OR i.motion IS NOT f.motion)"""

#: The metadata columns of a file without EXIF: one tuple shared by every such row.
_NO_META = EMPTY.row()

#: Rows of paths per page read or written at a time (a few hundred KB of Python objects).
PAGE_ROWS = 2_000

_DROP = ["DROP TABLE IF EXISTS temp.run_files", "DROP TABLE IF EXISTS temp.run_deletes"]
_DDL = [
    *_DROP,
    """CREATE TEMP TABLE run_files (
        seq INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, size INTEGER, mtime REAL,
        old_id INTEGER, old_hash TEXT, todo INTEGER NOT NULL DEFAULT 1,
        hash TEXT, error TEXT, action TEXT, new_id INTEGER,
        taken TEXT, taken_offset TEXT, camera_make TEXT, camera_model TEXT, lat REAL, lon REAL, orientation INTEGER,
        companions TEXT, motion TEXT)""",
    "CREATE INDEX temp.run_files_new ON run_files(new_id)",
    # Published image rows this run removes: replaced or failed files, and files that are gone.
    "CREATE TEMP TABLE run_deletes (id INTEGER PRIMARY KEY, hash TEXT NOT NULL, gone INTEGER NOT NULL)",
]


@dataclass
class Plan:
    """What the next generation changes, in counts (the rows themselves stay in SQL)."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    moved: int = 0
    new_rows: int = 0
    deletes: int = 0
    touched: int = 0
    skipped_changed: bool = False
    #: Unchanged photos whose other files changed (a RAW or a Live Photo's motion file came or went).
    relinked: int = 0
    final_count: int = 0
    next_id: int = 1

    @property
    def changed(self) -> bool:
        return bool(self.new_rows or self.deletes or self.touched or self.skipped_changed or self.relinked)


class Staging:
    """The run tables for `roots`, on the catalog's connection (autocommit mode)."""

    def __init__(self, catalog: Catalog, roots: Sequence[str | Path]):
        self.catalog = catalog
        self.conn = catalog.db.conn
        #: Files whose names SQLite cannot store (not UTF-8): reported on every run, never read.
        self.unnamed: list[dict] = []
        for statement in _DDL:
            self.conn.execute(statement)
        # "Under one of this run's folders", as SQL over a column named path.
        clauses, self._under_args = [], []
        for root in roots:
            prefix = str(root).rstrip(os.sep) + os.sep
            clauses.append("(path = ? OR substr(path, 1, ?) = ?)")
            self._under_args += [str(root), len(prefix), prefix]
        self._under = "(" + (" OR ".join(clauses) or "0") + ")"
        #: Folders the walk could not list: their indexed files are not gone, only unseen.
        self.unlisted: list[str] = []

    def _gone(self) -> tuple[str, list]:
        """SQL over `path` (and its arguments): under this run's folders, not met by the walk, and
        not under a folder the walk could not list."""
        args = list(self._under_args)
        kept = ""
        for folder in self.unlisted:
            prefix = folder.rstrip(os.sep) + os.sep
            kept += " AND path != ? AND substr(path, 1, ?) != ?"
            args += [folder, len(prefix), prefix]
        return f"({self._under} AND path NOT IN (SELECT path FROM run_files){kept})", args

    def close(self) -> None:
        for statement in _DROP:
            self.conn.execute(statement)

    def _batch(self, sql: str, rows: Iterable) -> None:
        with self.catalog.transaction():
            self.conn.executemany(sql, rows)

    # -- walking -----------------------------------------------------------------
    def add_stats(self, stats: Iterable[FileStat]) -> None:
        """Stage the walk, page by page; a path met twice (overlapping folders) counts once."""
        insert = "INSERT OR IGNORE INTO run_files (path, size, mtime, companions, motion) VALUES (?, ?, ?, ?, ?)"
        page: list[tuple] = []
        for stat in stats:
            if stat.unlisted:
                self.unlisted.append(stat.path)
                continue
            if not _storable(stat.path):
                self.unnamed.append(
                    {"path": _printable(stat.path), "size": stat.size, "mtime": stat.mtime,
                     "reason": "file name is not valid UTF-8 (rename the file to index it)"}
                )
                continue
            page.append((stat.path, stat.size, stat.mtime, json.dumps(stat.companions) if stat.companions else None,
                         stat.motion))
            if len(page) == PAGE_ROWS:
                self._batch(insert, page)
                page = []
        if page:
            self._batch(insert, page)
        with self.catalog.transaction():
            self.conn.execute(
                "UPDATE run_files SET (old_id, old_hash) = "
                "(SELECT id, hash FROM images WHERE images.path = run_files.path)"
            )
            # Unchanged since the last run (same size and mtime): an indexed file, or a bad file
            # already recorded as skipped. Neither is read again.
            self.conn.execute(
                """UPDATE run_files SET todo = 0 WHERE
                     (old_id IS NOT NULL AND EXISTS (SELECT 1 FROM images i WHERE i.id = run_files.old_id
                         AND i.size IS run_files.size AND i.mtime IS run_files.mtime
                         AND i.taken_source IS NOT NULL))
                  OR (old_id IS NULL AND EXISTS (SELECT 1 FROM skipped s WHERE s.path = run_files.path
                         AND s.size IS run_files.size AND s.mtime IS run_files.mtime))"""
            )

    def todo_count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM run_files WHERE todo").fetchone()[0]

    def todo_paths(self) -> Iterator[str]:
        """Paths to read, in walk order, fetched a page at a time (the table changes meanwhile)."""
        last = 0
        while True:
            rows = self.conn.execute(
                "SELECT seq, path FROM run_files WHERE todo AND seq > ? ORDER BY seq LIMIT ?", (last, PAGE_ROWS)
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            for _, path in rows:
                yield path

    def record(self, loaded: list[Loaded]) -> None:
        self._batch(
            f"UPDATE run_files SET hash = ?, error = ?, {_META_SET} WHERE path = ?",
            [(item.hash, item.error, *(item.meta.row() if item.meta else _NO_META), item.path) for item in loaded],
        )

    # -- planning ----------------------------------------------------------------
    def plan(self, next_id: int) -> Plan:
        """Decide each row's action and the ids of new rows; count what will change."""
        c = self.conn
        with self.catalog.transaction():
            c.execute(
                """UPDATE run_files SET action = CASE
                     WHEN NOT todo AND old_id IS NOT NULL THEN 'keep'
                     WHEN NOT todo THEN 'keep_bad'
                     WHEN error IS NOT NULL OR hash IS NULL
                          OR hash NOT IN (SELECT hash FROM vectors) THEN 'fail'
                     WHEN old_hash IS hash THEN 'touch'
                     ELSE 'new' END"""
            )
            c.execute("UPDATE run_files SET error = 'could not be encoded' WHERE action = 'fail' AND error IS NULL")
            # Ids are handed out in walk order and never reused (see catalog.py).
            # (Numbered in a table of their own first: a window function inside the UPDATE's
            # subquery would be evaluated again for every row.)
            c.execute("DROP TABLE IF EXISTS temp.run_ids")
            c.execute("CREATE TEMP TABLE run_ids (seq INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
            c.execute(
                "INSERT INTO run_ids (seq, n) SELECT seq, row_number() OVER (ORDER BY seq) "
                "FROM run_files WHERE action = 'new'"
            )
            c.execute(
                "UPDATE run_files SET new_id = ? - 1 + (SELECT n FROM run_ids WHERE run_ids.seq = run_files.seq) "
                "WHERE action = 'new'",
                (next_id,),
            )
            c.execute("DROP TABLE temp.run_ids")
            c.execute(
                "INSERT INTO run_deletes (id, hash, gone) SELECT old_id, old_hash, 0 FROM run_files "
                "WHERE old_id IS NOT NULL AND action IN ('new', 'fail')"
            )
            gone, gone_args = self._gone()
            c.execute(
                f"""INSERT OR IGNORE INTO run_deletes (id, hash, gone)
                    SELECT id, hash, 1 FROM images WHERE {gone}""",
                gone_args,
            )
            plan = self._count(next_id)
        return plan

    def _count(self, next_id: int) -> Plan:
        def one(sql: str, args=()) -> int:
            return self.conn.execute(sql, args).fetchone()[0] or 0

        actions = dict(self.conn.execute("SELECT action, count(*) FROM run_files GROUP BY action").fetchall())
        fresh = one("SELECT count(*) FROM run_files WHERE action = 'new' AND old_id IS NULL")
        replaced = one("SELECT count(*) FROM run_files WHERE action = 'new' AND old_id IS NOT NULL")
        failed_old = one("SELECT count(*) FROM run_files WHERE action = 'fail' AND old_id IS NOT NULL")
        gone = one("SELECT count(*) FROM run_deletes WHERE gone")
        # A new path with the content of a path that has gone is a rename or a move, not an
        # add and a remove: per hash, the smaller of the two counts.
        moved = one(
            """SELECT sum(min(a.n, g.n)) FROM
                 (SELECT hash, count(*) AS n FROM run_files WHERE action = 'new' AND old_id IS NULL GROUP BY hash) a
                 JOIN (SELECT hash, count(*) AS n FROM run_deletes WHERE gone GROUP BY hash) g USING (hash)"""
        )
        deletes = one("SELECT count(*) FROM run_deletes")
        new_rows = actions.get("new", 0)
        return Plan(
            added=fresh - moved,
            updated=replaced,
            unchanged=actions.get("keep", 0) + actions.get("touch", 0),
            removed=failed_old + gone - moved,
            moved=moved,
            new_rows=new_rows,
            deletes=deletes,
            touched=actions.get("touch", 0),
            skipped_changed=self._skipped_changes() > 0,
            relinked=one(_RELINKED.format(count="count(*)")),
            final_count=one("SELECT count(*) FROM images") - deletes + new_rows + self._frames_delta(),
            next_id=next_id + new_rows,
        )

    def videos(self) -> tuple[int, int]:
        """(videos, their sampled frames) among this run's indexed files."""
        if not self.catalog.has_frames:
            return 0, 0
        row = self.conn.execute(
            "SELECT count(*), coalesce(sum(v.frames), 0) FROM run_files f JOIN vectors v USING (hash) "
            "WHERE f.action IN ('keep', 'touch', 'new') AND v.frames IS NOT NULL").fetchone()
        return int(row[0]), int(row[1])

    def _frames_delta(self) -> int:
        """Change in the image index's rows from videos' frames beyond the first (retrieval/storage/frames.py)."""
        if not self.catalog.has_frames:
            return 0
        c = self.conn
        return (frames.extra_count(c, "SELECT hash FROM images")
                - frames.extra_count(c, "SELECT hash FROM run_deletes")
                + frames.extra_count(c, "SELECT hash FROM run_files WHERE action = 'new'"))

    def _skipped_changes(self) -> int:
        gone, gone_args = self._gone()
        dropped = self.conn.execute(
            f"""SELECT count(*) FROM skipped WHERE
                  path IN (SELECT path FROM run_files WHERE action NOT IN ('keep_bad', 'fail'))
                  OR {gone}""",
            gone_args,
        ).fetchone()[0]
        new_or_different = self.conn.execute(
            """SELECT count(*) FROM run_files f WHERE action = 'fail' AND NOT EXISTS (
                 SELECT 1 FROM skipped s WHERE s.path = f.path AND s.reason IS f.error
                 AND s.size IS f.size AND s.mtime IS f.mtime)"""
        ).fetchone()[0]
        return dropped + new_or_different

    # -- results -----------------------------------------------------------------
    def skipped(self) -> list[dict]:
        """The files of this run's folders that are not indexed, with the reason (walk order)."""
        cursor = self.conn.execute(
            """SELECT f.path, f.size, f.mtime, coalesce(f.error, s.reason) FROM run_files f
               LEFT JOIN skipped s ON f.action = 'keep_bad' AND s.path = f.path
               WHERE f.action IN ('fail', 'keep_bad') ORDER BY f.seq"""
        )
        return [{"path": p, "size": size, "mtime": m, "reason": r} for p, size, m, r in cursor] + self.unnamed

    def deleted_ids(self) -> np.ndarray:
        """Ids the image index loses: the deleted rows' own, and their videos' other frames."""
        rows = self.conn.execute("SELECT id FROM run_deletes ORDER BY id")
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64)
        if not self.catalog.has_frames:
            return ids
        later = self.conn.execute(
            "SELECT d.id, v.frames FROM run_deletes d JOIN vectors v USING (hash) WHERE v.frames > 1").fetchall()
        extra = [i + n * frames.FRAME_STEP for i, count in later for n in range(1, count)]
        return np.concatenate([ids, np.asarray(extra, np.int64)]) if extra else ids

    def added_vectors(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of the new rows, in id order, a chunk at a time."""
        yield from self.catalog.vector_chunks(
            "SELECT f.new_id, v.vector FROM run_files f JOIN vectors v USING (hash) "
            "WHERE f.new_id > ? ORDER BY f.new_id LIMIT ?"
        )
        if self.catalog.has_frames:  # the new videos' frames after the first
            yield from self.catalog.vector_chunks(
                frames.frames_sql("SELECT new_id AS id, hash FROM run_files WHERE action = 'new'", False))

    # -- publishing --------------------------------------------------------------
    def apply(self) -> None:
        """Make the catalog's images and skipped rows follow the plan.

        Runs inside :meth:`Catalog.publishing`'s transaction, so searches see all of it at
        once or none of it.
        """
        c = self.conn
        c.execute("DELETE FROM images WHERE id IN (SELECT id FROM run_deletes)")
        c.execute(
            f"""INSERT OR REPLACE INTO images (id, path, size, mtime, hash, width, height, status, companions, motion,
                                               {_META_COLUMNS})
               SELECT CASE f.action WHEN 'touch' THEN f.old_id ELSE f.new_id END,
                      f.path, f.size, f.mtime, f.hash, v.width, v.height, 'ok', f.companions, f.motion, {_META_VALUES}
               FROM run_files f JOIN vectors v USING (hash)
               WHERE f.action IN ('touch', 'new') ORDER BY f.seq"""
        )
        # A kept photo's other files follow the folder: a RAW or a motion file that came or went.
        c.execute(
            "UPDATE images SET (companions, motion) = (SELECT f.companions, f.motion FROM run_files f "
            "WHERE f.old_id = images.id) WHERE id IN (" + _RELINKED.format(count="f.old_id") + ")"
        )
        # Bad files outside this run's folders stay recorded as they were; bad files that are
        # unchanged keep their row; the rest of this run's folders is recorded afresh.
        gone, gone_args = self._gone()
        c.execute(
            f"""DELETE FROM skipped WHERE
                  path IN (SELECT path FROM run_files WHERE action != 'keep_bad')
                  OR {gone}""",
            gone_args,
        )
        c.execute(
            "INSERT INTO skipped (path, size, mtime, reason) "
            "SELECT path, size, mtime, error FROM run_files WHERE action = 'fail' ORDER BY seq"
        )
        self.catalog.refresh_cameras()


def _storable(path: str) -> bool:
    # Linux file names are bytes; Python shows undecodable ones with surrogate escapes,
    # which SQLite's UTF-8 text cannot hold.
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(path: str) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")
