"""The indexing pipeline: walk -> load (workers) -> encode (batches) -> store vectors -> plan -> publish.

Stages are plain functions over batches. Decoding runs in worker processes while the
main process encodes the previous batch; at most a few chunks are in flight. What the run
knows about each file (its path, whether it changed, its hash) is staged in SQLite
(:mod:`retrieval.storage.staging`) rather than kept in Python, so memory stays flat whatever the
folder size. Encoded vectors are committed to the catalog as they come (keyed by content
hash), so a killed run keeps its work; nothing becomes visible to searches until
:func:`publish` switches generations in one transaction.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.ann import index as faiss_index
from retrieval.ann import ondisk
from retrieval.ingest.captions import read_captions
from retrieval.media.loader import FileStat, Loaded, load_many, walk
from retrieval.media.workers import DecodePool, Task
from retrieval.progress import NullProgress, Progress
from retrieval.storage import integrity
from retrieval.storage.catalog import from_blobs, to_blob
from retrieval.storage.staging import Plan, Staging
from retrieval.storage.store import IndexStore

log = logging.getLogger(__name__)


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
    #: searches re-score candidates exactly (index.factory_for). None: a quarter of this machine's memory.
    max_index_memory: int | None = None
    #: Seconds one file may take to decode before it is skipped as pathological (a 100-megapixel
    #: JPEG decodes in well under a second here); a worker stuck past it is replaced.
    decode_seconds: float | None = 30.0
    #: Keep the image index's inverted lists on disk (retrieval.ann.ondisk) whatever its size; with
    #: False they go on disk only when even 8-bit codes exceed max_index_memory. The choice is
    #: remembered by the index: None keeps the one its last publish was given.
    on_disk: bool | None = None

    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        return max(1, len(os.sched_getaffinity(0)))


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
    seconds: float = 0.0
    generation: int = 0

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out["skipped_count"] = len(self.skipped)
        return out

    def line(self) -> str:
        text = (
            f"added {self.added}, updated {self.updated}, moved {self.moved}, removed {self.removed}, "
            f"skipped {len(self.skipped)}, unchanged {self.unchanged}, encoded {self.encoded}"
        )
        if self.captions is not None:
            text += f", captions {self.captions}"
        return f"{text} in {self.seconds:.1f}s"


# -- loading in worker processes ------------------------------------------------
def load_stream(
    paths: Iterable[str],
    transform,
    known: Container[str],
    settings: IndexSettings,
    count: int | None = None,
) -> Iterator[Loaded]:
    """Yield loaded files in order, decoding ahead in worker processes with bounded memory.

    `paths` may be a lazy iterable (then give `count`); it is consumed a chunk at a time.
    """
    count = len(paths) if count is None else count  # type: ignore[arg-type]
    chunks = batched(paths, settings.chunk)
    workers = settings.worker_count()
    limit = settings.decode_seconds
    if workers == 0 or count <= settings.chunk:
        for chunk in chunks:
            yield from load_many(chunk, transform, known, settings.draft, limit)
        return
    # A stuck or crashed worker is replaced and only the file at fault is skipped (retrieval.media.workers).
    with DecodePool(workers, transform, known, settings.draft, limit) as pool:
        pending: deque[Task] = deque()
        first = next(chunks, None)
        try:
            for chunk in chunks:
                pending.append(pool.submit(chunk))
                if len(pending) >= 2 * workers + 2:
                    break
            # Spawned workers need a few tenths of a second to start; this process would sit
            # idle until then, so it decodes the first chunk itself and the model starts sooner.
            if first is not None:
                yield from load_many(first, transform, known, settings.draft, limit)
            while pending:
                done = pool.result(pending.popleft())
                nxt = next(chunks, None)
                if nxt is not None:
                    pending.append(pool.submit(nxt))
                yield from done
        finally:
            pending.clear()


def batched(items: Iterable, size: int, first: int | None = None) -> Iterator[list]:
    """Lists of `size` items (the last may be shorter); the first list holds `first` items if given."""
    batch: list = []
    limit = first or size
    for item in items:
        batch.append(item)
        if len(batch) == limit:
            yield batch
            batch, limit = [], size
    if batch:
        yield batch


def _counted(items: Iterable, progress: Progress, every: int = 500) -> Iterator:
    """Pass `items` through, advancing `progress` every `every` items (a walk can take minutes)."""
    n = 0
    for item in items:
        yield item
        n += 1
        if n == every:
            progress.advance(n)
            n = 0
    progress.advance(n)


def encode_and_store(store: IndexStore, aligner, loaded: list[Loaded]) -> int:
    """Encode the batch's images whose content is new (once per distinct hash) and commit them."""
    decoded = {item.hash: item for item in loaded if item.pixels is not None}
    # Workers skip content the catalog had when they looked; this catches the same content
    # met twice in one run (copies of a photo) and anything committed since.
    missing = store.catalog.missing_hashes(decoded)
    if not missing:
        return 0
    items = [item for h, item in decoded.items() if h in missing]
    vectors = aligner.encode_images(np.stack([it.pixels for it in items]))
    store.catalog.put_vectors([(it.hash, v, it.width, it.height) for it, v in zip(items, vectors)])
    return len(items)


