"""Index files: written atomically, read (or memory-mapped) back, and looked into.

Indexes are derived data: the catalog holds the vectors, these files only make search fast.
An index whose inverted lists live on disk (:mod:`retrieval.ann.ondisk`) is two files,
``<name>.faiss`` and ``<name>.ivfdata``; :func:`read` opens either kind.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import wurlitzer

log = logging.getLogger(__name__)

#: The inverted-lists file beside an on-disk index's ``.faiss`` file.
LISTS_SUFFIX = ".ivfdata"


def lists_path(faiss_path: Path) -> Path:
    """The inverted-lists file that belongs to an index file (same generation, same folder)."""
    return faiss_path.with_suffix(LISTS_SUFFIX)


def write(index: faiss.Index, path: Path) -> None:
    """Write atomically: readers see the old file or the new one, never half of one."""
    tmp = Path(f"{path}.tmp-{os.getpid()}")
    try:
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    except (OSError, RuntimeError):
        # A full disk leaves a partial file; drop it so the space is free again at once.
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def read(path: Path, mmap: bool = False) -> faiss.Index:
    """Load an index; with `mmap`, map it read-only instead (near-instant, shared page cache).

    IO_FLAG_MMAP_IFC maps flat code arrays, IO_FLAG_MMAP maps inverted lists; FAISS refuses
    the first for IVF files, so an IVF file is retried with the second alone. An index whose
    lists live on disk is always mapped, by FAISS itself (:func:`read_on_disk`).
    """
    if lists_path(Path(path)).exists():
        return read_on_disk(Path(path))
    if not mmap:
        return faiss.read_index(str(path))
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        return _no_prefetch(faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY))


def read_on_disk(path: Path) -> faiss.Index:
    """Open an on-disk index read-only; its lists stay on disk, mapped on demand.

    The ``.faiss`` file names its lists file by absolute path; when the folder has been moved
    or renamed since, the lists file beside the ``.faiss`` file is taken instead.
    """
    lists = lists_path(path)
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_READ_ONLY)
        named = _lists_of(index).filename
        if Path(named).resolve() == lists.resolve():
            return index
    except RuntimeError:
        pass  # the lists file it names is gone: the folder was moved or renamed
    # FAISS's own remedy takes the lists file beside the index file, and says so with a printf.
    with quiet_stdout():
        return faiss.read_index(str(path), faiss.IO_FLAG_READ_ONLY | faiss.IO_FLAG_ONDISK_SAME_DIR)


@contextmanager
def quiet_stdout() -> Iterator[None]:
    """Keep what FAISS's C++ code printf()s meanwhile off stdout, which carries results (JSON,
    piped paths): it goes to the debug log instead.

    File descriptor 1 is the whole process's, so another thread's stdout output in this short
    window is taken too; the engine writes none (logs go to stderr).
    """
    said = io.StringIO()
    try:
        # stderr=None leaves stderr alone (wurlitzer's own default captures it); its stubs omit None.
        with wurlitzer.pipes(stdout=said, stderr=None):  # type: ignore[call-overload]
            yield
    finally:
        if said.getvalue().strip():
            log.debug("FAISS: %s", said.getvalue().strip())


def _no_prefetch(index: faiss.Index) -> faiss.Index:
    # FAISS maps an IVF file's lists as OnDiskInvertedLists, which before each search read every
    # probed list in full on 32 threads. From the page cache that is pure cost, and a filtered
    # search (which skips most vectors of each list) pays it for all it probes: it was most of
    # such a search's time, and a third of an unfiltered one's
    # (docs/photo-library.md#exactly-the-best-k-among-the-passing-images). Indexes larger than
    # memory (retrieval.ann.ondisk) keep it.
    try:
        lists = _lists_of(index)
    except RuntimeError:
        return index
    if hasattr(lists, "prefetch_nthread"):
        lists.prefetch_nthread = 0
    return index


def _lists_of(index: faiss.Index) -> Any:
    """An IVF index's inverted lists as their own class (OnDiskInvertedLists...): FAISS's type
    hints give the base class, without the subclass's fields."""
    lists: Any = faiss.extract_index_ivf(index).invlists
    return faiss.downcast_InvertedLists(lists)


def describe(index: faiss.Index) -> str:
    """The FAISS class that holds the vectors (inside an id map): ``IndexFlat``, ``IndexIVFFlat``..."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return type(inner).__name__


def ids_of(index: faiss.Index) -> np.ndarray:
    """Every id stored in `index` (IDMap or IVF), for checking it against the catalog."""
    if isinstance(index, faiss.IndexIDMap):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    lists: Any = ivf.invlists
    parts = [
        faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
        for i in range(ivf.nlist)
        if lists.list_size(i)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
