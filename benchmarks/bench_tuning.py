"""Recall of text queries through the engine's inverted file, tuned three ways, in one run.

For each size, one ``IVF{4 sqrt n},Flat`` index over the harness's clustered 384-d vectors
(and, with --sq8, the same with 8-bit codes and exact re-scoring), tuned by the engine's
``index.tune`` on:
- near queries only (stored vectors plus noise): what the engine did before retrieval/ann/tuning_queries.py;
- near queries and random directions: the model-free stand-in for text queries (a build with
  no aligner at hand: a rebuild, an import, this benchmark's catalog);
- near queries and the packaged prompts encoded by ``default`` (a build by ``retrieval index``).
Each tuning's settings are then measured on held-out queries: 200 clustered queries near the
data (bench_search's) and real text queries (the dev set's captions through ``default``),
recall@10 against exact search and single-query latency (p50 / p99). The nprobe the text
queries themselves need is reported beside.

With --real INDEX (an index folder built by `retrieval index` with `default`), it also asks
which model-free queries need the nprobe that real text queries need on real image vectors:
random directions (the engine's stand-in) or draws from a Gaussian with the data's mean and
covariance.

    .venv/bin/python -m benchmarks.bench_tuning [--sizes 100000 --sizes 1000000] [--real INDEX] [--out bench-out/tuning.json]
"""

from __future__ import annotations

import json
import sys
import time
from datetime import date
from pathlib import Path

import click
import faiss
import numpy as np

from benchmarks.harness import DIM, centers, clustered, command, dev_captions, load, machine, percentiles
from retrieval import ann
from retrieval.ann import tuning_queries

K = 10


def text_queries(encode) -> np.ndarray:
    return np.ascontiguousarray(encode(dev_captions()), np.float32)


