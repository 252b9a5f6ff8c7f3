"""Publishing the next generation: the catalog's rows and their FAISS files switch in one transaction.

:func:`publish` is the only way a run's (or a repair's) work becomes visible to searches.
Damaged FAISS files of the current generation are found here (:func:`damaged_kinds`) and
rebuilt from the catalog instead of being built upon.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from retrieval import ann
from retrieval.ann import ondisk
from retrieval.errors import StorageError
from retrieval.ingest.settings import IndexSettings
from retrieval.storage import integrity
from retrieval.storage.catalog import Catalog, from_blobs
from retrieval.storage.staging import Plan, Staging
from retrieval.storage.store import IndexStore

log = logging.getLogger(__name__)


def publish(
    store: IndexStore, staging: Staging, plan: Plan, captions: list[dict] | None, settings: IndexSettings | None = None,
    damaged: set[str] | None = None, add_shards: ondisk.AddShards | None = None,
    encode_texts: ann.TextEncoder | None = None,
) -> int:
    """Switch the catalog to the next generation, with its FAISS files, atomically.

    `encode_texts`: the aligner's, so that an approximate index is tuned on real text
    queries (retrieval.ann.tuning_queries); a run with no model (a repair) tunes on a stand-in.

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
        limit = (settings or IndexSettings()).max_index_memory or ann.memory_limit_default()
        meta = write_image_index(
            store, staging, plan, old_gen, gen, limit, trust_previous="images" not in damaged,
            on_disk=settings.on_disk if settings else None, add_shards=add_shards, encode_texts=encode_texts,
            ann_settings=(settings or IndexSettings()).ann,
        )
        integrity.record(conn, store.faiss_path("images", gen), gen, plan.final_count, catalog.verified_files)
        lists = ann.lists_path(store.faiss_path("images", gen))
        if lists.exists() and meta["index_factory"].startswith("IVF") and "_HNSW" in meta["index_factory"]:
            # An on-disk index's lists file is checked like the FAISS files (retrieval check, the next run).
            integrity.record(conn, lists, gen, plan.final_count, catalog.verified_files)
        old_captions = store.faiss_path("captions", old_gen)
        # A run killed before its commit may have left a captions file under this generation's name.
        store.faiss_path("captions", gen).unlink(missing_ok=True)
        if captions is not None or ("captions" in damaged and catalog.count("captions")):
            if captions is not None:
                catalog.replace_captions(captions)
            ids, vecs = caption_arrays(catalog, captions)
            index, _ = ann.build(ids, vecs, factory="IDMap2,Flat")
            ann.write(index, store.faiss_path("captions", gen))
            meta["captions_generation"] = gen
        elif old_captions.exists() and "captions" not in damaged:
            # Unchanged captions: the new generation links to the same file content.
            os.link(old_captions, store.faiss_path("captions", gen))
        if store.faiss_path("captions", gen).exists():
            integrity.record(conn, store.faiss_path("captions", gen), gen, catalog.count("captions"), catalog.verified_files)
        catalog.set_meta(next_id=plan.next_id, generation=gen, **meta)
    store.prune(gen)
    return gen


def damaged_kinds(store: IndexStore) -> set[str]:
    """The kinds ("images", "captions") whose current FAISS file is missing or differs from its record."""
    catalog, gen = store.catalog, store.catalog.generation
    out: set[str] = set()
    if gen == 0:
        return out
    for kind in ("images", "captions"):
        path = store.faiss_path(kind, gen)
        if kind == "captions" and not path.exists() and not catalog.count("captions"):
            continue
        what = integrity.problem(catalog.db.conn, path, full=True, verified=catalog.verified_files)
        if not what and integrity.lookup(catalog.db.conn, path.name) is None:
            what = _unrecorded_problem(path, catalog.count(kind))
        lists = ann.lists_path(path)
        if not what and kind == "images" and integrity.lookup(catalog.db.conn, lists.name) is not None:
            # Size and mtime only (the whole file when they differ): gigabytes at ten million vectors.
            what = integrity.problem(catalog.db.conn, lists, full=None, verified=catalog.verified_files)
            path = lists if what else path
        if what:
            log.warning("%s %s: rebuilding it from the catalog", path, what)
            out.add(kind)
    return out


def _unrecorded_problem(path: Path, rows: int) -> str | None:
    """A file published before checksums were recorded: it must at least load and hold every row."""
    try:
        ntotal = ann.read(path, mmap=True).ntotal
    except RuntimeError:
        return "cannot be read"
    return None if ntotal == rows else f"holds {ntotal} vectors for {rows} catalog rows"


