"""The fast paths of a warm query give the same answers as the plain ones.

- FAISS indexes a searcher keeps loaded between searches (retrieval/search/resident.py): read once per file,
  a newly published generation is picked up, an unpublished one never, damage still seen;
- the cache of recent query-text vectors (retrieval/search/textcache.py);
- MiniLM's packed numpy forward on one BLAS thread agrees with the torch form.
Their speed is measured by benchmarks/bench_server.py, not here.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ColorAligner, make_image

from retrieval import ann
from retrieval.errors import DamagedIndex
from retrieval.ingest import pipeline as indexer
from retrieval.ingest.pipeline import IndexSettings
from retrieval.search.query import Query, query_vector, search_vectors
from retrieval.search.searcher import Searcher
from retrieval.search.settings import SearchSettings
from retrieval.search.textcache import TextVectorCache
from retrieval.storage.store import IndexStore

SEQUENTIAL = IndexSettings(workers=0, batch_size=4)


@pytest.fixture
def indexed(tmp_path, image_dir, color_aligner):
    """A published index of the 12 generated images, its writer store, a separate reader, and its searcher."""
    writer = IndexStore.open(tmp_path / "idx", create=True)
    indexer.run(writer, color_aligner, [image_dir], settings=SEQUENTIAL)
    reader = IndexStore.open(writer.folder)
    searcher = Searcher()
    yield writer, reader, searcher
    searcher.forget(reader)
    reader.close()
    writer.close()


@pytest.fixture
def reads(monkeypatch):
    """Names of the FAISS files searches read (mapped; an index run reads its previous file whole)."""
    calls = []
    real = ann.read

    def counting(path, mmap=False):
        if mmap:
            calls.append(path.name)
        return real(path, mmap=mmap)

    monkeypatch.setattr(ann, "read", counting)
    return calls


def ranked(store, vector, searcher, k=50) -> list[tuple[int, float]]:
    return [(h.id, h.score) for h in search_vectors(store, vector, k, searcher=searcher)[0]]


def test_kept_index_is_read_once_and_answers_as_a_fresh_read(indexed, color_aligner, reads):
    writer, reader, searcher = indexed
    vector = color_aligner.encode_texts(["red"])
    first = ranked(reader, vector, searcher)
    assert ranked(reader, vector, searcher) == first and ranked(reader, vector, searcher, k=3) == first[:3]
    assert reads == ["images-1.faiss"]
    unkept = Searcher(SearchSettings(keep_loaded=False))
    assert ranked(reader, vector, unkept) == first  # read again, same answer
    assert ranked(reader, vector, None) == first  # a one-shot search reads it too
    assert len(reads) == 3 and len(first) == 12


def test_new_generation_is_picked_up_by_the_next_search(indexed, color_aligner, image_dir, reads):
    writer, reader, searcher = indexed
    vector = color_aligner.encode_texts(["blue"])
    before = ranked(reader, vector, searcher)
    make_image(image_dir / "late.png", seed=99)
    indexer.run(writer, color_aligner, [image_dir], settings=SEQUENTIAL)
    after = ranked(reader, vector, searcher)
    new_id = writer.catalog.files()[str((image_dir / "late.png").resolve())].id
    assert len(after) == len(before) + 1 and new_id in {i for i, _ in after}
    assert reads == ["images-1.faiss", "images-2.faiss"]


def test_a_written_but_unpublished_generation_is_never_used(indexed, color_aligner, reads):
    writer, reader, searcher = indexed
    vector = color_aligner.encode_texts(["green"])
    before = ranked(reader, vector, searcher)
    # A run has written generation 2's file but not yet committed the catalog: here, an index
    # holding one vector only, which a search must not see.
    ids, vectors = next(writer.catalog.image_vectors())
    partial, _ = ann.build(ids[:1], vectors[:1], factory="IDMap2,Flat")
    ann.write(partial, writer.faiss_path("images", 2))
    assert ranked(reader, vector, searcher) == before
    assert reads == ["images-1.faiss"]


def test_a_file_damaged_after_loading_is_still_reported(indexed, color_aligner):
    writer, reader, searcher = indexed
    vector = color_aligner.encode_texts(["grey"])
    assert ranked(reader, vector, searcher)
    path = reader.faiss_path("images", 1)
    ids, vectors = next(writer.catalog.image_vectors())
    other, _ = ann.build(ids[:3], vectors[:3], factory="IDMap2,Flat")
    ann.write(other, path)  # replaced under the same name: another file than the one published
    with pytest.raises(DamagedIndex):
        search_vectors(reader, vector, 5, searcher=searcher)


def test_an_opened_index_keeps_what_its_settings_say(indexed):
    from retrieval.api import open_index

    writer, _, _ = indexed
    plain = open_index(str(writer.folder))
    lean = open_index(str(writer.folder), settings=SearchSettings(text_cache_size=0, filter_columns=False))
    try:
        assert plain.searcher.settings == SearchSettings() and plain.text_cache.size == 1024
        assert plain.searcher.columns is not None
        assert lean.text_cache.size == 0 and lean.searcher.columns is None
        with lean.store.catalog.snapshot():
            assert lean.searcher.columns_for(lean.store.catalog, wait=True) is None  # filters run in SQL
    finally:
        plain.close()
        lean.close()


class CountingAligner(ColorAligner):
    def __init__(self, identity: str = "test/color"):
        super().__init__(identity)
        self.texts_encoded: list[str] = []

    def encode_texts(self, texts):
        self.texts_encoded += list(texts)
        return super().encode_texts(texts)


def test_cache_hit_returns_the_same_vector_without_encoding():
    aligner, cache = CountingAligner(), TextVectorCache(size=8)
    texts = ["a dog", "a cat", "a dog"]
    first = cache.encode(aligner, texts)
    np.testing.assert_array_equal(first, aligner.encode_texts(texts))
    aligner.texts_encoded.clear()
    again = cache.encode(aligner, ["a cat", "a dog"])
    assert aligner.texts_encoded == []
    np.testing.assert_array_equal(again, first[[1, 0]])
    mixed = cache.encode(aligner, ["a bird", "a dog"])
    assert aligner.texts_encoded == ["a bird"]  # only the miss is encoded
    np.testing.assert_array_equal(mixed[1], first[0])


def test_cache_results_can_be_changed_without_changing_the_cache():
    aligner, cache = CountingAligner(), TextVectorCache()
    out = cache.encode(aligner, ["a dog"])
    expected = out.copy()
    out *= 0
    np.testing.assert_array_equal(cache.encode(aligner, ["a dog"]), expected)


def test_cache_evicts_the_least_recently_used_and_keys_by_aligner():
    aligner, cache = CountingAligner(), TextVectorCache(size=2)
    cache.encode(aligner, ["one", "two"])
    cache.encode(aligner, ["one"])  # "two" is now the oldest
    cache.encode(aligner, ["three"])
    aligner.texts_encoded.clear()
    cache.encode(aligner, ["one", "three"])
    assert aligner.texts_encoded == []
    cache.encode(aligner, ["two"])
    assert aligner.texts_encoded == ["two"]
    other = CountingAligner(identity="test/other")
    cache.encode(other, ["two"])
    assert other.texts_encoded == ["two"]  # another aligner's vector of the same text is not reused


def test_cache_of_size_zero_always_encodes():
    aligner, cache = CountingAligner(), TextVectorCache(size=0)
    cache.encode(aligner, ["a"])
    cache.encode(aligner, ["a"])
    assert aligner.texts_encoded == ["a", "a"]


def test_query_vector_with_the_cache_equals_the_plain_one():
    aligner, cache = CountingAligner(), TextVectorCache()
    query = Query(text="a red bus", negatives=["blue", "a red bus"])
    plain = query_vector(aligner, query)
    cached = query_vector(aligner, query, lambda texts: cache.encode(aligner, texts))
    np.testing.assert_allclose(cached, plain, atol=1e-7)
    aligner.texts_encoded.clear()
    np.testing.assert_allclose(query_vector(aligner, query, lambda texts: cache.encode(aligner, texts)), plain, atol=1e-7)
    assert aligner.texts_encoded == []


@pytest.mark.slow
def test_minilm_packed_numpy_forward_agrees_with_torch():
    from threadpoolctl import threadpool_info

    from retrieval.aligners import conse, minilm

    encoder = conse.SentenceEncoder(conse.text_model_folder())
    texts = [
        "a dog on a beach", "x", "Ünïcode café, 東京!",
        "a long caption about " + "a very old red bus parked beside a market in the rain " * 6,
    ]
    def numpy_blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if "numpy" in lib["filepath"]]

    threads_before = numpy_blas_threads()
    for batch in ([texts[0]], [texts[3]], texts, [f"photo {i} of {'a big ' * (i % 5)}cat" for i in range(minilm.NUMPY_MAX_BATCH)]):
        encodings = encoder.tokenizer.encode_batch(batch)
        ids = np.array([e.ids for e in encodings])
        mask = np.array([e.attention_mask for e in encodings])
        fast = conse.normalize(encoder.forward(ids, mask))  # numpy: the batch is small
        reference = conse.normalize(encoder.torch_forward(ids, mask))
        np.testing.assert_allclose(fast, reference, atol=1e-5)
    assert encoder._numpy_layers is not None  # the numpy form really ran
    assert numpy_blas_threads() == threads_before  # numpy's BLAS threads restored


def test_one_blas_thread_applies_in_any_thread_and_is_restored():
    """The server encodes on a worker thread: the limit must hold there too, also after the
    main thread has used it (OpenBLAS ignored a process-wide change made from a worker then)."""
    import threading

    from threadpoolctl import threadpool_info

    from retrieval.aligners.minilm import _OneBlasThread

    def numpy_blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if "numpy" in lib["filepath"]]

    before = numpy_blas_threads()
    with _OneBlasThread():
        assert numpy_blas_threads() == [1] * len(before)
    assert numpy_blas_threads() == before
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    inside = []

    def first():
        with _OneBlasThread():
            first_in.set()
            second_in.wait(5)
            inside.append(numpy_blas_threads())
        first_out.set()

    def second():
        first_in.wait(5)
        with _OneBlasThread():
            second_in.set()
            first_out.wait(5)  # the first block has ended; this one still runs on one thread
            inside.append(numpy_blas_threads())

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert inside == [[1] * len(before)] * 2
    assert numpy_blas_threads() == before
