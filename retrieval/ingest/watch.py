"""A watched library: index folders, then keep the index current as files come, change and go.

The watcher is a loop around the same :func:`retrieval.ingest.pipeline.run` that ``retrieval
index`` calls, on the watched folders: the pipeline already encodes only what is new or
changed, keeps the vectors of moved and renamed files (matched by content hash) and removes
what has gone. What the watcher adds is *when* to run:

- changes come from `watchfiles` (inotify, or polling for network file systems);
- a burst is debounced: a run starts after a quiet period, or after a longest wait while
  changes keep coming, so copying thousands of photos publishes a handful of generations;
- a file still being written waits: a run starts only when every changed file kept its size
  and modification time over the quiet period;
- a watched folder that is not there (an unplugged disk) is left out of the run, so its photos
  stay in the index; it is said once, and the folder is picked up again when it is back;
- the writer lock is taken only while a run writes, so ``retrieval index``, ``check`` and
  ``backup`` work between batches.

Library code: nothing is printed. Each batch is one line handed to `report` (the CLI prints
it) and logged; each fault is one warning in the log. The caller owns signals; `stop` ends the loop between batches.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.aligners.base import Aligner
from retrieval.errors import FolderGone, IndexBusy, StorageError
from retrieval.ingest.pipeline import IndexSettings, RunSummary, run
from retrieval.ingest.source import LocalSource
from retrieval.storage.faults import explained
from retrieval.storage.store import IndexStore

log = logging.getLogger(__name__)

#: The command named in the writer lock while a batch writes.
HOLDER = "retrieval watch"


@dataclass(frozen=True)
class WatchSettings:
    #: Seconds without a change before a batch runs.
    quiet: float = 2.0
    #: Longest seconds a batch waits while changes keep coming.
    max_wait: float = 60.0
    #: Poll the folders instead of inotify (network file systems, some container mounts).
    poll: bool = False
    #: Milliseconds between polls with `poll`.
    poll_ms: int = 1000
    #: Seconds before a batch that failed on the environment (disk full, lock held) is tried again.
    retry: float = 30.0
    #: Changed paths whose size and mtime are followed one by one; past it only the quiet period counts.
    follow_limit: int = 20_000
    index: IndexSettings = field(default_factory=IndexSettings)


@dataclass
class Pending:
    """Changes seen since the last batch: counts for its line, and the stat of each changed file."""

    first: float = 0.0
    last: float = 0.0
    added: int = 0
    modified: int = 0
    deleted: int = 0
    stats: dict[str, tuple[int, int] | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.modified or self.deleted)

    def note(self, kind: str, path: str, now: float, limit: int) -> None:
        if not self:
            self.first = now
        self.last = now
        setattr(self, kind, getattr(self, kind) + 1)
        if kind != "deleted" and (path in self.stats or len(self.stats) < limit):
            self.stats[path] = _stat(path)

    def unsettled(self) -> int:
        """How many changed files are still being written (their size or mtime moved since last seen)."""
        moving = 0
        for path, before in self.stats.items():
            now = _stat(path)
            if now != before:
                self.stats[path] = now
                moving += 1
        return moving

    def words(self) -> str:
        parts = [f"{n} {what}" for what, n in (("new", self.added), ("changed", self.modified),
                                                ("deleted", self.deleted)) if n]
        return ", ".join(parts) or "no file events"


def _stat(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


class Watcher:
    """Keeps the index at `index` current with `roots` until `stop` is set."""

    def __init__(self, index: str | os.PathLike, aligner: Aligner, roots: Sequence[str | os.PathLike],
                 settings: WatchSettings | None = None, report: Callable[[str], None] | None = None,
                 stop: threading.Event | None = None):
        self.index = index
        self.aligner = aligner
        self.roots = [Path(r).expanduser().resolve() for r in roots]
        self.settings = settings or WatchSettings()
        self._report = report
        self.stop = stop or threading.Event()
        self.pending = Pending()
        #: Roots said to be gone, so that each is said once until it is back.
        self.gone: set[Path] = set()
        self.batches = 0
        self._not_before = 0.0
        #: The first batch has not run: it runs once the first watch is listening (see `run`).
        self._starting = True
        #: One source for every batch: its face finder (dlib's detector and face models) is built
        #: and loaded once, not once per batch (docs/people.md#which-detector-at-which-size).
        self.source = LocalSource()

    # -- lines -------------------------------------------------------------------------------
    def say(self, line: str) -> None:
        """A batch's line: to `report` (the CLI prints it) and the log."""
        log.info("%s", line)
        if self._report is not None:
            self._report(line)

    def warn(self, line: str) -> None:
        """A fault's line (a folder gone, the disk full): a warning in the log, which the CLI shows."""
        log.warning("%s", line)

    # -- folders -----------------------------------------------------------------------------
    def present(self) -> list[Path]:
        """The watched folders that are there; a newly gone or returned one is said once."""
        here = []
        for root in self.roots:
            reason = self._absent(root)
            if reason is None:
                here.append(root)
                if root in self.gone:
                    self.gone.discard(root)
                    self.warn(f"{root} is back: watching it again")
                    self._mark(time.monotonic())
            elif root not in self.gone:
                self.gone.add(root)
                self.warn(f"{root} is gone ({reason}): its photos stay in the index; waiting for it to come back")
        return here

    def _absent(self, root: Path) -> str | None:
        """Why `root` counts as not there, or None. An empty mount point counts: an unmounted disk leaves one."""
        if not root.exists():
            return "not found, an unplugged disk?"
        if root.is_dir() and not any(True for _ in _entries(root)) and self._indexed_under(root):
            return "empty while the index holds photos there, an unmounted disk?"
        return None

    def _indexed_under(self, root: Path) -> bool:
        store = IndexStore.open(self.index, create=True)
        try:
            prefix = str(root).rstrip(os.sep) + os.sep
            row = store.catalog.db.execute(
                "SELECT 1 FROM images WHERE substr(path, 1, ?) = ? LIMIT 1", (len(prefix), prefix)
            ).fetchone()
            return row is not None
        finally:
            store.close()

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Index what is there, then follow changes until `stop` is set.

        The first batch runs inside the first watch, once it listens: run before it, a file
        written between that batch's walk and the watch's start would wait for the next change.
        """
        while not self.stop.is_set():
            roots = self.present()
            if not roots:
                self.stop.wait(1.0)
                continue
            self._follow(roots)

    def _follow(self, roots: list[Path]) -> None:
        """Watch `roots` until a watched folder goes or comes back (then the caller watches anew)."""
        import watchfiles

        tick = 500  # ms: how often the loop looks at its clocks and the folders when nothing happens
        changes = watchfiles.watch(
            *roots, stop_event=self.stop, rust_timeout=tick, yield_on_timeout=True, debounce=tick, step=50,
            force_polling=self.settings.poll or None, poll_delay_ms=self.settings.poll_ms,
            ignore_permission_denied=True, raise_interrupt=True, watch_filter=_visible,
        )
        kinds = {watchfiles.Change.added: "added", watchfiles.Change.modified: "modified",
                 watchfiles.Change.deleted: "deleted"}
        try:
            for found in changes:
                if self._starting:
                    self._starting = False
                    self.batch("start")
                now = time.monotonic()
                for change, path in found:
                    self.pending.note(kinds[change], path, now, self.settings.follow_limit)
                if self.present() != roots:
                    # The changes wait for the watch of the new set of folders: a batch run before
                    # that watch starts would miss a file written between its walk and the watch.
                    return
                self._due(now)
                if self.stop.is_set():
                    return
        except FileNotFoundError:
            return  # a root went between the check and the watch: the caller looks again

    def _mark(self, now: float) -> None:
        """A change that events do not show (a folder came back): it calls for a batch too."""
        self.pending.note("modified", "", now, 0)

    def _due(self, now: float) -> None:
        pending, s = self.pending, self.settings
        if not pending or now < self._not_before:
            return
        quiet = now - pending.last >= s.quiet
        overdue = now - pending.first >= s.max_wait
        if not (quiet or overdue):
            return
        if not overdue and pending.unsettled():
            pending.last = now  # still being written: a quiet period from now
            return
        self.batch(pending.words())

    def batch(self, what: str) -> RunSummary | None:
        """One pipeline run over the present folders; its line says what changed and what it did."""
        roots = self.present()
        pending = self.pending
        self.pending = Pending()
        if not roots:
            return None
        started = time.monotonic()
        try:
            store = IndexStore.open(self.index, create=True)
            try:
                with explained(store.folder, "indexing"):
                    summary = run(store, self.aligner, roots, settings=self.settings.index, source=self.source,
                                  holder=HOLDER)
            finally:
                store.close()
        except (FolderGone, IndexBusy, StorageError) as exc:
            # The environment, not the watcher: one line, and the changes wait for the next try.
            self.warn(f"batch ({what}) not run: {exc}; trying again in {self.settings.retry:.0f}s")
            self.pending = _merged(pending, self.pending)
            if not self.pending:
                self._mark(time.monotonic())  # a failed first run is tried again too
            self._not_before = time.monotonic() + self.settings.retry
            return None
        skipped = f", {len(summary.skipped)} not indexed (`retrieval index --json` lists why)" if summary.skipped else ""
        self.say(
            f"batch {self.batches + 1} ({what}): added {summary.added}, updated {summary.updated}, moved {summary.moved}, "
            f"removed {summary.removed}{skipped}, generation {summary.generation}, "
            f"{time.monotonic() - started:.1f}s"
        )
        self.batches += 1  # after its line: whoever sees the count can read the line
        return summary


def open_watcher(folders: Sequence[str | os.PathLike], index: str | os.PathLike, model: str | None = None,
                 settings: WatchSettings | None = None, report: Callable[[str], None] | None = None,
                 stop: threading.Event | None = None) -> Watcher:
    """A watcher of `folders` for `index`, with the index's own aligner (else `model`, else `default`) loaded."""
    from retrieval.aligners import load_aligner

    store = IndexStore.open(index, create=True)
    try:
        spec = model or store.model_spec or "default"
        store.refuse_other_early(spec)  # compared again after loading, by the first run (bind_model)
    finally:
        store.close()
    return Watcher(index, load_aligner(spec), folders, settings, report, stop)


def _merged(older: Pending, newer: Pending) -> Pending:
    if not newer:
        return older
    older.last = max(older.last, newer.last)
    older.added += newer.added
    older.modified += newer.modified
    older.deleted += newer.deleted
    older.stats.update(newer.stats)
    return older


def _visible(change: object, path: str) -> bool:
    # Hidden names are what the walk passes over too; they include the temporary files of
    # rsync and browsers, renamed to their real name when complete.
    return not os.path.basename(path).startswith(".")


def _entries(root: Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(root) as it:
            yield from it
    except OSError:
        return
