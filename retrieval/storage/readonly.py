"""Opening a catalog that lives in a folder this process cannot write (a read-only mount, a backup disc).

In WAL mode even a reader writes: it creates ``catalog.db-shm`` (and ``-wal``) beside the
database. In a read-only folder that fails, so :func:`connect_readonly` opens the file with
``mode=ro`` when those files are already there, and otherwise with ``immutable=1``, which
tells SQLite nobody can change the file and it needs no locks or shared memory. That is true
of a read-only folder, as long as no write-ahead log with commits is left over: those
commits would be invisible to an immutable reader, so that case is refused with a message.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from retrieval.errors import StorageError


def connect_readonly(path: Path) -> sqlite3.Connection:
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    uri = path.resolve().as_uri()
    if wal.exists() and shm.exists():
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30, isolation_level=None)
    elif wal.exists() and wal.stat().st_size > 0:
        raise StorageError(
            f"{path.parent} is read-only and its catalog has unfinished writes ({wal.name}); "
            "open it once where the folder is writable (any `retrieval search` does) to fold them in"
        )
    else:
        conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=30, isolation_level=None)
    conn.execute("PRAGMA query_only=ON")
    return conn
