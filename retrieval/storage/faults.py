"""Faults from the environment, told in one line: disk full, read-only folders, permissions, damage.

The library meets these as ``OSError``, ``sqlite3`` errors or FAISS ``RuntimeError``s whose
text buries the cause. :func:`explained` turns them into :class:`StorageError` or
:class:`CatalogDamaged` naming the file and what to do; the CLI prints that line. What was
published before the fault is untouched: a run writes the next generation beside the
current one and switches in one SQLite transaction (see ``retrieval.ingest.publish``).
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retrieval.errors import CatalogDamaged, RetrievalError, StorageError

_SPACE = "the disk is full"
_STRERRORS = {os.strerror(code): code for code in errno.errorcode}


def explain(exc: BaseException, folder: Path | str | None = None, doing: str = "") -> RetrievalError | None:
    """A one-line error for an environmental fault, or None when `exc` is something else."""
    where = Path(folder) if folder else None
    doing = f" while {doing}" if doing else ""
    catalog = where / "catalog.db" if where else "the catalog"
    if isinstance(exc, sqlite3.DatabaseError):
        text = str(exc)
        if "malformed" in text or "not a database" in text:
            return CatalogDamaged(
                f"{catalog} is damaged ({text}): run `retrieval check --index {where or 'NAME'}` to see what is "
                "wrong, then restore a backup (`retrieval backup`) or index into a new index"
            )
        if "disk is full" in text:
            return StorageError(f"{_SPACE}{doing} ({catalog}): free some space and run again; nothing published is lost")
        if "readonly" in text or "read-only" in text:
            return StorageError(f"{catalog} is read-only{doing}: searches still work, indexing needs a writable folder")
        if "unable to open" in text:
            return StorageError(f"cannot open {catalog}{doing}: check that the folder exists and is readable")
        if "locked" in text or "busy" in text:
            return StorageError(f"{catalog} is locked by another process{doing}; try again when it has finished")
        if "disk I/O error" in text:
            return StorageError(f"{catalog}: disk I/O error{doing}; check the disk and run `retrieval check`")
        return None
    code = getattr(exc, "errno", None)
    if isinstance(exc, RuntimeError):
        code = _errno_in(str(exc))
    if code is None:
        return None
    name = getattr(exc, "filename", None) or where or "the index folder"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"{_SPACE}{doing} ({name}): free some space and run again; nothing published is lost")
    if code == errno.EROFS:
        return StorageError(f"{name} is on a read-only file system{doing}: searches work, indexing needs a writable folder")
    if code in (errno.EACCES, errno.EPERM):
        return StorageError(f"permission denied{doing}: {name}")
    if code == errno.EIO:
        return StorageError(f"disk I/O error{doing} ({name}); check the disk, then run `retrieval check`")
    if isinstance(exc, OSError):
        return StorageError(f"{exc.strerror or exc}{doing}: {name}")
    return None


def _errno_in(text: str) -> int | None:
    """The errno behind a FAISS I/O error, whose message ends with the C library's text in brackets."""
    for found in re.findall(r"\(([^()]+)\)", text):
        if found in _STRERRORS:
            return _STRERRORS[found]
    return None


@contextmanager
def explained(folder: Path | str | None = None, doing: str = "") -> Iterator[None]:
    """Re-raise environmental faults inside the block as one-line :class:`RetrievalError`s."""
    try:
        yield
    except RetrievalError:
        raise
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        better = explain(exc, folder, doing)
        if better is None:
            raise
        raise better from exc
