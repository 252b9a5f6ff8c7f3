"""Where a run's files come from and who encodes them: the :class:`Source` the pipeline drives.

:class:`LocalSource` (the default) walks local folders, decodes in worker processes and
encodes in this process; :class:`retrieval.cluster.ray_index.RaySource` does the same
work on a Ray cluster. Staging, planning and publishing do not depend on which.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from retrieval.aligners.base import Aligner
from retrieval.aligners.faces import FaceFinder, FaceSettings
from retrieval.ann.ondisk import AddShards
from retrieval.ingest.faces import finder_for, load_faces, store_found
from retrieval.ingest.settings import IndexSettings
from retrieval.ingest.stream import batched, load_stream
from retrieval.media.decode import Loaded
from retrieval.media.files import FileStat, WalkSettings, walk
from retrieval.progress import Progress, note
from retrieval.storage.staging import Staging
from retrieval.storage.store import IndexStore


class Source(Protocol):
    """What the pipeline needs from whoever walks, reads, decodes and encodes a run's files."""

    def roots(self, roots: Sequence[str | Path]) -> Sequence[str | Path]:
        """The folders as the catalog records them (resolved paths, normalized URLs)."""
        ...

    def walk(
        self, roots: Sequence[str | Path], ignored: Counter[str] | None = None, settings: WalkSettings = WalkSettings(),
    ) -> Iterator[FileStat]:
        """Every image and video file under `roots`, in a stable order, grouped into photos as
        `settings` say; the files left out counted in `ignored`, by extension."""
        ...

    def encode(
        self, store: IndexStore, aligner: Aligner, staging: Staging, known: Container[str],
        settings: IndexSettings, progress: Progress,
    ) -> int:
        """Read, encode and commit every pending file, recording each in `staging`; returns how many were encoded."""
        ...

    def shard_builder(self) -> AddShards | None:
        """Who adds an on-disk index's shards when the run publishes one: None for this process
        (:func:`retrieval.ann.ondisk.add_shards_here`), else a function that builds them elsewhere."""
        ...

    def load_faces(self, paths: Sequence[str], finder: FaceFinder, settings: IndexSettings) -> Iterable[Loaded]:
        """Indexed files decoded for their faces alone (:data:`retrieval.ingest.faces.LoadFaces`),
        where this source reads its files."""
        ...


class LocalSource(Source):
    """Files from local folders, decoded by worker processes and encoded here: the default.

    One source may serve many runs (a watcher's batches): its face finder is built once and
    keeps its loaded models, instead of dlib's detector and face models loading again per run.
    """

    def __init__(self) -> None:
        self._finder: FaceFinder | None = None

    def finder(self, settings: IndexSettings) -> FaceFinder:
        """The face finder for `settings`' face settings: the one of an earlier run when they are the same.
        Not prepared: building one costs nothing, its models load on first use."""
        wanted = settings.face_settings or FaceSettings()
        if self._finder is None or self._finder.settings != wanted:
            self._finder = finder_for(settings)
        return self._finder

    def roots(self, roots: Sequence[str | Path]) -> list[Path]:
        return [Path(r).expanduser().resolve() for r in roots]

    def walk(
        self, roots: Sequence[str | Path], ignored: Counter[str] | None = None, settings: WalkSettings = WalkSettings(),
    ) -> Iterator[FileStat]:
        return walk(roots, ignored, settings)

    def encode(
        self, store: IndexStore, aligner: Aligner, staging: Staging, known: Container[str],
        settings: IndexSettings, progress: Progress,
    ) -> int:
        encoded = 0
        # Faces are looked for in the picture the workers decode anyway (retrieval.ingest.faces).
        finder = self.finder(settings).prepare() if settings.faces and staging.todo_count() else None
        stream = load_stream(staging.todo_paths(), aligner.transform, known, settings, count=staging.todo_count(),
                             faces=finder)
        videos = frames = 0
        # A short first batch: the model starts on the first decoded chunk, not the first full batch.
        for batch in batched(stream, settings.batch_size, first=settings.chunk):
            encoded += encode_and_store(store, aligner, batch)
            if finder is not None:
                store_found(store.catalog, batch, finder.settings.name)
            staging.record(batch)
            sampled = [len(item.times) for item in batch if item.times is not None]
            if sampled:  # the files' count alone hides a video's frames; a run of photos shows as before
                videos, frames = videos + len(sampled), frames + sum(sampled)
                note(progress, f"videos {videos} ({frames} frames)")
            progress.advance(len(batch))
        return encoded

    def shard_builder(self) -> AddShards | None:
        return None

    def load_faces(self, paths: Sequence[str], finder: FaceFinder, settings: IndexSettings) -> Iterable[Loaded]:
        return load_faces(paths, finder, settings)


def encode_and_store(store: IndexStore, aligner: Aligner, loaded: list[Loaded]) -> int:
    """Encode the batch's images whose content is new (once per distinct hash) and commit them."""
    decoded = {item.hash: (item, item.pixels) for item in loaded if item.hash is not None and item.pixels is not None}
    # Workers skip content the catalog had when they looked; this catches the same content
    # met twice in one run (copies of a photo) and anything committed since.
    missing = store.catalog.missing_hashes(decoded)
    if not missing:
        return 0
    new = [(digest, item, pixels) for digest, (item, pixels) in decoded.items() if digest in missing]
    videos = [(digest, item) for digest, item, _ in new if item.times is not None]
    new = [entry for entry in new if entry[1].times is None]
    if new:
        vectors = aligner.encode_images(np.stack([pixels for _, _, pixels in new]))
        store.catalog.put_vectors([(digest, v, item.width, item.height) for (digest, item, _), v in zip(new, vectors)],
                                  [item.sameness for _, item, _ in new])
    for digest, item in videos:
        store.catalog.put_video(digest, item.times or [], encode_frames(aligner, item.pixels), item.width, item.height,
                                item.sameness)
    return len(new) + len(videos)


#: A video's frames go to the model this many at a time: a batch's worth, whatever the cap per video.
FRAME_BATCH = 32


def encode_frames(aligner: Aligner, pixels: np.ndarray | None) -> np.ndarray:
    """The vectors of a video's sampled frames (float16 pixels from the decoder: see media.decode.load_video)."""
    assert pixels is not None
    parts = [aligner.encode_images(pixels[i : i + FRAME_BATCH].astype(np.float32))
             for i in range(0, len(pixels), FRAME_BATCH)]
    return np.concatenate(parts)
