"""The 8-bit copy a long-lived searcher keeps beside an exact index (retrieval/ann/quickscan.py).

- on real text queries of the packaged `default` aligner, its top 10 are exact search's
  (recall@10 >= 0.99) with the exact index's own scores;
- batches rank as exact search does; deep pages are answered by the exact index itself;
- a batch of AnnSettings.quick_batch_exact queries or more (the server's batches under load) is searched
  exactly by FAISS's matrix product: exact search's ids and scores, FAISS settings restored;
- through search_vectors with a searcher: built on the second search with a kept index, never on the first,
  answers as the exact index does, and is dropped with the index.
Its speed is measured by benchmarks/bench_server.py.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from conftest import ColorAligner

from retrieval import ann
from retrieval.ann import quickscan
from retrieval.ingest import pipeline as indexer
from retrieval.ingest.pipeline import IndexSettings
from retrieval.search.query import search_vectors
from retrieval.search.searcher import Searcher
from retrieval.search.settings import SearchSettings
from retrieval.storage.store import IndexStore

DIM = 384


def clustered(n: int, seed: int) -> np.ndarray:
    """Unit vectors around 300 random centres (as photos of a few hundred subjects)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (300, DIM)).astype(np.float32)
    x = centers[rng.integers(0, 300, n)] + rng.normal(0, 0.75 / np.sqrt(DIM), (n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    """A memory-mapped IDMap2,Flat index of 30,000 vectors with sparse catalog-like ids, as a server reads it."""
    vectors = clustered(30_000, seed=1)
    ids = np.arange(30_000, dtype=np.int64) * 3 + 7
    built, _ = ann.build(ids, vectors, factory="IDMap2,Flat")
    path = tmp_path_factory.mktemp("quick") / "images-1.faiss"
    ann.write(built, path)
    return ann.read(path, mmap=True)


@pytest.mark.slow
def test_top_10_of_real_text_queries_match_exact_search(exact):
    from retrieval.aligners import load_aligner

    texts = [f"a photo of a {a} {b}" for a in ("red", "old", "wet", "tiny", "striped", "snowy", "busy", "quiet")
             for b in ("dog", "boat", "house", "bridge", "train", "kitchen", "market", "forest", "clock", "bicycle")]
    queries = load_aligner("default").encode_texts(texts)
    quick = quickscan.QuickScan(exact)
    assert quick.nbytes == exact.ntotal * DIM  # one byte per dimension
    truth_scores, truth = ann.search(exact, queries, 10)
    scores, ids = [], []
    for q in queries:  # one at a time, as a lone client's queries come
        s, i = quick.search(q[None], 10)
        scores.append(s[0])
        ids.append(i[0])
    scores, ids = np.array(scores), np.array(ids)
    assert ann.recall_at_k(truth, ids) >= 0.99
    assert set(ids.ravel()) <= set(ann.ids_of(exact).tolist())
    # Where the same id is found at the same rank, the score is the exact cosine.
    same = ids == truth
    assert same.mean() > 0.9
    np.testing.assert_allclose(scores[same], truth_scores[same], atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()  # ranked best first


def test_batches_rank_alike_and_deep_pages_are_answered_exactly(exact):
    quick = quickscan.QuickScan(exact)
    queries = clustered(64, seed=2)  # near the data: their top 10 are well apart from the rest
    scores, ids = quick.search(queries, 10)
    truth_scores, truth = ann.search(exact, queries, 10)
    assert ann.recall_at_k(truth, ids) == 1.0
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)
    deep = quickscan.MAX_FETCH // quickscan.RERANK + 1
    np.testing.assert_array_equal(quick.search(queries[:1], deep)[1], ann.search(exact, queries[:1], deep)[1])


class SpyCodes:
    """The 8-bit codes index, counting the queries it is asked to scan."""

    def __init__(self, codes):
        self.codes, self.scanned = codes, []

    def __getattr__(self, name):
        return getattr(self.codes, name)

    def search(self, queries, k):
        self.scanned.append(len(queries))
        return self.codes.search(queries, k)


def test_large_batches_are_searched_exactly_by_one_product(exact):
    quick = quickscan.QuickScan(exact)
    quick.codes = spy = SpyCodes(quick.codes)
    rng = np.random.default_rng(5)
    # Random directions, far from every cluster: near-tied scores, where 8-bit candidates could miss.
    queries = rng.normal(0, 1, (64, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    threads, threshold = faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_threshold
    for size, k in ((ann.DEFAULT.quick_batch_exact, 10), (64, 10), (64, 100)):
        scores, ids = quick.search(queries[:size], k)
        truth_scores, truth = ann.search(exact, queries[:size], k)
        # Exact search's score at every rank, and each id's own cosine: the exact top k, where
        # only vectors tied to 1e-6 may swap places (BLAS and the plain scan round differently).
        np.testing.assert_allclose(scores, truth_scores, atol=1e-5)
        own = np.einsum("qkd,qd->qk", quick.vectors[(ids - 7) // 3], queries[:size])
        np.testing.assert_allclose(scores, own, atol=1e-5)
        assert ann.recall_at_k(truth, ids) >= 0.999
    assert spy.scanned == []  # no 8-bit scan for these
    assert (faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_threshold) == (threads, threshold)
    quick.search(queries[: ann.DEFAULT.quick_batch_exact - 1], 10)  # a smaller batch: the codes first
    assert spy.scanned == [ann.DEFAULT.quick_batch_exact - 1]


def test_near_queries_find_their_own_vector_first(exact):
    quick = quickscan.QuickScan(exact)
    stored = quick.vectors[[5, 500, 20_000]]
    _, ids = quick.search(stored, 1)
    assert ids[:, 0].tolist() == quick.ids[[5, 500, 20_000]].tolist() == [5 * 3 + 7, 500 * 3 + 7, 20_000 * 3 + 7]


def test_only_exact_inner_product_indexes_of_some_size_get_a_copy(exact):
    assert quickscan.eligible(exact)
    small, _ = ann.build(np.arange(100, dtype=np.int64), clustered(100, seed=3), factory="IDMap2,Flat")
    assert not quickscan.eligible(small)
    ivf, _ = ann.build(np.arange(3000, dtype=np.int64), clustered(3000, seed=3), factory="IVF16,Flat")
    assert not quickscan.eligible(ivf)
    l2 = faiss.IndexIDMap2(faiss.IndexFlatL2(DIM))
    l2.add_with_ids(clustered(ann.DEFAULT.quick_min, seed=4), np.arange(ann.DEFAULT.quick_min, dtype=np.int64))
    assert not quickscan.eligible(l2)


def test_search_vectors_builds_the_copy_on_the_second_search_and_answers_alike(tmp_path, image_dir, monkeypatch):
    aligner = ColorAligner()
    writer = IndexStore.open(tmp_path / "idx", create=True)
    indexer.run(writer, aligner, [image_dir], settings=IndexSettings(workers=0, batch_size=4))
    reader = IndexStore.open(writer.folder)
    built = []
    real = quickscan.QuickScan
    monkeypatch.setattr(quickscan, "QuickScan", lambda index, settings: built.append(index) or real(index, settings))
    vector = aligner.encode_texts(["red"])
    searcher = Searcher(SearchSettings(ann=ann.AnnSettings(quick_min=1)))  # 12 images: make them worth a copy here
    try:
        search_vectors(reader, vector, 5)
        search_vectors(reader, vector, 5)
        assert built == []  # searches without a searcher keep nothing, so never pay for the copy
        first = [(h.id, h.score) for h in search_vectors(reader, vector, 5, searcher=searcher)[0]]
        assert built == []  # a one-shot search never pays for the copy
        second = [(h.id, h.score) for h in search_vectors(reader, vector, 5, searcher=searcher)[0]]
        assert len(built) == 1 and [i for i, _ in second] == [i for i, _ in first]
        np.testing.assert_allclose([s for _, s in second], [s for _, s in first], atol=1e-5)
        search_vectors(reader, vector, 5, searcher=searcher)
        assert len(built) == 1  # kept
        searcher.forget(reader)
        search_vectors(reader, vector, 5, searcher=searcher)
        search_vectors(reader, vector, 5, searcher=searcher)
        assert len(built) == 2  # a re-read index gets its own copy
    finally:
        searcher.forget(reader)
        reader.close()
        writer.close()


@pytest.mark.slow
def test_a_text_encoded_in_a_server_batch_has_the_vector_it_has_alone():
    """The server encodes up to 64 queued texts in one call (padded to the longest): each must
    get the vector it gets alone, so a query's results do not depend on the load."""
    from retrieval.aligners import load_aligner
    from retrieval.server.batcher import MAX_BATCH

    subjects = ["dog", "red bicycle", "wooden boat by the sea", "kitchen", "snowy mountain road at dawn", "clock"]
    captions = [f"a photo of a {subjects[i % 6]}" + " seen from far away" * (i % 4) + f", number {i}" for i in range(256)]
    aligner = load_aligner("default")
    alone = np.concatenate([aligner.encode_texts([c]) for c in captions])
    batched = np.concatenate([aligner.encode_texts(captions[i : i + MAX_BATCH]) for i in range(0, 256, MAX_BATCH)])
    assert (alone * batched).sum(axis=1).min() >= 0.9999