def timed(index, queries: np.ndarray, fetch: int, ids: np.ndarray, vectors: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Single queries as the engine searches them; candidates of 8-bit codes re-scored from `vectors`."""
    times, out = [], []
    for q in queries:
        t = time.perf_counter()
        _, found = ann.search(index, q[None], fetch)
        found = found[0][found[0] >= 0]
        if fetch > K:
            found = found[np.argsort(-(vectors[found - 1] @ q), kind="stable")[:K]]
        times.append(time.perf_counter() - t)
        out.append(list(found[:K]) + [-1] * (K - len(found[:K])))
    ms = percentiles(np.array(times) * 1000)
    return round(ms["p50"], 2), round(ms["p99"], 2), np.array(out)


def needed(index, queries: np.ndarray, truth: np.ndarray, fetch: int) -> int:
    """The least power-of-two nprobe at which `queries` reach the target (capped at every list)."""
    nprobe = 1
    while nprobe < index.nlist:
        index.nprobe = nprobe
        if ann.recall_at_k(truth, index.search(queries, fetch)[1][:, :fetch]) >= ann.DEFAULT.target_recall:
            return nprobe
        nprobe *= 2
    return index.nlist


def gaussian_like(data: np.ndarray, count: int = 300) -> np.ndarray:
    """Draws from a Gaussian with the data's mean and covariance (a random mix of centred vectors)."""
    rng = np.random.default_rng(2)
    mean = data.mean(axis=0)
    centred = data[rng.choice(len(data), min(len(data), 4096), replace=False)] - mean
    x = mean + rng.normal(0, 1 / np.sqrt(len(centred)), (count, len(centred))).astype(np.float32) @ centred
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def stand_in_check(name: str, data: np.ndarray, texts: np.ndarray) -> dict:
    """nprobe each query kind needs on IVF{4 sqrt n},Flat over `data` (one index, built as the engine does)."""
    n = len(data)
    ids = np.arange(1, n + 1, dtype=np.int64)
    index, _ = ann.build(ids, data, factory=f"IVF{int(4 * np.sqrt(n))},Flat")
    flat = faiss.IndexFlatIP(data.shape[1])
    flat.add(data)
    kinds = {"text": texts, "random_directions": tuning_queries.stand_in(data.shape[1]), "gaussian_like_data": gaussian_like(data),
             "near": tuning_queries.near(data)}
    out = {"vectors": n, "nlist": index.nlist}
    for kind, q in kinds.items():
        scores, found = flat.search(q, K)
        out[kind] = {"needs_nprobe": needed(index, q, ids[found], K), "top1_cosine_median": round(float(np.median(scores[:, 0])), 3)}
    print(json.dumps({name: out}), file=sys.stderr, flush=True)
    return out


def bench(n: int, codes: str, centers: np.ndarray, texts: np.ndarray, encode) -> dict:
    data = clustered(n, DIM, seed=n, centers=centers)
    ids = np.arange(1, n + 1, dtype=np.int64)
    factory = f"IVF{int(4 * np.sqrt(n))},{codes}"
    t = time.perf_counter()
    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = ann.MIN_POINTS_PER_LIST
    sample = data[np.random.default_rng(0).choice(n, min(n, max(ann.TRAIN_SAMPLE, 20 * index.nlist)), replace=False)]
    index.train(sample)
    index.add_with_ids(data, ids)
    build_s = time.perf_counter() - t
    chunks = lambda: [(ids, data)]  # noqa: E731
    held = {"near": clustered(200, DIM, seed=7, centers=centers), "text": texts}
    flat = faiss.IndexFlatIP(DIM)
    flat.add(data)
    truth = {name: ids[flat.search(q, K)[1]] for name, q in held.items()}
    del flat
    rerank = ann.reranks(factory)
    near_only = tuning_queries.Probes({"near": tuning_queries.near(data[np.random.default_rng(1).choice(n, 500, replace=False)])},
                              "near queries only (the engine before this change)")
    t = time.perf_counter()
    with_stand_in, truths_stand_in = ann.probe_truth(chunks, n, DIM)
    with_prompts = tuning_queries.Probes({"near": with_stand_in.sets["near"], "far": tuning_queries.text_queries(encode)},
                                 "text prompts encoded by default")
    all_q = np.concatenate([near_only.sets["near"], with_prompts.sets["far"]])
    exact_all = ann.exact_top_k(chunks, all_q, K)
    truths = {"near_only": {"near": exact_all[:500]},
              "stand_in": truths_stand_in,
              "prompts": {"near": truths_stand_in["near"], "far": exact_all[500:]}}
    truth_s = time.perf_counter() - t
    row = {"n": n, "factory": factory, "build_s": round(build_s), "truth_s": round(truth_s), "tunings": {}}
    for name, queries in (("near_only", near_only), ("stand_in", with_stand_in), ("prompts", with_prompts)):
        t = time.perf_counter()
        info = ann.tune(index, queries, truths[name], ann.IndexInfo(factory, n), rerank=rerank)
        out = {"nprobe": info.nprobe, "rerank": info.rerank, "tuned_recall": info.recall_by_queries,
               "tune_s": round(time.perf_counter() - t, 1)}
        fetch = K * (info.rerank or 1)
        for qname, q in held.items():
            p50, p99, got = timed(index, q, fetch, ids, data)
            out[qname] = {"recall_at_10": round(ann.recall_at_k(truth[qname], got), 4), "ms_p50": p50, "ms_p99": p99}
        row["tunings"][name] = out
        print(json.dumps({n: {name: out}}), file=sys.stderr, flush=True)
    fetch = K * (ann.DEFAULT.rerank_factor if rerank else 1)
    row["text_needs_nprobe"] = needed(index, texts, truth["text"], fetch)
    return row


@command(out="bench-out/tuning.json", quick={"sizes": (5_000,)})
@click.option("--sizes", type=int, multiple=True, default=(100_000, 1_000_000), show_default=True,
              help="Vectors in each index measured (repeatable; 0 alone: none, with --real).")
@click.option("--sq8", is_flag=True, help="Also the 8-bit index (IVF,SQ8 with exact re-scoring).")
@click.option("--real", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="An index folder built with `default`: compare stand-ins on its vectors.")
def main(sizes: tuple[int, ...], sq8: bool, real: Path | None, out: Path) -> None:
    from retrieval.aligners import load_aligner

    encode = load_aligner("default").encode_texts
    load_before = load()
    points = centers()
    texts = text_queries(encode)
    rows, checks = [], {}
    if real:
        from retrieval.storage.store import IndexStore

        store = IndexStore.open(real)
        vectors = np.concatenate([c[1] for c in store.catalog.image_vectors()])
        store.close()
        # One row per distinct vector: copies of a file tie exactly, and exact search and the
        # inverted file may break the tie by different ids, which would count as a miss.
        vectors = np.unique(vectors, axis=0)
        checks["real_index"] = stand_in_check("real_index", vectors, texts)
        checks["clustered_100k"] = stand_in_check("clustered_100k", clustered(100_000, DIM, seed=100_000, centers=points), texts)
    for n in (n for n in sizes if n > 0):
        for codes in ("Flat", "SQ8") if sq8 else ("Flat",):
            rows.append(bench(n, codes, points, texts, encode))
            rows[-1]["load_average_after"] = round(load(), 1)
    meta = {"date": str(date.today()), "faiss": faiss.__version__, "dim": DIM, "text_queries": len(texts),
            "target": ann.DEFAULT.target_recall, "load_average": [round(load_before, 1), round(load(), 1)], "host": machine()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "stand_in_checks": checks, "rows": rows}, indent=1))
    print(json.dumps({"meta": meta, "stand_in_checks": checks, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
