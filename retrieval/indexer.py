"""The indexing pipeline: walk -> load (workers) -> encode (batches) -> store vectors -> publish.

Stages are plain functions over batches. Decoding runs in worker processes while the
main process encodes the previous batch; at most a few chunks are in flight, so memory
stays flat whatever the folder size. Encoded vectors are committed to the catalog as
they come (keyed by content hash), so a killed run keeps its work; nothing becomes
visible to searches until :func:`publish` switches generations in one transaction.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval import index as faiss_index
from retrieval.captions import read_captions
from retrieval.catalog import FileRow, to_blob
from retrieval.loader import FileStat, Loaded, init_worker, load_chunk, load_many, walk
from retrieval.progress import NullProgress, Progress
from retrieval.store import IndexStore

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
    paths: list[str], transform, known: frozenset[str], settings: IndexSettings
) -> Iterator[Loaded]:
    """Yield loaded files in order, decoding ahead in worker processes with bounded memory."""
    chunks = [paths[i : i + settings.chunk] for i in range(0, len(paths), settings.chunk)]
    workers = settings.worker_count()
    if workers == 0 or len(paths) <= settings.chunk:
        for chunk in chunks:
            yield from load_many(chunk, transform, known, settings.draft)
        return
    # spawn, not fork: the parent holds torch's thread pools, which do not survive fork.
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(
        workers, mp_context=context, initializer=init_worker, initargs=(transform, known, settings.draft)
    ) as pool:
        pending: deque[cf.Future] = deque()
        todo = iter(chunks)
        try:
            for chunk in todo:
                pending.append(pool.submit(load_chunk, chunk))
                if len(pending) >= 2 * workers + 2:
                    break
            while pending:
                done = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(load_chunk, nxt))
                yield from done
        finally:
            for fut in pending:
                fut.cancel()


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_and_store(store: IndexStore, aligner, loaded: list[Loaded], known: set[str]) -> int:
    """Encode the batch's images whose content is new (once per distinct hash) and commit them."""
    fresh: dict[str, Loaded] = {}
    for item in loaded:
        if item.pixels is not None and item.hash not in known and item.hash not in fresh:
            fresh[item.hash] = item
    if not fresh:
        return 0
    items = list(fresh.values())
    vectors = aligner.encode_images(np.stack([it.pixels for it in items]))
    store.catalog.put_vectors([(it.hash, v, it.width, it.height) for it, v in zip(items, vectors)])
    known.update(fresh)
    return len(items)


# -- the run --------------------------------------------------------------------
def run(
    store: IndexStore,
    aligner,
    roots: list[str | Path],
    *,
    captions_file: str | Path | None = None,
    settings: IndexSettings | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """Bring the index up to date with `roots` (and a caption corpus, if given)."""
    settings = settings or IndexSettings()
    progress = progress or NullProgress()
    started = time.monotonic()
    summary = RunSummary(index=str(store.folder), model=aligner.spec)
    with store.write_lock():
        store.bind_model(aligner)
        catalog = store.catalog
        roots = [Path(r).expanduser().resolve() for r in roots]
        old_files, old_skipped = catalog.files(), catalog.skipped()
        seen = list(walk(roots))
        todo = [s for s in seen if not _unchanged(s, old_files, old_skipped)]

        known = catalog.known_hashes()
        loaded: dict[str, Loaded] = {}
        progress.start(len(todo), "indexing")
        stream = load_stream([s.path for s in todo], aligner.transform, frozenset(known), settings)
        with catalog.quick_commits():
            for batch in batched(stream, settings.batch_size):
                summary.encoded += encode_and_store(store, aligner, batch, known)
                for item in batch:
                    item.pixels = None  # the vector is stored; drop the pixels now
                    loaded[item.path] = item
                progress.advance(len(batch))
        progress.close()

        captions = _caption_rows(store, aligner, captions_file, progress) if captions_file else None
        plan = _plan(catalog, roots, seen, old_files, old_skipped, loaded)
        summary.added, summary.updated, summary.removed, summary.moved = plan.added, plan.updated, plan.removed, plan.moved
        summary.unchanged, summary.skipped = plan.unchanged, plan.skipped
        summary.captions = None if captions is None else len(captions)
        summary.generation = catalog.generation
        if plan.changed or captions is not None or not store.faiss_path("images", catalog.generation).exists():
            summary.generation = publish(store, plan, captions)
    summary.seconds = time.monotonic() - started
    log.info("index run: %s", summary.line())
    return summary


def _unchanged(stat: FileStat, files: dict[str, FileRow], skipped: dict) -> bool:
    row = files.get(stat.path)
    if row is not None:
        return row.size == stat.size and row.mtime == stat.mtime
    bad = skipped.get(stat.path)
    return bad is not None and bad[0] == stat.size and bad[1] == stat.mtime


@dataclass
class Plan:
    upserts: list[dict]
    deletes: list[int]
    skipped: list[dict]
    add_ids: list[int]
    add_hashes: list[str]
    final_count: int
    next_id: int
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    moved: int = 0
    skipped_changed: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.upserts or self.deletes or self.skipped_changed)


