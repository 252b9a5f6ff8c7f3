"""Faces at indexing time, and `retrieval people scan` for the contents an index has not looked at.

An index run with faces on hands a :class:`~retrieval.aligners.faces.FaceFinder` to the decoding
workers (local processes, or a cluster's decode tasks: retrieval.cluster.ray_index), which look
for faces in the picture they decode anyway (:mod:`retrieval.media.decode`); :func:`store_found`
commits what they found beside the vectors, keyed by content hash. What no worker looked at
(unchanged files of an index that had faces off) is scanned by :func:`scan`, the same function
as `retrieval people scan`: each content decoded once more, no model but the face models,
committed batch by batch with its scan so an interrupted scan resumes where it stopped; an
index run's source decodes them (:data:`LoadFaces`: on a cluster, its tasks read them). Then
the new faces are grouped into people (:mod:`retrieval.people.clustering`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from retrieval.aligners.faces import FaceFinder, FaceSettings
from retrieval.ingest.settings import IndexSettings
from retrieval.ingest.stream import batched, load_stream
from retrieval.media.decode import Loaded
from retrieval.media.video import is_video
from retrieval.people.clustering import ClusterSettings, ClusterSummary, cluster
from retrieval.progress import NullProgress, Progress
from retrieval.storage.catalog import Catalog
from retrieval.storage.faces import FACES_META, FaceScan, has_faces, put_scans, unscanned
from retrieval.storage.store import IndexStore

log = logging.getLogger(__name__)

#: What face_scans.detector records for a content the face detector failed on (not retried).
FAILED = "failed"
#: What it records for a video: faces are looked for in photos only (a video's frames are not).
VIDEO = "video"

#: Who decodes already indexed files for their faces alone: (paths, finder, settings) -> their
#: rows, in order, with ``faces`` (None for a file that could not be read now).
LoadFaces = Callable[[Sequence[str], FaceFinder, IndexSettings], Iterable[Loaded]]


@dataclass
class ScanSummary:
    scanned: int = 0
    faces: int = 0
    #: Photos that could not be read now (moved since indexing, unplugged): looked at next time.
    unreadable: int = 0
    seconds: float = 0.0
    people: ClusterSummary | None = None

    def line(self) -> str:
        text = f"scanned {self.scanned} photos, found {self.faces} faces in {self.seconds:.1f}s"
        if self.unreadable:
            text += f" ({self.unreadable} could not be read: `retrieval index` their folders, then scan again)"
        if self.people is not None:
            text += f"; {self.people.joined} joined people, {self.people.new_people} new people"
        return text


def faces_wanted(catalog: Catalog, settings: IndexSettings) -> bool:
    """Whether this run looks for faces: as asked, else as the index remembers; a new index does,
    an index from before faces existed does not until asked (`people scan`, `index --faces`)."""
    if settings.faces is not None:
        return settings.faces
    remembered = catalog.get_meta(FACES_META)
    if remembered is not None:
        return bool(remembered)
    return catalog.count("images") == 0


def finder_for(settings: IndexSettings) -> FaceFinder:
    return FaceFinder(settings.face_settings or FaceSettings())


def store_found(catalog: Catalog, loaded: list[Loaded], detector: str) -> int:
    """Commit the faces the workers found in `loaded` (contents met for the first time); returns how many."""
    scans = [
        FaceScan(item.hash, item.faces, FAILED if item.face_error else detector)
        for item in loaded
        if item.hash is not None and item.faces is not None
    ]
    # A video is recorded as looked at, so later runs do not sample it again for faces.
    scans += [FaceScan(item.hash, [], VIDEO) for item in loaded if item.hash is not None and item.times is not None]
    return put_scans(catalog, scans) if scans else 0


def load_faces(paths: Sequence[str], finder: FaceFinder, settings: IndexSettings) -> Iterable[Loaded]:
    """:data:`LoadFaces` on this machine: decoding worker processes, no image model."""
    return load_stream(paths, None, frozenset(), settings, count=len(paths), faces=finder)


def scan(
    store: IndexStore, settings: IndexSettings | None = None, progress: Progress | None = None,
    finder: FaceFinder | None = None, clustering: ClusterSettings | None = None, load: LoadFaces | None = None,
) -> ScanSummary:
    """Look for faces in every indexed content not looked at yet, then group the faces into people.

    The caller holds the writer lock. Resumable: each batch is committed with its scans.
    Turns faces on for the index's later runs. `load` decodes the files (an index run's
    source: a cluster's tasks for a Ray run); None: :func:`load_faces`, on this machine.
    """
    started = time.monotonic()
    settings = replace(settings or IndexSettings(), faces=True)
    progress = progress or NullProgress()
    catalog = store.catalog
    # Each write is a commit: an index run with nothing to look at must not pay for any.
    if not has_faces(catalog):
        catalog.migrate()
    if catalog.get_meta(FACES_META) is not True:
        catalog.set_meta(**{FACES_META: True})
    summary = ScanSummary()
    todo = unscanned(catalog)
    videos = [FaceScan(digest, [], VIDEO) for digest, path in todo if is_video(path)]
    if videos:
        put_scans(catalog, videos)
        todo = [(digest, path) for digest, path in todo if not is_video(path)]
    if todo:
        finder = (finder or finder_for(settings)).prepare()
        progress.start(len(todo), "faces")
        paths = [path for _, path in todo]
        stream = (load or load_faces)(paths, finder, settings)
        for batch in batched(stream, settings.batch_size):
            summary.faces += store_found(catalog, batch, finder.settings.name)
            summary.scanned += sum(1 for item in batch if item.faces is not None)
            summary.unreadable += sum(1 for item in batch if item.faces is None and item.times is None)
            progress.advance(len(batch))
        progress.close()
    summary.people = group_people(catalog, clustering)
    summary.seconds = time.monotonic() - started
    log.info("face scan: %s", summary.line())
    return summary


def group_people(catalog: Catalog, clustering: ClusterSettings | None = None) -> ClusterSummary:
    """Group the faces without a person (all of them but the user's, with ``full``)."""
    if not has_faces(catalog):
        return ClusterSummary()
    return cluster(catalog, clustering)
