"""How an index run is done: the settings passed down to every stage of ingesting."""

from __future__ import annotations

import os
from dataclasses import dataclass

from retrieval.aligners.faces import FaceSettings
from retrieval.ann import DEFAULT as ANN_DEFAULT
from retrieval.ann import AnnSettings
from retrieval.media.files import WalkSettings
from retrieval.media.video import VideoSettings


@dataclass
class IndexSettings:
    batch_size: int = 32
    #: Decoding processes; None picks one per core. On 2 cores, 2 workers beside the encoder's
    #: 2 threads reached 0.81-0.86 of the encoder-only rate and 1 worker 0.73-0.77: with one,
    #: a core sat idle more often and the encoder's threads waited on each other more.
    workers: int | None = None
    #: Decode large JPEGs at reduced scale (Pillow draft mode).
    draft: bool = True
    #: Files per task sent to a worker: big enough to amortize inter-process overhead.
    chunk: int = 8
    #: Bytes the image index may take in memory; above it the index keeps 8-bit codes and
    #: searches re-score candidates exactly (ann.factory_for). None: a quarter of this machine's memory.
    max_index_memory: int | None = None
    #: Seconds one file may take to decode before it is skipped as pathological (a 100-megapixel
    #: JPEG decodes in well under a second here); a worker stuck past it is replaced.
    decode_seconds: float | None = 30.0
    #: Keep the image index's inverted lists on disk (retrieval.ann.ondisk) whatever its size; with
    #: False they go on disk only when even 8-bit codes exceed max_index_memory. The choice is
    #: remembered by the index: None keeps the one its last publish was given.
    on_disk: bool | None = None
    #: The index code's choices by size and target (exact limit, recall target...): the engine's by default.
    ann: AnnSettings = ANN_DEFAULT
    #: How the walk groups files into photos (RAW+JPEG pairs as one photo, or each on its own).
    walk: WalkSettings = WalkSettings()
    #: How videos are sampled into frames: the cap per video, the time per file, frames a minute.
    video: VideoSettings = VideoSettings()

    #: Look for faces while decoding (docs/people.md): None keeps what the index remembers (a new
    #: index does; one made before faces existed does not until `people scan` or `--faces`).
    faces: bool | None = None
    #: How faces are looked for; None: the measured defaults (retrieval.aligners.faces).
    face_settings: FaceSettings | None = None

    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        return max(1, len(os.sched_getaffinity(0)))
