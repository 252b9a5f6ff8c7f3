"""Approximate-nearest-neighbour indexes: the only package that imports faiss.

Owns the FAISS index files derived from the catalog's vectors: which index type a collection
gets (:mod:`.building`), tuning it to the recall target (:mod:`.tuning`, on the queries of
:mod:`.tuning_queries`), searching it (:mod:`.searching`), reading and writing its files
(:mod:`.files`), indexes larger than memory (:mod:`.ondisk`), the 8-bit copy a long-lived
searcher keeps (:mod:`.quickscan`), near-duplicate pairs (:mod:`.pairs`) and exact top-k
(:mod:`.exact`). Its choices are fields of :class:`AnnSettings`, passed in.

It may import numpy, faiss (and wurlitzer, to keep FAISS's printf()s off stdout) and
:mod:`retrieval.errors` only: the catalog, the aligners and the search layer call it, never the
other way round. Callers write ``from retrieval import ann`` and then ``ann.build(...)``,
``ann.read(...)``, ``ann.search(...)``.
"""

from retrieval.ann.building import (
    MIN_POINTS_PER_LIST,
    TRAIN_SAMPLE,
    build,
    build_streamed,
    factory_for,
    memory_limit_default,
    reranks,
    update,
)
from retrieval.ann.chunks import Chunks, gather
from retrieval.ann.exact import TopK, exact_top_k, inner_products, top_k
from retrieval.ann.files import describe, ids_of, lists_path, read, write
from retrieval.ann.pairs import near_pairs
from retrieval.ann.searching import (
    SMALL_BATCH,
    holds_vectors,
    inverted,
    mask_params,
    omp_threads,
    probed_lists,
    search,
    search_ranked,
    stored_vectors,
    subset_params,
)
from retrieval.ann.settings import DEFAULT, AnnSettings
from retrieval.ann.tuning import IndexInfo, TextEncoder, probe_truth, recall_at_k, split_truth, tune

__all__ = [
    "DEFAULT", "MIN_POINTS_PER_LIST", "SMALL_BATCH", "TRAIN_SAMPLE", "AnnSettings", "Chunks", "IndexInfo",
    "TextEncoder", "TopK", "build", "build_streamed", "describe", "exact_top_k", "factory_for", "gather",
    "holds_vectors", "ids_of", "inner_products", "inverted", "lists_path", "mask_params", "memory_limit_default",
    "near_pairs", "omp_threads", "probe_truth", "probed_lists", "read", "recall_at_k", "reranks", "search",
    "search_ranked", "split_truth", "stored_vectors", "subset_params", "top_k", "tune", "update", "write",
]
