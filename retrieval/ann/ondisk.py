"""Image indexes larger than memory: IVF with 8-bit codes whose inverted lists live on disk.

The build has three steps, each a plain function so that a cluster can run the middle one as parallel tasks:

1. :func:`train` the coarse quantizer once, on a sample: FAISS's two-level k-means
   (``faiss.contrib.clustering``) over sqrt(nlist) first-level clusters, so that training
   thousands of lists costs a few passes over small sets of centroids, not passes over all of
   them (docs/large-indexes.md#how-it-is-built),
   and an HNSW graph over the centroids, so that assigning ten million vectors to lists
   does not compare each with every centroid.
2. :func:`build_shard` adds a run of (ids, vectors) chunks to a copy of the trained, empty
   index and writes it as a shard file; only that shard's codes are in memory.
3. :func:`merge` joins the shards into one inverted-lists file with FAISS's own
   ``faiss.contrib.ondisk.merge_ondisk``; the ``.faiss`` file then holds the quantizer and
   the list offsets only, and searches memory-map the lists (:func:`retrieval.ann.files.read`).

Searches re-score the tuned number of candidates per result (``IndexInfo.rerank``, at least
``AnnSettings.rerank_factor``) with the exact vectors from the catalog, as for the in-memory
8-bit index (``searching.search_ranked``; ``building.reranks`` is true for the ``,SQ8`` factory
string recorded here).

Files of generation g: ``images-<g>.faiss`` and ``images-<g>.ivfdata``
(:func:`retrieval.ann.files.read_on_disk` opens them).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import faiss
import numpy as np
from faiss.contrib.clustering import two_level_clustering
from faiss.contrib.ondisk import merge_ondisk

from retrieval.ann import tuning_queries
from retrieval.ann.building import MIN_POINTS_PER_LIST, TRAIN_SAMPLE
from retrieval.ann.chunks import Chunks, gather
from retrieval.ann.exact import TopK
from retrieval.ann.files import lists_path, quiet_stdout, write
from retrieval.ann.settings import DEFAULT, AnnSettings
from retrieval.ann.tuning import IndexInfo, TextEncoder, split_truth, tune
from retrieval.errors import RetrievalError

log = logging.getLogger(__name__)

#: Vectors per shard: a shard's 8-bit codes (384 MB at 384-d) are what one builder holds.
SHARD_ROWS = 1_000_000
#: Neighbours per node of the HNSW graph over the centroids (FAISS's usual choice).
HNSW_M = 32
#: Candidates the HNSW graph explores per search (FAISS's default is 16). Assigning 10M vectors
#: with 16 put some of them in a list other than their nearest centroid's, where queries near
#: them never looked, and recall stalled whatever nprobe; with 64 nearly all agree with an
#: exact search of the centroids (docs/large-indexes.md#10000000-vectors).
HNSW_EF = 64


def factory_for(n: int) -> str:
    """The on-disk index type for `n` vectors, as a FAISS factory string (recorded in the catalog)."""
    return f"IVF{nlist_for(n)}_HNSW{HNSW_M},SQ8"


def nlist_for(n: int) -> int:
    # As the in-memory IVF (building.factory_for): about 4 sqrt(n) lists; a small collection
    # (asked for with --on-disk) keeps at least 8 vectors a list so k-means has points to fit.
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 8))


def needed(n: int, dim: int, memory_limit: int) -> bool:
    """Whether `n` vectors exceed `memory_limit` bytes even as 8-bit codes (one byte a dimension)."""
    return n * dim > memory_limit


def train(sample: np.ndarray, nlist: int, seed: int = 0) -> faiss.Index:
    """An empty, trained on-disk-ready index: HNSW coarse quantizer over `nlist` centroids, 8-bit codes."""
    sample = np.ascontiguousarray(sample, np.float32)
    dim = sample.shape[1]
    if len(sample) < nlist:
        raise RetrievalError(f"an on-disk index of {nlist} lists needs at least {nlist} vectors, got {len(sample)}")
    started = time.monotonic()
    # Spherical k-means: centroids are unit vectors, so inner-product assignment is cosine
    # and no list attracts vectors just because its centroid is longer.
    centroids, _ = two_level_clustering(
        sample, max(1, int(math.sqrt(nlist))), nlist, spherical=True, seed=seed,
        min_points_per_centroid=1,
    )
    quantizer = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    quantizer.add(np.ascontiguousarray(centroids, np.float32))
    quantizer.hnsw.efSearch = HNSW_EF  # stored with the trained index: every shard assigns with it
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    index.own_fields = True
    quantizer.this.disown()  # type: ignore[attr-defined]  # SWIG's handle, not in FAISS's type hints
    # The quantizer already holds nlist centroids, so this trains only the 8-bit ranges.
    index.train(sample)
    log.info("trained %d lists on %d vectors in %.1fs", nlist, len(sample), time.monotonic() - started)
    return index


def build_shard(trained: Path, chunks: Iterable[tuple[np.ndarray, np.ndarray]], out: Path) -> int:
    """Add (ids, vectors) chunks to a copy of the trained index at `trained`; write it to `out`.

    A plain function over files: a Ray task can run it given a shared folder. Returns the
    number of vectors in the shard.
    """
    index = faiss.read_index(str(trained))
    for ids, vectors in chunks:
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))
    write(index, out)
    return int(index.ntotal)


#: Who builds the shards: (trained index file, runs of (ids, vectors) chunks, work folder,
#: total vectors) -> the shard files, in run order. The runs must be consumed in order.
AddShards = Callable[[Path, Iterator[Iterator[tuple[np.ndarray, np.ndarray]]], Path, int], list[Path]]


def add_shards_here(trained: Path, parts: Iterator[Iterator[tuple[np.ndarray, np.ndarray]]], work: Path, n: int) -> list[Path]:
    """Build the shards one after the other in this process (:data:`AddShards`)."""
    shards, done, started = [], 0, time.monotonic()
    for number, part in enumerate(parts):
        shard = work / f"shard-{number}.faiss"
        done += build_shard(trained, part, shard)
        rate = done / max(time.monotonic() - started, 1e-9)
        log.info("shard %d: %d of %d vectors added, %.0f a second, about %.0f s left",
                 number, done, n, rate, (n - done) / rate)
        shards.append(shard)
    return shards


def merge(trained: Path, shards: list[Path], lists: Path) -> faiss.Index:
    """The trained index with `shards` joined into one inverted-lists file at `lists` (mapped, not loaded).

    The caller writes the returned index next to `lists` (:func:`retrieval.ann.files.write`).
    """
    # A file left by a run killed before publishing: never referenced, so it can go.
    lists.unlink(missing_ok=True)
    index = faiss.read_index(str(trained))
    with quiet_stdout():  # FAISS printf()s "resizing <file> to <n> bytes"
        merge_ondisk(index, [str(s) for s in shards], str(lists))
    return index


def split(chunks: Iterable[tuple[np.ndarray, np.ndarray]], rows: int) -> Iterator[Iterator[tuple[np.ndarray, np.ndarray]]]:
    """Consecutive runs of chunks of about `rows` rows each (whole chunks), consumed lazily."""
    stream = iter(chunks)
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def run() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        taken = 0
        while taken < rows:
            item = pending.pop() if pending else next(stream, None)
            if item is None:
                return
            taken += len(item[0])
            yield item

    while True:
        first = next(stream, None)
        if first is None:
            return
        pending.append(first)
        yield run()


def build(
    chunks: Chunks, n: int, dim: int, out: Path, *, shard_rows: int = SHARD_ROWS,
    sample: Callable[[int], np.ndarray] | None = None, add_shards: AddShards | None = None,
    encode_texts: TextEncoder | None = None, settings: AnnSettings = DEFAULT,
) -> tuple[faiss.Index, IndexInfo]:
    """Build the on-disk index of `n` vectors from `chunks` into `out` and its ``.ivfdata`` file.

    One pass over the chunks adds them, shard by shard, and finds the exact top 10 of the
    queries that tune ``nprobe`` and the re-scoring width (:mod:`retrieval.ann.tuning_queries`: near
    ones, and far ones from `encode_texts`, the aligner's, or a stand-in without it). The
    training sample comes from `sample` (a count -> that
    many vectors drawn at random, see :func:`catalog_sample`), else from a pass of its own.
    Peak memory is one shard's codes plus the training sample, whatever `n`. `add_shards`
    builds the shard files (:func:`add_shards_here` by default; the Ray path's runs them as
    tasks, ``retrieval.cluster.ray_shards``).
    """
    factory = factory_for(n)
    nlist = nlist_for(n)
    work = out.with_name(out.name + ".shards.tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        size = min(n, max(TRAIN_SAMPLE, MIN_POINTS_PER_LIST * nlist))
        if sample is not None:
            vectors = sample(size)
        else:
            picks = np.arange(n) if size == n else np.random.default_rng(0).choice(n, size, replace=False)
            _, vectors = gather(chunks, picks, dim)
        trained_path = work / "trained.faiss"
        write(train(vectors, nlist), trained_path)
        # The queries that tune nprobe, and their exact top 10 found during the adding pass:
        # two passes over the collection fewer than tuning.probe_truth makes on its own.
        queries = tuning_queries.make(vectors, encode_texts)
        probe = TopK(np.concatenate(list(queries.sets.values())), min(10, n))
        del vectors
        shards = (add_shards or add_shards_here)(trained_path, split(probe.watch(chunks()), shard_rows), work, n)
        index = merge(trained_path, shards, lists_path(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = IndexInfo(factory=factory, ntotal=int(index.ntotal))
    if index.ntotal != n:
        raise RetrievalError(f"the on-disk index holds {index.ntotal} vectors, expected {n}; index again")
    tune(index, queries, split_truth(queries, probe.ids), info, rerank=True, settings=settings)
    # The graph returns at most efSearch lists: as many as nprobe asks for.
    quantizer = cast(faiss.IndexHNSW, faiss.downcast_index(faiss.extract_index_ivf(index).quantizer))
    quantizer.hnsw.efSearch = max(HNSW_EF, info.nprobe or 0)
    write(index, out)
    return index, info


def catalog_sample(catalog: Any) -> Callable[[int], np.ndarray]:
    """Draw vectors of indexed images at random by id: at ten million rows a pass over the
    catalog takes many times longer than the lookups
    (docs/large-indexes.md#1000000-vectors-on-disk-against-in-memory).

    On the catalog's own connection, so inside the publishing transaction it sees the rows
    being published.
    """

    def draw(size: int) -> np.ndarray:
        ids = np.fromiter((row[0] for row in catalog.db.execute("SELECT id FROM images")), np.int64)
        picks = np.sort(np.random.default_rng(0).choice(ids, min(size, len(ids)), replace=False)).tolist()
        found = catalog.image_vectors_by_id(picks)
        return np.stack([found[i] for i in picks])

    return draw
