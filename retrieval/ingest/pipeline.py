"""The indexing pipeline: walk -> load (workers) -> encode (batches) -> store vectors -> plan -> publish.

A :class:`~retrieval.ingest.source.Source` walks, decodes and encodes (this machine by
default, or a Ray cluster); the rest is the same whoever does that. What the run knows
about each file (its path, whether it changed, its hash) is staged in SQLite
(:mod:`retrieval.storage.staging`) rather than kept in Python, so memory stays flat whatever the
folder size. Encoded vectors are committed to the catalog as they come (keyed by content
hash), so a killed run keeps its work; nothing becomes visible to searches until
:func:`retrieval.ingest.publish.publish` switches generations in one transaction.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from retrieval.aligners.base import Aligner
from retrieval.aligners.faces import FaceFinder
from retrieval.errors import FolderGone
from retrieval.ingest.captions import read_captions
from retrieval.ingest.faces import faces_wanted
from retrieval.ingest.faces import scan as scan_faces
from retrieval.ingest.publish import damaged_kinds, publish
from retrieval.ingest.settings import IndexSettings
from retrieval.ingest.source import LocalSource, Source
from retrieval.ingest.stream import batched
from retrieval.media.files import ignored_hint
from retrieval.progress import NullProgress, Progress
from retrieval.storage.catalog import to_blob
from retrieval.storage.faces import has_unscanned
from retrieval.storage.staging import Staging
from retrieval.storage.store import IndexStore

# IndexSettings is named here too: it is run()'s parameter, imported from this module by its callers.
__all__ = ["IndexSettings", "RunSummary", "repair", "run"]

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    index: str
    model: str
    added: int = 0
    updated: int = 0
    removed: int = 0
    #: New paths whose content an indexed file that has gone had: renames and moves (no encoding).
    moved: int = 0
    unchanged: int = 0
    encoded: int = 0
    captions: int | None = None
    skipped: list[dict] = field(default_factory=list)
    #: Files the walk left out, by extension: formats nothing here decodes (HEIC, videos, documents).
    ignored: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    generation: int = 0
    #: Videos among the indexed files, and the frames they were sampled into (docs/video.md).
    videos: int = 0
    video_frames: int = 0
    #: Faces the index holds after the run; None when the run did not look for faces.
    faces: int | None = None

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out["skipped_count"] = len(self.skipped)
        out["ignored_count"] = sum(self.ignored.values())
        out["ignored_hints"] = self.ignored_hints()
        return out

    def ignored_hints(self) -> dict[str, str]:
        """For each ignored extension that something would read, what would."""
        return {ext: hint for ext in self.ignored if (hint := ignored_hint(ext)) is not None}

    def line(self) -> str:
        text = (
            f"added {self.added}, updated {self.updated}, moved {self.moved}, removed {self.removed}, "
            f"skipped {len(self.skipped)}, unchanged {self.unchanged}, encoded {self.encoded}"
        )
        if self.captions is not None:
            text += f", captions {self.captions}"
        if self.videos:
            text += f", videos {self.videos} ({self.video_frames} frames)"
        if self.faces is not None:
            text += f", faces {self.faces}"
        text = f"{text} in {self.seconds:.1f}s"
        if self.ignored:
            # Most first; a folder of many kinds names the five commonest.
            kinds = [f"{ext or '(no extension)'} {n}" for ext, n in list(self.ignored.items())[:5]]
            more = ", …" if len(self.ignored) > 5 else ""
            text += f"; ignored {sum(self.ignored.values())}: {', '.join(kinds)}{more}"
        return text


def _counted(items: Iterable[T], progress: Progress, every: int = 500) -> Iterator[T]:
    """Pass `items` through, advancing `progress` every `every` items (a walk can take minutes)."""
    n = 0
    for item in items:
        yield item
        n += 1
        if n == every:
            progress.advance(n)
            n = 0
    progress.advance(n)


# -- the run --------------------------------------------------------------------
def repair(store: IndexStore, settings: IndexSettings | None = None) -> RunSummary:
    """Rebuild the current generation's missing or damaged FAISS files from the catalog.

    No folder is read and no model is loaded: the catalog holds every vector. The rebuilt
    files are published as the next generation, like any run's.
    """
    started = time.monotonic()
    catalog = store.catalog
    summary = RunSummary(index=str(store.folder), model=catalog.get_meta("model") or "")
    with store.write_lock():
        catalog.migrate()  # publishing writes the current schema's columns
        damaged = damaged_kinds(store)
        summary.generation = catalog.generation
        summary.unchanged = catalog.count("images")
        if damaged and catalog.dim:
            staging = Staging(catalog, [])
            try:
                staging.add_stats([])
                plan = staging.plan(int(catalog.get_meta("next_id", 1)))
                summary.generation = publish(store, staging, plan, None, settings, damaged=damaged)
            finally:
                staging.close()
    summary.seconds = time.monotonic() - started
    log.info("repair run: rebuilt %s", ", ".join(sorted(damaged)) or "nothing")
    return summary


def run(
    store: IndexStore,
    aligner: Aligner,
    roots: Sequence[str | Path],
    *,
    captions_file: str | Path | None = None,
    settings: IndexSettings | None = None,
    progress: Progress | None = None,
    source: Source | None = None,
    holder: str = "retrieval index",
) -> RunSummary:
    """Bring the index up to date with `roots` (and a caption corpus, if given).

    Per-file bookkeeping lives in SQLite (:mod:`retrieval.storage.staging`), never in Python lists,
    so memory stays flat whatever the number of files. `source` says who walks, decodes and
    encodes (this machine by default; :mod:`retrieval.cluster` runs them on Ray); staging,
    planning and publishing are the same either way.

    A local folder that is not there, or goes away before the plan (an unplugged disk),
    raises :class:`FolderGone` before anything is planned: a run removes what it no longer
    finds under its folders, and a missing folder must not read as an empty one. `holder`
    names the command in the writer lock (:meth:`IndexStore.write_lock`); a watcher's
    batch in progress is waited for.
    """
    settings = settings or IndexSettings()
    source = source or LocalSource()
    progress = progress or NullProgress()
    started = time.monotonic()
    summary = RunSummary(index=str(store.folder), model=aligner.spec)
    _refuse_gone(roots)
    with store.write_lock(holder, wait_for=("retrieval watch",)):
        store.bind_model(aligner)
        store.catalog.migrate()  # an older catalog gains the new columns; its rows fill in below
        catalog = store.catalog
        named = source.roots(roots)
        # Every folder ever indexed: the server serves a file only while it lies inside one.
        catalog.set_meta(roots=sorted(set(catalog.get_meta("roots", [])) | {str(r) for r in named}))
        staging = Staging(catalog, named)
        # Faces on: content whose faces were never looked for is decoded again (not re-encoded).
        faces = faces_wanted(catalog, settings)
        if catalog.get_meta("faces") is not faces:
            catalog.set_meta(faces=faces)
        settings = replace(settings, faces=faces)
        known = catalog.known_hashes(faces=faces)
        try:
            progress.start(None, "finding files")
            ignored: Counter[str] = Counter()
            staging.add_stats(_counted(source.walk(named, ignored, settings.walk), progress))
            # Most first, then by name: the same order in the line and the JSON.
            summary.ignored = dict(sorted(ignored.items(), key=lambda item: (-item[1], item[0])))
            progress.close()
            progress.start(staging.todo_count(), "indexing")
            with catalog.quick_commits():
                summary.encoded += source.encode(store, aligner, staging, known, settings, progress)
            progress.close()

            captions = _caption_rows(store, aligner, captions_file, progress) if captions_file else None
            # Gone during the walk or the reading (unplugged): what was not found or read is not gone.
            _refuse_gone(named)
            plan = staging.plan(int(catalog.get_meta("next_id", 1)))
            summary.added, summary.updated, summary.removed, summary.moved = plan.added, plan.updated, plan.removed, plan.moved
            summary.unchanged, summary.skipped = plan.unchanged, staging.skipped()
            summary.videos, summary.video_frames = staging.videos()
            summary.captions = None if captions is None else len(captions)
            summary.generation = catalog.generation
            damaged = damaged_kinds(store)
            # --on-disk / --no-on-disk that differs from what the index remembers takes effect at once.
            switched = settings.on_disk is not None and settings.on_disk != bool(catalog.get_meta("on_disk", False))
            if faces:
                # Before publishing, so people are there when the photos are: what no worker
                # looked at (unchanged files of an index that had faces off), then the grouping.
                scan_faces(store, settings, progress, finder=_kept_finder(source, settings), load=source.load_faces)
            if plan.changed or captions is not None or catalog.generation == 0 or damaged or switched:
                # A cluster source builds an on-disk index's shards on the cluster (ray_shards).
                summary.generation = publish(store, staging, plan, captions, settings, damaged=damaged,
                                             add_shards=source.shard_builder(),
                                             encode_texts=aligner.encode_texts)
            if faces:
                if has_unscanned(catalog):  # a file first met in this run that no worker looked at
                    scan_faces(store, settings, progress, finder=_kept_finder(source, settings), load=source.load_faces)
                summary.faces = catalog.count("faces")
        finally:
            known.close()
            staging.close()
    summary.seconds = time.monotonic() - started
    log.info("index run: %s", summary.line())
    return summary


def _kept_finder(source: Source, settings: IndexSettings) -> FaceFinder | None:
    """The face finder a local source keeps across runs (a watcher's), so a scan reuses its models too."""
    return source.finder(settings) if isinstance(source, LocalSource) else None


def _refuse_gone(roots: Sequence[str | Path]) -> None:
    for root in roots:
        if "://" not in str(root) and not Path(root).expanduser().exists():
            raise FolderGone(
                f"folder {root} is not there (an unplugged disk?): nothing under it was removed from the index"
            )


def _caption_rows(store: IndexStore, aligner: Aligner, captions_file: str | Path, progress: Progress) -> list[dict]:
    """The caption corpus as catalog rows; texts already encoded keep their id and vector."""
    catalog = store.catalog
    texts = list(dict.fromkeys(read_captions(captions_file)))  # unique, in file order
    existing = {
        text: (cid, blob) for cid, text, blob in catalog.db.execute("SELECT id, text, vector FROM captions")
    }
    next_id = max([cid for cid, _ in existing.values()], default=0) + 1
    rows, new = [], [t for t in texts if t not in existing]
    vectors: dict[str, bytes] = {}
    progress.start(len(new), "captions")
    for batch in batched(new, 256):
        for text, vec in zip(batch, aligner.encode_texts(batch)):
            vectors[text] = to_blob(vec)
        progress.advance(len(batch))
    progress.close()
    for text in texts:
        if text in existing:
            cid, blob = existing[text]
        else:
            cid, blob, next_id = next_id, vectors[text], next_id + 1
        rows.append({"id": cid, "text": text, "vector": blob})
    return rows
