"""Checks that the derived FAISS files are the ones the catalog published.

Publishing records each FAISS file's size, modification time and CRC-32 in the catalog's
``faiss_files`` table, inside the same transaction that makes the generation current. A
search compares the file against that record before trusting it:

- size and mtime on every open (one ``stat``: free);
- the full CRC-32 the first time an opened index (its catalog's ``verified_files``) opens
  a file, or when its mtime differs from the record (a restored backup), as long as the
  file is at most ``FULL_CHECK_BYTES``; above that a search trusts size and mtime, and
  ``retrieval info`` / ``retrieval check`` always read the whole file.

Why CRC-32 (zlib): it is there to catch damage (a truncated copy, a flipped block, a
file from another generation), not tampering, so the fastest adequate checksum wins; it is
several times faster than BLAKE2b or SHA-256, fast enough that checking an exact index up to
``FULL_CHECK_BYTES`` costs less than one exact search over it reads (figures in
docs/reliability.md#the-cost-of-checking-why-crc-32-and-when).

A missing, truncated or altered file is reported as :class:`DamagedIndex`; the next
``retrieval index`` rebuilds it from the catalog's stored vectors without encoding again.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import zlib
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import DamagedIndex

log = logging.getLogger(__name__)

DDL = """CREATE TABLE IF NOT EXISTS faiss_files (
    name TEXT PRIMARY KEY, generation INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, crc32 INTEGER NOT NULL, ntotal INTEGER)"""

#: Files up to this size get a full checksum on first open by an opened index: less than one
#: exact search over them costs (docs/reliability.md#the-cost-of-checking-why-crc-32-and-when).
FULL_CHECK_BYTES = 64 * 2**20
_BLOCK = 2**20

#: (path, size, mtime_ns, crc) of files read in full and found right: a catalog's
#: ``verified_files``, which lives as long as the opened index does.
Verified = set[tuple[str, int, int, int]]


@dataclass(frozen=True)
class Record:
    name: str
    generation: int
    size: int
    mtime_ns: int
    crc32: int
    ntotal: int | None


def crc32_of(path: Path) -> int:
    # One fixed buffer: memory stays the same whatever the file's size.
    crc, buffer = 0, bytearray(_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            crc = zlib.crc32(view[:n], crc)
    return crc


def record(
    conn: sqlite3.Connection, path: Path, generation: int, ntotal: int | None, verified: Verified | None = None
) -> None:
    """Note a freshly written FAISS file in the catalog (call inside the publishing transaction).

    `verified`: the catalog's ``verified_files``, which then holds the file as checked.
    """
    conn.execute(DDL)
    stat = os.stat(path)
    crc = crc32_of(path)
    conn.execute(
        "INSERT OR REPLACE INTO faiss_files (name, generation, size, mtime_ns, crc32, ntotal) VALUES (?, ?, ?, ?, ?, ?)",
        (path.name, generation, stat.st_size, stat.st_mtime_ns, crc, ntotal),
    )
    # Records of generations no longer on disk are dropped with their files (store.prune keeps g-1).
    conn.execute("DELETE FROM faiss_files WHERE generation < ?", (generation - 1,))
    if verified is not None:
        verified.add((str(path), stat.st_size, stat.st_mtime_ns, crc))


def lookup(conn: sqlite3.Connection, name: str) -> Record | None:
    """The catalog's record of a FAISS file, or None (an index published before records existed)."""
    try:
        row = conn.execute(
            "SELECT name, generation, size, mtime_ns, crc32, ntotal FROM faiss_files WHERE name = ?", (name,)
        ).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    return None if row is None else Record(*row)


def problem(
    conn: sqlite3.Connection, path: Path, *, full: bool | None = None, verified: Verified | None = None
) -> str | None:
    """What is wrong with the FAISS file at `path`, or None when it matches its record.

    `full`: True reads the whole file, False only stats it, None decides by size and by
    whether it is in `verified` (the catalog's ``verified_files``; see the module docstring),
    where a file read in full and found right is added.
    """
    rec = lookup(conn, path.name)
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return "is missing"
    if rec is None:
        return None
    if stat.st_size != rec.size:
        return f"is truncated or damaged ({stat.st_size} bytes, {rec.size} published)"
    key = (str(path), stat.st_size, stat.st_mtime_ns, rec.crc32)
    if full is None:
        if verified is not None and key in verified:
            return None
        full = stat.st_mtime_ns != rec.mtime_ns or stat.st_size <= FULL_CHECK_BYTES
    if not full:
        return None
    if crc32_of(path) != rec.crc32:
        return "has been altered (its checksum differs from the published one)"
    if verified is not None:
        verified.add(key)
    return None


def check_or_raise(
    conn: sqlite3.Connection, path: Path, *, full: bool | None = None, verified: Verified | None = None
) -> None:
    """Raise :class:`DamagedIndex` with one line naming the file when :func:`problem` finds something."""
    what = problem(conn, path, full=full, verified=verified)
    if what:
        raise damaged(path, what)


def damaged(path: Path, what: str) -> DamagedIndex:
    return DamagedIndex(
        f"{path} {what}; `retrieval index --index {path.parent}` rebuilds it from the catalog "
        "(no folders needed, nothing is encoded again)"
    )