# -- the run --------------------------------------------------------------------
class LocalSource:
    """Files from local folders, decoded by worker processes and encoded here: the default.

    :class:`retrieval.cluster.ray_index.RaySource` has the same three methods.
    """

    def roots(self, roots: list[str | Path]) -> list[Path]:
        return [Path(r).expanduser().resolve() for r in roots]

    def walk(self, roots: list[Path]) -> Iterator[FileStat]:
        return walk(roots)

    def encode(self, store: IndexStore, aligner, staging: Staging, known, settings: IndexSettings, progress: Progress) -> int:
        """Read, encode and commit every pending file, recording each in `staging`; returns how many were encoded."""
        encoded = 0
        stream = load_stream(staging.todo_paths(), aligner.transform, known, settings, count=staging.todo_count())
        # A short first batch: the model starts on the first decoded chunk, not the first full batch.
        for batch in batched(stream, settings.batch_size, first=settings.chunk):
            encoded += encode_and_store(store, aligner, batch)
            staging.record(batch)
            progress.advance(len(batch))
        return encoded


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
    aligner,
    roots: list[str | Path],
    *,
    captions_file: str | Path | None = None,
    settings: IndexSettings | None = None,
    progress: Progress | None = None,
    source: LocalSource | None = None,
) -> RunSummary:
    """Bring the index up to date with `roots` (and a caption corpus, if given).

    Per-file bookkeeping lives in SQLite (:mod:`retrieval.storage.staging`), never in Python lists,
    so memory stays flat whatever the number of files. `source` says who walks, decodes and
    encodes (this machine by default; :mod:`retrieval.cluster` runs them on Ray); staging,
    planning and publishing are the same either way.
    """
    settings = settings or IndexSettings()
    source = source or LocalSource()
    progress = progress or NullProgress()
    started = time.monotonic()
    summary = RunSummary(index=str(store.folder), model=aligner.spec)
    with store.write_lock():
        store.bind_model(aligner)
        store.catalog.migrate()  # an older catalog gains the new columns; its rows fill in below
        catalog = store.catalog
        roots = source.roots(roots)
        # Every folder ever indexed: the server serves a file only while it lies inside one.
        catalog.set_meta(roots=sorted(set(catalog.get_meta("roots", [])) | {str(r) for r in roots}))
        staging = Staging(catalog, roots)
        known = catalog.known_hashes()
        try:
            progress.start(None, "finding files")
            staging.add_stats(_counted(source.walk(roots), progress))
            progress.close()
            progress.start(staging.todo_count(), "indexing")
            with catalog.quick_commits():
                summary.encoded += source.encode(store, aligner, staging, known, settings, progress)
            progress.close()

            captions = _caption_rows(store, aligner, captions_file, progress) if captions_file else None
            plan = staging.plan(int(catalog.get_meta("next_id", 1)))
            summary.added, summary.updated, summary.removed, summary.moved = plan.added, plan.updated, plan.removed, plan.moved
            summary.unchanged, summary.skipped = plan.unchanged, staging.skipped()
            summary.captions = None if captions is None else len(captions)
            summary.generation = catalog.generation
            damaged = damaged_kinds(store)
            # --on-disk / --no-on-disk that differs from what the index remembers takes effect at once.
            switched = settings.on_disk is not None and settings.on_disk != bool(catalog.get_meta("on_disk", False))
            if plan.changed or captions is not None or catalog.generation == 0 or damaged or switched:
                # A cluster source builds an on-disk index's shards on the cluster (ray_shards).
                summary.generation = publish(store, staging, plan, captions, settings, damaged=damaged,
                                             add_shards=getattr(source, "add_shards", None),
                                             encode_texts=aligner.encode_texts)
        finally:
            known.close()
            staging.close()
    summary.seconds = time.monotonic() - started
    log.info("index run: %s", summary.line())
    return summary


