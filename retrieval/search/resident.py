"""FAISS indexes kept loaded between the searches of a long-lived opened index (a server, an Index).

A memory-mapped read is cheap for the vectors themselves, but an ``IDMap2`` index rebuilds
its id-to-position table on every read (17 ms at 100,000 vectors at load average 4 here;
scripts/bench_server.py measures the whole gain): about as much as the search. So each opened
store keeps the index of each kind it last read, and reads it again only when the file
under that name is another one: a new generation has another file name, and a rebuilt file
(written beside it and renamed over it) another inode, size or modification time.

The caller still reads the generation inside its catalog snapshot and checks the file
against the catalog's record (``integrity.py``) on every search: only the read is saved,
so a search never mixes a generation's catalog rows with another generation's index.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path

from retrieval.ann import index as faiss_index

#: Off: every search reads its FAISS file again (the behaviour before; the benchmark compares).
KEEP_LOADED = True
#: Off: a kept exact index is always scanned in full (retrieval/ann/quickscan.py; the benchmark compares).
QUICK_SCAN = True

_lock = threading.Lock()
#: owner (an IndexStore) -> {kind: (file key, loaded index)}; an entry goes when its owner does.
_loaded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: owner -> {kind: (kept index, its QuickScan or None)}: what quick_scan has seen and built.
_quick: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def faiss_for(owner: object, kind: str, path: Path):
    """The FAISS index in `path` for `owner`, read (memory-mapped) only when the file changed.

    Raises FileNotFoundError when the file is missing, and what FAISS raises (RuntimeError)
    when it cannot parse it.
    """
    stat = os.stat(path)
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if KEEP_LOADED:
        with _lock:
            entry = _loaded.get(owner, {}).get(kind)
        if entry is not None and entry[0] == key:
            return entry[1]
    # Read outside the lock: a second thread may read the same file meanwhile, and the later
    # of the two stays; both are the same published file, so either is right.
    index = faiss_index.read(path, mmap=True)
    if KEEP_LOADED:
        with _lock:
            _loaded.setdefault(owner, {})[kind] = (key, index)
    return index


def quick_scan(owner: object, kind: str, index):
    """The 8-bit copy of `index` (retrieval/ann/quickscan.py) when it is `owner`'s kept exact index, else None.

    Made the second time it is asked for with the same kept index, not the first: a one-shot
    search never pays for it (0.2-0.4 s at 100,000 vectors), a long-lived caller pays once
    per file. Dropped with the index it copies.
    """
    if not (KEEP_LOADED and QUICK_SCAN):
        return None
    from retrieval.ann import quickscan

    with _lock:
        entry = _loaded.get(owner, {}).get(kind)
        if entry is None or entry[1] is not index:
            return None
        seen = _quick.setdefault(owner, {}).get(kind)
        if seen is None or seen[0] is not index:
            _quick[owner][kind] = (index, None)  # first search with this index: nothing built yet
            return None
        if seen[1] is not None:
            return seen[1]
    if not quickscan.eligible(index):
        return None
    quick = quickscan.QuickScan(index)
    with _lock:
        if _quick.get(owner, {}).get(kind, (None,))[0] is index:
            _quick[owner][kind] = (index, quick)
    return quick


def forget(owner: object) -> None:
    """Drop what `owner` keeps loaded (when it closes)."""
    with _lock:
        _loaded.pop(owner, None)
        _quick.pop(owner, None)
