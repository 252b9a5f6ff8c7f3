"""A new index filled from embedding files in clip-retrieval's layout, without encoding anything.

The layout, and what an imported row is, are described in :mod:`retrieval.storage.exchange`
(which reads the files); this module checks them against the model, writes the catalog rows and
publishes generation 1 the way an index run publishes (:mod:`.publish`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval import ann
from retrieval.aligners import Aligner
from retrieval.errors import RetrievalError
from retrieval.ingest import publish as publishing
from retrieval.progress import Progress
from retrieval.storage import frames, integrity
from retrieval.storage.catalog import to_blob
from retrieval.storage.exchange import (
    ImageBlock,
    Layout,
    LayoutError,
    caption_rows,
    check_vectors,
    image_rows,
    import_hash,
    read_layout,
)
from retrieval.storage.staging import Plan
from retrieval.storage.store import IndexStore, resolve


@dataclass
class ImportSummary:
    index: str
    images: int
    captions: int
    generation: int

    def line(self) -> str:
        return f"imported {self.images} image vectors and {self.captions} captions into {self.index} (generation {self.generation})"


def import_into(store: IndexStore, aligner: Aligner, layout: Layout, *, on_disk: bool = False, memory_limit: int | None = None,
                progress: Progress | None = None) -> ImportSummary:
    """Fill a new, empty index from `layout` and publish it as generation 1 (one transaction)."""
    catalog = store.catalog
    with store.write_lock():
        store.bind_model(aligner)
        count, next_id = 0, 1
        video_ids: dict[str, int] = {}  # a video's path -> its file id, for an export without ids
        if progress is not None:
            progress.start(layout.image_count, "importing")
        # Rows are committed in blocks; nothing is searchable before the publishing commit below.
        with catalog.quick_commits():
            for block in image_rows(layout):
                ids = block.ids or list(range(next_id, next_id + len(block.paths)))
                numbers = block.frames or [None] * len(ids)
                photos = [j for j, n in enumerate(numbers) if n is None]
                hashes = {j: import_hash(block.vectors[j]) for j in photos}
                companions, motion = block.companions or [None] * len(ids), block.motion or [None] * len(ids)
                with catalog.transaction() as conn:
                    conn.executemany("INSERT OR IGNORE INTO vectors (hash, vector) VALUES (?, ?)",
                                     ((hashes[j], to_blob(block.vectors[j])) for j in photos))
                    conn.executemany(
                        "INSERT OR IGNORE INTO images (id, path, size, mtime, hash, companions, motion) "
                        "VALUES (?, ?, NULL, NULL, ?, ?, ?)",
                        ((ids[j], block.paths[j], hashes[j], json.dumps(companions[j]) if companions[j] else None,
                          motion[j] or None) for j in photos))
                    # A video's frames wait until every row is read (retrieval/storage/frames.py).
                    times = block.times or []  # present wherever frames are (exchange.image_rows checks)
                    staged = [(_video_id(block, ids, j, video_ids, next_id), n, block.paths[j], _seconds(times[j]),
                               to_blob(block.vectors[j])) for j, n in enumerate(numbers) if n is not None]
                    if staged and frames.stage_imported(conn, staged) != len(staged):
                        raise LayoutError("a video's frame appears twice (the same id or image_path and frame number)")
                files = [ids[j] for j in photos] + [row[0] for row in staged]
                if max(files) >= frames.FRAME_STEP:
                    raise LayoutError(f"a photo's id must be below {frames.FRAME_STEP} (larger ids are videos' later "
                                      "frames, which need a frame column)")
                count += len(photos)
                next_id = max(next_id, max(files) + 1)
                if progress is not None:
                    progress.advance(len(block.paths))
            with catalog.transaction() as conn:
                conflict = frames.staged_conflict(conn)
                if conflict is not None:
                    raise LayoutError(f"the frames of video id {conflict[0]} name different files: {', '.join(conflict[1])}")
                count += frames.settle_imported(conn)
            if catalog.count("images") != count:
                raise LayoutError(
                    f"{count - catalog.count('images')} metadata row(s) repeat the image_path or id of an earlier row; "
                    "each image must appear once"
                )
            count = catalog.indexed_count()  # every vector the image index holds: a video's later frames too
            captions = 0
            for texts, vectors in caption_rows(layout):
                with catalog.transaction() as conn:
                    conn.executemany("INSERT OR IGNORE INTO captions (id, text, vector) VALUES (?, ?, ?)",
                                     ((captions + i + 1, t, to_blob(v)) for i, (t, v) in enumerate(zip(texts, vectors))))
                captions += len(texts)
        if progress is not None:
            progress.close()
        limit = memory_limit or ann.memory_limit_default()
        with catalog.publishing() as conn:
            plan = Plan(final_count=count, next_id=next_id)
            # The indexer's own choice of index type and writer (in memory, 8-bit, or lists on disk).
            meta = publishing.write_image_index(store, None, plan, 0, 1, limit, trust_previous=False, on_disk=on_disk)
            integrity.record(conn, store.faiss_path("images", 1), 1, count)
            if captions:
                caption_ids, vecs = publishing.caption_arrays(catalog, None)
                index, _ = ann.build(caption_ids, vecs, factory="IDMap2,Flat")
                ann.write(index, store.faiss_path("captions", 1))
                integrity.record(conn, store.faiss_path("captions", 1), 1, len(caption_ids))
                meta["captions_generation"] = 1
            catalog.set_meta(next_id=next_id, generation=1, imported_from=str(layout.folder), **meta)
    store.prune(1)
    return ImportSummary(str(store.folder), count, catalog.count("captions"), 1)


def _seconds(time: float | None) -> float:
    if time is None:  # exchange.image_rows refuses such a row first; kept so a caller's block cannot slip past
        raise LayoutError("a video's frame row needs its time (seconds into the video)")
    return float(time)


def _video_id(block: ImageBlock, ids: list[int], j: int, known: dict[str, int], next_id: int) -> int:
    """The file id of the video whose frame is row `j`: its FAISS id's file part (frames.file_ids),
    or, for an export without ids, one handed out per path."""
    if block.ids is not None:
        return int(frames.file_ids(np.asarray([ids[j]]))[0])
    path = block.paths[j]
    if path not in known:
        known[path] = max(next_id + len(ids), max(known.values(), default=0) + 1)
    return known[path]


def _model_for(layout: Layout, model: str | None) -> str:
    """The aligner spec to import with: the one the export recorded, or `model`; both must agree."""
    if model is None:
        if layout.model is None:
            raise LayoutError(f"{layout.folder} does not say which model made its vectors: give it with --model")
        return layout.model
    if layout.model is not None and model != layout.model:
        raise LayoutError(
            f"{layout.folder} was exported from an index built with {layout.model!r}, not {model!r}: "
            f"leave out --model (or give --model {layout.model})"
        )
    return model


def import_embeddings(folder: str | Path, index: str, model: str | None = None, *, on_disk: bool = False,
                      memory_limit: int | None = None, progress: Progress | None = None,
                      aligner: Aligner | None = None) -> ImportSummary:
    """Make a new index `index` from an embedding folder, without encoding anything.

    Everything is checked before the index folder is created (layout, row counts, dimension
    against `model`, every vector finite); a failure after that removes the folder again.
    """
    layout = read_layout(folder)
    model = _model_for(layout, model)
    target = resolve(index)
    if target.exists() and any(target.iterdir()):
        raise RetrievalError(f"{target} already exists: import makes a new index; choose another --index or delete it")
    if aligner is None:
        from retrieval.aligners import load_aligner

        aligner = load_aligner(model)
    if aligner.dim != layout.dim:
        raise LayoutError(
            f"{layout.folder} holds {layout.dim}-d vectors but {aligner.spec!r} makes {aligner.dim}-d vectors: "
            "import with the model that produced them (--model)"
        )
    check_vectors(layout)
    created = not target.exists()
    store = IndexStore.open(target, create=True)
    try:
        return import_into(store, aligner, layout, on_disk=on_disk, memory_limit=memory_limit, progress=progress)
    except BaseException:
        store.close()
        # Nothing half-built stays behind: the folder was empty or absent before.
        shutil.rmtree(target, ignore_errors=True)
        if not created:
            target.mkdir(exist_ok=True)
        raise
    finally:
        store.close()