def _caption_rows(store: IndexStore, aligner, captions_file, progress: Progress) -> list[dict]:
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


def publish(
    store: IndexStore, staging: Staging, plan: Plan, captions: list[dict] | None, settings: IndexSettings | None = None,
    damaged: set[str] | None = None, add_shards: ondisk.AddShards | None = None, encode_texts=None,
) -> int:
    """Switch the catalog to the next generation, with its FAISS files, atomically.

    `encode_texts`: the aligner's, so that an approximate index is tuned on real text
    queries (retrieval.ann.probes); a run with no model (a repair) tunes on a stand-in.

    Inside one catalog transaction: apply the plan, write generation g+1's FAISS files
    from the rows as they now stand, then commit. Searches keep reading generation g
    (its catalog snapshot and its files) until the commit; a run killed before it leaves
    only an unreferenced g+1 file, which the next run overwrites.
    """
    catalog = store.catalog
    old_gen = catalog.generation
    gen = old_gen + 1
    # Damaged files of the current generation are not built upon: they are rebuilt from the catalog.
    damaged = damaged_kinds(store) if damaged is None else damaged
    with catalog.publishing() as conn:
        staging.apply()
        limit = (settings or IndexSettings()).max_index_memory or faiss_index.memory_limit_default()
        meta = _write_image_index(
            store, staging, plan, old_gen, gen, limit, trust_previous="images" not in damaged,
            on_disk=settings.on_disk if settings else None, add_shards=add_shards, encode_texts=encode_texts,
        )
        integrity.record(conn, store.faiss_path("images", gen), gen, plan.final_count)
        lists = ondisk.lists_path(store.faiss_path("images", gen))
        if lists.exists() and meta["index_factory"].startswith("IVF") and "_HNSW" in meta["index_factory"]:
            # An on-disk index's lists file is checked like the FAISS files (retrieval check, the next run).
            integrity.record(conn, lists, gen, plan.final_count)
        old_captions = store.faiss_path("captions", old_gen)
        # A run killed before its commit may have left a captions file under this generation's name.
        store.faiss_path("captions", gen).unlink(missing_ok=True)
        if captions is not None or ("captions" in damaged and catalog.count("captions")):
            if captions is not None:
                catalog.replace_captions(captions)
            ids, vecs = _caption_arrays(catalog, captions)
            index, _ = faiss_index.build(ids, vecs, factory="IDMap2,Flat")
            faiss_index.write(index, store.faiss_path("captions", gen))
            meta["captions_generation"] = gen
        elif old_captions.exists() and "captions" not in damaged:
            # Unchanged captions: the new generation links to the same file content.
            os.link(old_captions, store.faiss_path("captions", gen))
        if store.faiss_path("captions", gen).exists():
            integrity.record(conn, store.faiss_path("captions", gen), gen, catalog.count("captions"))
        catalog.set_meta(next_id=plan.next_id, generation=gen, **meta)
    store.prune(gen)
    return gen


def damaged_kinds(store: IndexStore) -> set[str]:
    """The kinds ("images", "captions") whose current FAISS file is missing or differs from its record."""
    catalog, gen = store.catalog, store.catalog.generation
    out = set()
    if gen == 0:
        return out
    for kind in ("images", "captions"):
        path = store.faiss_path(kind, gen)
        if kind == "captions" and not path.exists() and not catalog.count("captions"):
            continue
        what = integrity.problem(catalog.db.conn, path, full=True)
        if not what and integrity.lookup(catalog.db.conn, path.name) is None:
            what = _unrecorded_problem(path, catalog.count(kind))
        lists = ondisk.lists_path(path)
        if not what and kind == "images" and integrity.lookup(catalog.db.conn, lists.name) is not None:
            # Size and mtime only (the whole file when they differ): gigabytes at ten million vectors.
            what = integrity.problem(catalog.db.conn, lists, full=None)
            path = lists if what else path
        if what:
            log.warning("%s %s: rebuilding it from the catalog", path, what)
            out.add(kind)
    return out


