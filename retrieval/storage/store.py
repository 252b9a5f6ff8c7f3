"""An index folder on disk: where it lives, its catalog, its FAISS files, its writer lock.

Layout of ``indexes/NAME/``::

    catalog.db            the truth (SQLite): files, vectors, captions, meta
    images-<gen>.faiss    image index of published generation <gen> (derived)
    captions-<gen>.faiss  caption index of generation <gen> (derived, optional)
    write.lock            held by the one run that may write; names its command and pid

A run writes the FAISS files of generation g+1 first and then commits the catalog
transaction that makes g+1 current, so at every moment the folder holds a complete
previous generation or a complete new one. The files of g-1 are kept one generation
longer so a search that read generation g-1 just before the switch can still open them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Container, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.errors import IndexBusy, IndexNotFound, ModelMismatch, RetrievalError, StorageError
from retrieval.storage.catalog import CATALOG_FILE, Catalog

if TYPE_CHECKING:
    from retrieval.aligners import Aligner

log = logging.getLogger(__name__)

DEFAULT_NAME = "default"
#: The writer lock; while held it holds a JSON note: the holder's command, pid and start time.
LOCK_FILE = "write.lock"


def home() -> Path:
    """Where named indexes live: $RETRIEVAL_HOME, else ./indexes."""
    return Path(os.environ.get("RETRIEVAL_HOME") or "indexes")


def read_holder(fd: int) -> dict[str, Any]:
    """The note a lock's holder wrote into the lock file (command, pid, since); {} when there is none."""
    try:
        return dict(json.loads(os.pread(fd, 4096, 0) or b"{}"))
    except (OSError, ValueError, TypeError):
        return {}


def busy_line(who: dict[str, Any], folder: Path) -> str:
    """One line naming who writes to `folder` (`who` as :func:`read_holder` gives it)."""
    command = who.get("command", "retrieval index")
    pid = f"pid {who['pid']}, " if who.get("pid") else ""
    since = f"since {who['since']}" if who.get("since") else "now"
    if command == "retrieval watch":
        return f"`retrieval watch` ({pid}{since}) is writing a batch to {folder}"
    return f"another `{command}` run ({pid}{since}) is writing to {folder}"


def lock_holder(folder: Path) -> dict[str, Any] | None:
    """Who holds `folder`'s writer lock now (command, pid, since), or None when nobody does."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_holder(fd)
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def resolve(name_or_path: str | os.PathLike | None) -> Path:
    """A bare name is a folder under :func:`home`; anything with a slash is a path."""
    value = str(name_or_path or DEFAULT_NAME)
    if os.sep in value or value.startswith(".") or value.startswith("~"):
        return Path(value).expanduser().resolve()
    return (home() / value).resolve()


class IndexStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.catalog = Catalog(self.folder / CATALOG_FILE)

    @classmethod
    def open(cls, name_or_path, create: bool = False) -> IndexStore:
        folder = resolve(name_or_path)
        if not (folder / CATALOG_FILE).exists():
            if not create:
                raise IndexNotFound(
                    f"no index at {folder}. Build one with: retrieval index FOLDER --index {name_or_path or DEFAULT_NAME}"
                )
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            raise RetrievalError(f"{folder} is not an index folder")
        return cls(folder)

    def close(self) -> None:
        self.catalog.close()

    # -- identity of the aligner --------------------------------------------
    @property
    def model_spec(self) -> str | None:
        return self.catalog.get_meta("model")

    def bind_model(self, aligner: Aligner) -> None:
        """Record the aligner on first use; refuse a different one afterwards."""
        identity = self.catalog.get_meta("model_identity")
        if identity is None:
            self.catalog.set_meta(model=aligner.spec, model_identity=aligner.identity, dim=aligner.dim)
            return
        self.check_model(aligner)

    def refuse_other_early(self, spec: str) -> None:
        """Refuse a model that certainly is not the index's, before paying to load it."""
        from retrieval.aligners import surely_other

        identity = self.catalog.get_meta("model_identity")
        if identity is not None and spec != self.model_spec and surely_other(spec, identity):
            raise ModelMismatch(self._other_model_message(spec))

    def _other_model_message(self, spec: str) -> str:
        return (
            f"index {self.folder} was built with {self.model_spec!r}, not {spec!r}: "
            "vectors from different models cannot be compared. Search it with its own model "
            "(leave out --model) or build a new index with --index NEW_NAME."
        )

    def check_model(self, aligner: Aligner) -> None:
        from retrieval.aligners import canonical_spec

        identity = self.catalog.get_meta("model_identity")
        # `default+ocr` (retired 2026-12-02) is an earlier version of `default`, not another model.
        if identity is not None and identity != aligner.identity and canonical_spec(self.model_spec) == aligner.spec:
            raise ModelMismatch(
                f"index {self.folder} was built with another version of {aligner.spec!r} "
                f"({identity}; this one is {aligner.identity}): its vectors cannot be mixed with new ones. "
                f"Re-index into a new index (--index NEW_NAME) or delete {self.folder} and index again."
            )
        if identity is not None and identity != aligner.identity:
            raise ModelMismatch(self._other_model_message(aligner.spec))

    # -- FAISS files --------------------------------------------------------
    def faiss_path(self, kind: str, generation: int) -> Path:
        return self.folder / f"{kind}-{generation}.faiss"

    def prune(self, generation: int) -> None:
        """Delete FAISS files (and on-disk inverted lists) older than the generation before `generation`."""
        for path in [*self.folder.glob("*.faiss"), *self.folder.glob("*.ivfdata")]:
            try:
                gen = int(path.stem.rsplit("-", 1)[1])
            except (IndexError, ValueError):
                continue
            if gen < generation - 1:
                path.unlink(missing_ok=True)
        for path in self.folder.glob("*.faiss.tmp-*"):
            path.unlink(missing_ok=True)
        for path in self.folder.glob("*.shards.tmp"):  # an on-disk build's shards, left by a killed run
            shutil.rmtree(path, ignore_errors=True)

    @contextmanager
    def write_lock(self, holder: str = "retrieval index", wait_for: Container[str] = ()) -> Iterator[None]:
        """Only one run writes at a time; searches never need the lock.

        `holder` names the command taking it (`retrieval index`, `retrieval watch`); it is
        written into the lock file with this process's id, so a run that finds the lock held
        can say who holds it. A lock held by a command in `wait_for` is waited for (said once
        in the log): a watcher's batch ends by itself. Any other holder is refused with
        :class:`IndexBusy`.
        """
        if self.catalog.readonly:
            raise StorageError(f"{self.folder} is read-only: indexing cannot write there (searches still work)")
        # Opened without truncating: the holder's note must survive a second opener that fails to lock.
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    who = read_holder(fd)
                    if who.get("command") not in wait_for:
                        raise IndexBusy(f"{busy_line(who, self.folder)}; wait for it to finish") from None
                    if not told:
                        log.warning("%s; waiting for it to finish", busy_line(who, self.folder))
                        told = True
                    time.sleep(0.2)
            note = json.dumps({"command": holder, "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")})
            os.ftruncate(fd, 0)
            os.pwrite(fd, note.encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def disk_usage(self) -> dict[str, int]:
        return {p.name: p.stat().st_size for p in sorted(self.folder.iterdir()) if p.is_file()}