def _plan(catalog, roots, seen, old_files, old_skipped, loaded) -> Plan:
    """Work out what the new generation holds, compared with the published one."""
    seen_paths = {s.path: s for s in seen}
    upserts, deletes, skipped, add_ids, add_hashes = [], [], [], [], []
    sizes = _sizes_of(catalog, [it.hash for it in loaded.values() if it.error is None])
    next_id = int(catalog.get_meta("next_id", 1))
    added = updated = unchanged = removed = 0
    new_hashes: list[str] = []  # content of paths the index did not have
    for path, stat in seen_paths.items():
        old = old_files.get(path)
        item = loaded.get(path)
        if item is None:  # unchanged since the last run
            if old is not None:
                unchanged += 1
            else:
                skipped.append({"path": path, "size": stat.size, "mtime": stat.mtime, "reason": old_skipped[path][2]})
            continue
        if item.error is not None or item.hash not in sizes:
            reason = item.error or "could not be encoded"
            skipped.append({"path": path, "size": stat.size, "mtime": stat.mtime, "reason": reason})
            if old is not None:
                deletes.append(old.id)
                removed += 1
            continue
        width, height = sizes[item.hash]
        row = {"path": path, "size": stat.size, "mtime": stat.mtime, "hash": item.hash, "width": width, "height": height}
        if old is not None and old.hash == item.hash:
            upserts.append({**row, "id": old.id})  # touched but same content: same id, same vector
            unchanged += 1
            continue
        if old is not None:
            deletes.append(old.id)
            updated += 1
        else:
            added += 1
            new_hashes.append(item.hash)
        upserts.append({**row, "id": next_id})
        add_ids.append(next_id)
        add_hashes.append(item.hash)
        next_id += 1
    gone: Counter[str] = Counter()
    for path, old in old_files.items():
        if path not in seen_paths and _under(path, roots):
            deletes.append(old.id)
            gone[old.hash] += 1
    # A new path with the content of a path that has gone is a rename or a move, not an add and a remove.
    moved = (Counter(new_hashes) & gone).total()
    removed += gone.total() - moved
    added -= moved
    kept = len(old_files) - len(deletes)
    # Bad files outside this run's folders stay recorded as they were.
    skipped += [
        {"path": p, "size": s, "mtime": m, "reason": r}
        for p, (s, m, r) in old_skipped.items()
        if p not in seen_paths and not _under(p, roots)
    ]
    skipped_changed = {(s["path"], s["reason"]) for s in skipped} != {(p, r[2]) for p, r in old_skipped.items()}
    return Plan(
        upserts=upserts, deletes=deletes, skipped=skipped, add_ids=add_ids, add_hashes=add_hashes,
        final_count=kept + len(add_ids), next_id=next_id, added=added, updated=updated,
        unchanged=unchanged, removed=removed, moved=moved, skipped_changed=skipped_changed,
    )


def _under(path: str, roots: list[Path]) -> bool:
    return any(path == str(r) or path.startswith(str(r).rstrip(os.sep) + os.sep) for r in roots)


def _sizes_of(catalog, hashes: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    unique = sorted(set(hashes))
    for start in range(0, len(unique), 500):
        part = unique[start : start + 500]
        marks = ",".join("?" * len(part))
        for h, w, ht in catalog.db.execute(f"SELECT hash, width, height FROM vectors WHERE hash IN ({marks})", part):
            out[h] = (w, ht)
    return out


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


def publish(store: IndexStore, plan: Plan, captions: list[dict] | None) -> int:
    """Write the next generation's FAISS files, then switch the catalog to it atomically."""
    catalog = store.catalog
    old_gen = catalog.generation
    gen = old_gen + 1
    meta = _write_image_index(store, plan, old_gen, gen)
    if captions is not None:
        ids = np.array([r["id"] for r in captions], dtype=np.int64)
        vecs = np.frombuffer(b"".join(r["vector"] for r in captions), dtype="<f4").reshape(len(captions), -1)
        index, _ = faiss_index.build(ids, np.ascontiguousarray(vecs, np.float32), factory="IDMap2,Flat")
        faiss_index.write(index, store.faiss_path("captions", gen))
        meta["captions_generation"] = gen
    elif store.faiss_path("captions", old_gen).exists():
        # Unchanged captions: the new generation links to the same file content.
        os.link(store.faiss_path("captions", old_gen), store.faiss_path("captions", gen))
    catalog.publish(
        upserts=plan.upserts, deletes=plan.deletes, skipped=plan.skipped, captions=captions,
        next_id=plan.next_id, generation=gen, extra_meta=meta,
    )
    store.prune(gen)
    return gen


def _write_image_index(store: IndexStore, plan: Plan, old_gen: int, gen: int) -> dict:
    catalog = store.catalog
    previous = store.faiss_path("images", old_gen)
    factory = faiss_index.factory_for(plan.final_count)
    if previous.exists() and catalog.get_meta("index_factory") == factory:
        index = faiss_index.read(previous)
        vectors = catalog.vectors_by_hash(plan.add_hashes)
        adds = np.stack([vectors[h] for h in plan.add_hashes]) if plan.add_hashes else None
        faiss_index.update(index, np.array(plan.deletes, np.int64), np.array(plan.add_ids, np.int64), adds)
        info = {"index_factory": factory, "index_nprobe": getattr(index, "nprobe", None)}
    else:
        ids, vectors = _final_vectors(catalog, plan)
        index, built = faiss_index.build(ids, vectors, factory=factory)
        info = {"index_factory": factory, "index_nprobe": built.nprobe, "index_recall_at_10": built.recall_at_10}
    faiss_index.write(index, store.faiss_path("images", gen))
    return info


def _final_vectors(catalog, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """Every vector of the new generation, for a full rebuild."""
    dim = catalog.dim
    dropped = set(plan.deletes)
    rows = {r["id"]: r["hash"] for r in plan.upserts}
    for row in catalog.files().values():
        if row.id not in dropped and row.id not in rows:
            rows[row.id] = row.hash
    ids = np.array(sorted(rows), dtype=np.int64)
    vectors = np.zeros((len(ids), dim), np.float32)
    for start in range(0, len(ids), 50_000):
        part = ids[start : start + 50_000]
        found = catalog.vectors_by_hash([rows[int(i)] for i in part])
        vectors[start : start + len(part)] = [found[rows[int(i)]] for i in part]
    return ids, vectors