def _unrecorded_problem(path: Path, rows: int) -> str | None:
    """A file published before checksums were recorded: it must at least load and hold every row."""
    try:
        ntotal = faiss_index.read(path, mmap=True).ntotal
    except RuntimeError:
        return "cannot be read"
    return None if ntotal == rows else f"holds {ntotal} vectors for {rows} catalog rows"


def _caption_arrays(catalog, captions: list[dict] | None) -> tuple[np.ndarray, np.ndarray]:
    """Caption ids and vectors: from the rows being published, or from the catalog (a rebuild)."""
    if captions is None:
        chunks = list(catalog.caption_vectors())
        if not chunks:
            return np.zeros(0, np.int64), np.zeros((0, catalog.dim), np.float32)
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])
    ids = np.array([r["id"] for r in captions], dtype=np.int64)
    return ids, from_blobs((r["vector"] for r in captions), catalog.dim)


def _write_image_index(
    store: IndexStore, staging: Staging, plan: Plan, old_gen: int, gen: int, memory_limit: int, trust_previous: bool = True,
    on_disk: bool | None = False, add_shards: ondisk.AddShards | None = None, encode_texts=None,
) -> dict:
    """Generation `gen`'s image index: the previous one updated in place, or built afresh.

    Either way vectors arrive in chunks from SQL, so the peak is the index itself plus one chunk
    (one shard, for an index whose lists go on disk).
    """
    catalog = store.catalog
    if on_disk is None:  # not said this run: as the index was last asked (--on-disk sticks)
        on_disk = bool(catalog.get_meta("on_disk", False))
    catalog.set_meta(on_disk=on_disk)  # inside the publishing transaction, with the generation
    if plan.final_count and (on_disk or ondisk.needed(plan.final_count, catalog.dim, memory_limit)):
        return _write_ondisk_index(store, plan, gen, add_shards, encode_texts)
    previous = store.faiss_path("images", old_gen)
    factory = faiss_index.factory_for(plan.final_count, catalog.dim, memory_limit)
    # An inverted file tuned before far (text) queries were tuned on is rebuilt once: its nprobe
    # served image-to-image queries only (docs/search.md).
    retune = faiss_index.reranks(factory) or factory.startswith("IVF")
    retune = retune and catalog.get_meta("index_recall_measured_on") is None
    if trust_previous and previous.exists() and catalog.get_meta("index_factory") == factory and not retune:
        index = faiss_index.read(previous)
        faiss_index.update(index, staging.deleted_ids(), staging.added_vectors())
        # Same type, updated in place: the recall measured when it was built still describes it.
        info = {"index_factory": factory, "index_nprobe": getattr(index, "nprobe", None)}
    else:
        # Read inside the publishing transaction: these are the rows being committed.
        index, built = faiss_index.build_streamed(
            catalog.image_vectors, plan.final_count, catalog.dim, factory=factory, encode_texts=encode_texts
        )
        info = _tuning_meta(built)
    faiss_index.write(index, store.faiss_path("images", gen))
    return info


def _tuning_meta(built: faiss_index.IndexInfo) -> dict:
    """Catalog meta of a fresh build: its type and tuning, and what the recall was measured on."""
    return {"index_factory": built.factory, "index_nprobe": built.nprobe, "index_recall_at_10": built.recall_at_10,
            "index_rerank": built.rerank, "index_recall_by_queries": built.recall_by_queries,
            "index_recall_measured_on": built.tuned_on}


def _write_ondisk_index(
    store: IndexStore, plan: Plan, gen: int, add_shards: ondisk.AddShards | None = None, encode_texts=None
) -> dict:
    """An index whose inverted lists live on disk (even 8-bit codes exceed the memory limit, or --on-disk).

    Built whole from the catalog at every publish, never updated in place: searches of the
    previous generation map its lists file until the switch. Generation g's ``.ivfdata`` is
    written before the commit that makes g current and pruned with g's ``.faiss`` file.
    """
    catalog = store.catalog
    log.info("building an index of %d vectors with its inverted lists on disk", plan.final_count)
    _, built = ondisk.build(
        catalog.image_vectors, plan.final_count, catalog.dim, store.faiss_path("images", gen),
        sample=ondisk.catalog_sample(catalog), add_shards=add_shards, encode_texts=encode_texts,
    )
    return _tuning_meta(built)