def caption_arrays(catalog: Catalog, captions: list[dict] | None) -> tuple[np.ndarray, np.ndarray]:
    """Caption ids and vectors: from the rows being published, or from the catalog (a rebuild)."""
    if captions is None:
        chunks = list(catalog.caption_vectors())
        if not chunks:
            return np.zeros(0, np.int64), np.zeros((0, vector_width(catalog)), np.float32)
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])
    ids = np.array([r["id"] for r in captions], dtype=np.int64)
    return ids, from_blobs((r["vector"] for r in captions), vector_width(catalog))


def vector_width(catalog: Catalog) -> int:
    """The catalog's vector dimension: set when the first model was bound, before anything is published."""
    dim = catalog.dim
    if dim is None:
        raise StorageError(f"{catalog.path}: no model has been bound to this index, so it has nothing to publish")
    return dim


def write_image_index(
    store: IndexStore, staging: Staging | None, plan: Plan, old_gen: int, gen: int, memory_limit: int,
    trust_previous: bool = True, on_disk: bool | None = False, add_shards: ondisk.AddShards | None = None,
    encode_texts: ann.TextEncoder | None = None, ann_settings: ann.AnnSettings = ann.DEFAULT,
) -> dict:
    """Generation `gen`'s image index: the previous one updated in place, or built afresh.

    Without `staging` (an import: every row is new) it is built afresh.

    Either way vectors arrive in chunks from SQL, so the peak is the index itself plus one chunk
    (one shard, for an index whose lists go on disk).
    """
    catalog = store.catalog
    if on_disk is None:  # not said this run: as the index was last asked (--on-disk sticks)
        on_disk = bool(catalog.get_meta("on_disk", False))
    catalog.set_meta(on_disk=on_disk)  # inside the publishing transaction, with the generation
    if plan.final_count and (on_disk or ondisk.needed(plan.final_count, vector_width(catalog), memory_limit)):
        return _write_ondisk_index(store, plan, gen, add_shards, encode_texts, ann_settings)
    previous = store.faiss_path("images", old_gen)
    factory = ann.factory_for(plan.final_count, vector_width(catalog), memory_limit, ann_settings)
    # An inverted file tuned before far (text) queries were tuned on is rebuilt once: its nprobe
    # served image-to-image queries only (docs/search.md).
    retune = ann.reranks(factory) or factory.startswith("IVF")
    retune = retune and catalog.get_meta("index_recall_measured_on") is None
    if staging is not None and trust_previous and previous.exists() and catalog.get_meta("index_factory") == factory and not retune:
        index = ann.read(previous)
        ann.update(index, staging.deleted_ids(), staging.added_vectors())
        # Same type, updated in place: the recall measured when it was built still describes it.
        info = {"index_factory": factory, "index_nprobe": getattr(index, "nprobe", None)}
    else:
        # Read inside the publishing transaction: these are the rows being committed.
        index, built = ann.build_streamed(
            catalog.image_vectors, plan.final_count, vector_width(catalog), factory=factory, encode_texts=encode_texts,
            settings=ann_settings,
        )
        info = _tuning_meta(built)
    ann.write(index, store.faiss_path("images", gen))
    return info


def _tuning_meta(built: ann.IndexInfo) -> dict:
    """Catalog meta of a fresh build: its type and tuning, and what the recall was measured on."""
    return {"index_factory": built.factory, "index_nprobe": built.nprobe, "index_recall_at_10": built.recall_at_10,
            "index_rerank": built.rerank, "index_recall_by_queries": built.recall_by_queries,
            "index_recall_measured_on": built.tuned_on}


def _write_ondisk_index(
    store: IndexStore, plan: Plan, gen: int, add_shards: ondisk.AddShards | None = None,
    encode_texts: ann.TextEncoder | None = None, ann_settings: ann.AnnSettings = ann.DEFAULT,
) -> dict:
    """An index whose inverted lists live on disk (even 8-bit codes exceed the memory limit, or --on-disk).

    Built whole from the catalog at every publish, never updated in place: searches of the
    previous generation map its lists file until the switch. Generation g's ``.ivfdata`` is
    written before the commit that makes g current and pruned with g's ``.faiss`` file.
    """
    catalog = store.catalog
    log.info("building an index of %d vectors with its inverted lists on disk", plan.final_count)
    _, built = ondisk.build(
        catalog.image_vectors, plan.final_count, vector_width(catalog), store.faiss_path("images", gen),
        sample=ondisk.catalog_sample(catalog), add_shards=add_shards, encode_texts=encode_texts,
        settings=ann_settings,
    )
    return _tuning_meta(built)
