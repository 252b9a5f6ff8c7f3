"""Indexes larger than memory: IVF with its inverted lists on disk (retrieval.ann.ondisk)."""

from __future__ import annotations

import ctypes
import json
import shutil

import faiss
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_image

from retrieval import ann
from retrieval.ann import ondisk, tuning_queries
from retrieval.cli import main
from retrieval.ingest import pipeline as indexer
from retrieval.ingest.pipeline import IndexSettings
from retrieval.search.query import search_vectors
from retrieval.storage.catalog import to_blob
from retrieval.storage.store import IndexStore

DIM = 48


def clustered(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    """Unit vectors around 40 centres: neighbourhoods like real embeddings have."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(size=(40, dim))
    x = (centers[rng.integers(0, 40, n)] + rng.normal(0, 0.6, (n, dim))).astype(np.float32)
    faiss.normalize_L2(x)
    return x


def fill(store: IndexStore, vectors: np.ndarray) -> None:
    """Catalog rows for `vectors` (ids 1..n), as an index run would have committed them."""
    store.catalog.set_meta(model="synthetic", model_identity="synthetic", dim=vectors.shape[1])
    with store.catalog.transaction() as conn:
        conn.executemany("INSERT INTO vectors (hash, vector) VALUES (?, ?)",
                         ((f"h{i}", to_blob(v)) for i, v in enumerate(vectors)))
        conn.executemany("INSERT INTO images (id, path, size, mtime, hash) VALUES (?, ?, 1, 0, ?)",
                         ((i + 1, f"/p/{i}.jpg", f"h{i}") for i in range(len(vectors))))


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """3,000 vectors in a catalog, with an on-disk index (generation 1) and an exact one (generation 2)."""
    folder = tmp_path_factory.mktemp("ondisk") / "idx"
    store = IndexStore.open(folder, create=True)
    vectors = clustered(3000, seed=1)
    fill(store, vectors)
    _, info = ondisk.build(store.catalog.image_vectors, 3000, DIM, store.faiss_path("images", 1), shard_rows=1000)
    exact, _ = ann.build(np.arange(1, 3001), vectors, factory="IDMap2,Flat")
    ann.write(exact, store.faiss_path("images", 2))
    yield store, vectors, info
    store.close()


def test_on_disk_index_returns_the_top_k_of_the_in_memory_one(collection):
    store, vectors, info = collection
    assert info.factory == "IVF219_HNSW32,SQ8" and info.ntotal == 3000  # about 4 sqrt(n) lists
    assert info.recall_at_10 >= ann.DEFAULT.target_recall
    queries = clustered(100, seed=2)
    results = {}
    for gen, factory in ((1, info.factory), (2, "IDMap2,Flat")):
        store.catalog.set_meta(generation=gen, index_factory=factory)
        results[gen] = search_vectors(store, queries, k=10)
    same = sum(len({h.id for h in a} & {h.id for h in b}) for a, b in zip(results[1], results[2]))
    assert same / 1000 >= ann.DEFAULT.target_recall
    # Candidates are re-scored exactly: a result found by both carries the same (exact) score.
    for disk, memory in zip(results[1], results[2]):
        exact = {h.id: h.score for h in memory}
        for hit in disk:
            if hit.id in exact:
                assert hit.score == pytest.approx(exact[hit.id], abs=1e-5)
    # And on its own the FAISS structure holds every vector once, in the lists file.
    index = ann.read(store.faiss_path("images", 1))
    assert index.ntotal == 3000
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)
    assert sum(lists.list_size(i) for i in range(lists.nlist)) == 3000


def test_shards_and_work_files_are_gone_after_a_build(collection):
    store, _, _ = collection
    names = {p.name for p in store.folder.iterdir()}
    assert {"images-1.faiss", "images-1.ivfdata", "images-2.faiss"} <= names
    assert not [n for n in names if "shards" in n or ".tmp" in n]


def test_a_moved_index_folder_finds_its_lists_and_keeps_stdout_clean(collection, tmp_path, capfd):
    store, vectors, info = collection
    moved = tmp_path / "moved"
    shutil.copytree(store.folder, moved)
    index = ann.read(moved / "images-1.faiss", mmap=True)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    assert lists.filename == str(moved / "images-1.ivfdata")
    index.nprobe = info.nprobe
    _, ids = index.search(vectors[:3], 1)
    assert ids[:, 0].tolist() == [1, 2, 3]
    ctypes.CDLL(None).fflush(None)
    assert capfd.readouterr().out == ""


def test_split_makes_consecutive_runs_of_whole_chunks():
    chunks = [(np.arange(i, i + 3), np.zeros((3, 2))) for i in range(0, 15, 3)]
    runs = [[ids.tolist() for ids, _ in run] for run in ondisk.split(chunks, 6)]
    assert runs == [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]], [[12, 13, 14]]]


def test_build_shard_is_a_plain_function_over_files(tmp_path):
    vectors = clustered(400, seed=3)
    trained = tmp_path / "trained.faiss"
    ann.write(ondisk.train(vectors, ondisk.nlist_for(400)), trained)
    parts = [(np.arange(1, 201), vectors[:200]), (np.arange(201, 401), vectors[200:])]
    shards = [tmp_path / "s0.faiss", tmp_path / "s1.faiss"]
    assert [ondisk.build_shard(trained, [p], s) for p, s in zip(parts, shards)] == [200, 200]
    merged = ondisk.merge(trained, shards, tmp_path / "all.ivfdata")
    assert merged.ntotal == 400
    merged.nprobe = merged.nlist
    _, ids = merged.search(vectors[:5], 1)
    assert ids[:, 0].tolist() == [1, 2, 3, 4, 5]


def test_the_engine_goes_on_disk_when_even_8_bit_codes_exceed_the_limit():
    assert not ondisk.needed(1000, 384, 1000 * 384)
    assert ondisk.needed(1001, 384, 1000 * 384)


@pytest.mark.slow
def test_index_on_disk_publishes_atomically_and_prunes_old_lists(tmp_path, color_aligner):
    """--on-disk through the indexer: generation files, searches during a publish, pruning, info."""
    from retrieval.api import open_index

    folder = tmp_path / "photos"
    for i in range(60):
        make_image(folder / f"{i:02d}.png", seed=300 + i)
    store = IndexStore.open(tmp_path / "idx", create=True)
    settings = IndexSettings(workers=0, on_disk=True)
    indexer.run(store, color_aligner, [folder], settings=settings)
    assert store.catalog.generation == 1 and (store.folder / "images-1.ivfdata").exists()
    row = store.catalog.files()[str(folder / "07.png")]
    query = store.catalog.vectors_by_hash([row.hash])[row.hash][None]
    assert search_vectors(store, query, k=1)[0][0].path == str(folder / "07.png")

    # A reader holding generation 1 keeps searching it while generation 2 is built and published.
    reader = IndexStore(store.folder)
    with reader.catalog.snapshot():
        old = ann.read(reader.faiss_path("images", reader.catalog.generation), mmap=True)
        for i in range(60, 70):
            make_image(folder / f"{i:02d}.png", seed=300 + i)
        indexer.run(store, color_aligner, [folder], settings=settings)
        assert reader.catalog.generation == 1 and old.ntotal == 60
        old.nprobe = old.nlist
        assert old.search(query, 1)[1][0, 0] >= 1
    assert reader.catalog.generation == 2 and store.catalog.count("images") == 70
    reader.close()

    # The next publish prunes generation 1's files, lists included (g-1 = 2 stays for late readers).
    make_image(folder / "70.png", seed=370)
    indexer.run(store, color_aligner, [folder], settings=settings)
    names = {p.name for p in store.folder.iterdir()}
    assert {"images-2.faiss", "images-2.ivfdata", "images-3.faiss", "images-3.ivfdata"} <= names
    assert "images-1.ivfdata" not in names and "images-1.faiss" not in names
    info = open_index(str(store.folder)).info()
    assert info["lists_on_disk"].startswith("images-3.ivfdata") and info["index_files"] == "ok"
    assert info["rescored_per_result"] == ann.DEFAULT.rerank_factor
    store.close()

    result = CliRunner().invoke(main, ["info", "--index", str(tmp_path / "idx"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["lists_on_disk"].startswith("images-3.ivfdata")


def test_a_killed_build_leaves_only_unreferenced_files_that_the_next_run_clears(tmp_path):
    store = IndexStore.open(tmp_path / "idx", create=True)
    stale = store.folder / "images-5.faiss.shards.tmp"
    stale.mkdir()
    (stale / "shard-0.faiss").write_bytes(b"partial")
    (store.folder / "images-5.ivfdata").write_bytes(b"partial")
    store.prune(8)
    assert not stale.exists() and not (store.folder / "images-5.ivfdata").exists()
    store.close()


def test_a_build_prints_nothing_on_stdout(tmp_path, capfd):
    vectors = clustered(500, seed=5)
    chunks = lambda: [(np.arange(1, 501), vectors)]  # noqa: E731
    ondisk.build(chunks, 500, DIM, tmp_path / "images-1.faiss", shard_rows=200)
    ctypes.CDLL(None).fflush(None)  # C stdio buffers what FAISS printf()s: flush it to be seen
    assert capfd.readouterr().out == ""


def test_nprobe_tuning_widens_an_hnsw_quantizer_with_nprobe():
    """With an HNSW coarse quantizer, nprobe above efSearch probes no more lists: tuning must
    widen efSearch as it raises nprobe, or it ends at every list (seen at 10M vectors)."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(200, 32)).astype(np.float32)
    vectors = centres[rng.integers(0, 200, 20_000)] + rng.normal(0, 1.0, (20_000, 32)).astype(np.float32)
    faiss.normalize_L2(vectors)  # loose clusters: the true top 10 spreads over more lists than 4
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    ivf = faiss.index_factory(32, "IVF256_HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    ivf.add_with_ids(vectors, ids)
    faiss.downcast_index(ivf.quantizer).hnsw.efSearch = 4  # far below what the target needs

    def chunks():
        yield ids, vectors

    queries = tuning_queries.Probes({"near": tuning_queries.near(vectors, 200)}, "near queries only")
    truths = ann.split_truth(queries, ann.exact_top_k(chunks, queries.sets["near"], 10))
    info = ann.tune(ivf, queries, truths, ann.IndexInfo("IVF256_HNSW32,Flat", len(vectors)))
    nprobe = info.nprobe
    assert info.recall_at_10 >= ann.DEFAULT.target_recall
    assert 4 < nprobe < ivf.nlist
    assert faiss.downcast_index(ivf.quantizer).hnsw.efSearch >= nprobe
