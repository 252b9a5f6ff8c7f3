"""FAISS indexes kept loaded between the searches of a long-lived opened index (a server, an Index).

A memory-mapped read is cheap for the vectors themselves, but an ``IDMap2`` index rebuilds
its id-to-position table on every read, which costs about as much as the search itself
(docs/serving-speed.md#what-a-warm-query-does-now; benchmarks/bench_server.py measures the
whole gain). So each opened
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
from typing import Any

from retrieval import ann
from retrieval.ann import quickscan

#: (path, inode, size, modification time): another value is another file.
FileKey = tuple[str, int, int, int]


def read(path: Path) -> Any:
    """The FAISS index in `path`, memory-mapped, read now (a search that keeps nothing).

    Raises FileNotFoundError when the file is missing, and what FAISS raises (RuntimeError)
    when it cannot parse it.
    """
    os.stat(path)
    return ann.read(path, mmap=True)


class ResidentIndexes:
    """The FAISS index of each kind each owner (an IndexStore) last read, and 8-bit copies of them; thread-safe.

    Entries are weakly keyed by owner: they go when it does.
    """

    def __init__(self, keep_loaded: bool = True, quick_scan: bool = True, ann_settings: ann.AnnSettings = ann.DEFAULT):
        self.keep_loaded = keep_loaded
        self.ann_settings = ann_settings
        self.quick = keep_loaded and quick_scan
        self._lock = threading.Lock()
        #: Held while an id table is added to a kept index (ann.stored_vectors): the index objects
        #: are shared by every thread searching through this; its own lock, as building one takes
        #: a while and other indexes need not wait.
        self.direct_map_lock = threading.Lock()
        #: owner -> {kind: (file key, loaded index)}.
        self._loaded: weakref.WeakKeyDictionary[object, dict[str, tuple[FileKey, Any]]] = weakref.WeakKeyDictionary()
        #: owner -> {kind: (kept index, its QuickScan or None)}: what quick_scan has seen and built.
        self._quick: weakref.WeakKeyDictionary[object, dict[str, tuple[Any, quickscan.QuickScan | None]]] = (
            weakref.WeakKeyDictionary()
        )

    def faiss_for(self, owner: object, kind: str, path: Path) -> Any:
        """The FAISS index in `path` for `owner`, read (memory-mapped) only when the file changed.

        Raises FileNotFoundError when the file is missing, and what FAISS raises (RuntimeError)
        when it cannot parse it.
        """
        if not self.keep_loaded:
            return read(path)
        stat = os.stat(path)
        key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            entry = self._loaded.get(owner, {}).get(kind)
        if entry is not None and entry[0] == key:
            return entry[1]
        # Read outside the lock: a second thread may read the same file meanwhile, and the later
        # of the two stays; both are the same published file, so either is right.
        index = ann.read(path, mmap=True)
        with self._lock:
            self._loaded.setdefault(owner, {})[kind] = (key, index)
        return index

    def quick_scan(self, owner: object, kind: str, index: Any) -> quickscan.QuickScan | None:
        """The 8-bit copy of `index` (retrieval/ann/quickscan.py) when it is `owner`'s kept exact index, else None.

        Made the second time it is asked for with the same kept index, not the first: a one-shot
        search never pays for it (it costs many searches' time: docs/serving-speed.md#what-a-warm-query-does-now),
        a long-lived caller pays once
        per file. Dropped with the index it copies.
        """
        if not self.quick:
            return None
        with self._lock:
            entry = self._loaded.get(owner, {}).get(kind)
            if entry is None or entry[1] is not index:
                return None
            seen = self._quick.setdefault(owner, {}).get(kind)
            if seen is None or seen[0] is not index:
                self._quick[owner][kind] = (index, None)  # first search with this index: nothing built yet
                return None
            if seen[1] is not None:
                return seen[1]
        if not quickscan.eligible(index, self.ann_settings):
            return None
        quick = quickscan.QuickScan(index, self.ann_settings)
        with self._lock:
            if self._quick.get(owner, {}).get(kind, (None, None))[0] is index:
                self._quick[owner][kind] = (index, quick)
        return quick

    def forget(self, owner: object) -> None:
        """Drop what `owner` keeps loaded (when it closes)."""
        with self._lock:
            self._loaded.pop(owner, None)
            self._quick.pop(owner, None)
