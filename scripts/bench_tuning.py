"""Recall of text queries through the engine's inverted file, tuned three ways, in one run.

For each size, one ``IVF{4 sqrt n},Flat`` index over bench_search.py's clustered 384-d vectors
(and, with --sq8, the same with 8-bit codes and exact re-scoring), tuned by the engine's
``index.tune`` on:
- near queries only (stored vectors plus noise): what the engine did before retrieval/ann/probes.py;
- near queries and random directions: the model-free stand-in for text queries (a build with
  no aligner at hand: a rebuild, an import, this benchmark's catalog);
- near queries and the packaged prompts encoded by ``default`` (a build by ``retrieval index``).
Each tuning's settings are then measured on held-out queries: 200 clustered queries near the
data (bench_search.py's) and real text queries (the dev set's captions through ``default``),
recall@10 against exact search and single-query latency (p50 / p99). The nprobe the text
queries themselves need is reported beside.

With --real INDEX (an index folder built by `retrieval index` with `default`), it also asks
which model-free queries need the nprobe that real text queries need on real image vectors:
random directions (the engine's stand-in) or draws from a Gaussian with the data's mean and
covariance.

    .venv/bin/python scripts/bench_tuning.py [--sizes 100000 1000000] [--real INDEX] [--out bench-out/tuning.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

import faiss
import numpy as np
from bench_search import DIM, clustered

from retrieval.ann import index as faiss_index
from retrieval.ann import probes

K = 10


def text_queries(encode) -> np.ndarray:
    rows = list(csv.DictReader(open(Path(__file__).parent / "devset2_captions.csv", newline="")))
    return np.ascontiguousarray(encode([r["caption_1"] for r in rows] + [r["caption_2"] for r in rows]), np.float32)


def timed(index, queries: np.ndarray, fetch: int, ids: np.ndarray, vectors: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Single queries as the engine searches them; candidates of 8-bit codes re-scored from `vectors`."""
    times, out = [], []
    for q in queries:
        t = time.perf_counter()
        _, found = faiss_index.search(index, q[None], fetch)
        found = found[0][found[0] >= 0]
        if fetch > K:
            found = found[np.argsort(-(vectors[found - 1] @ q), kind="stable")[:K]]
        times.append(time.perf_counter() - t)
        out.append(list(found[:K]) + [-1] * (K - len(found[:K])))
    ms = np.array(times) * 1000
    return round(float(np.median(ms)), 2), round(float(np.percentile(ms, 99)), 2), np.array(out)


def needed(index, queries: np.ndarray, truth: np.ndarray, fetch: int) -> int:
    """The least power-of-two nprobe at which `queries` reach the target (capped at every list)."""
    nprobe = 1
    while nprobe < index.nlist:
        index.nprobe = nprobe
        if faiss_index.recall_at_k(truth, index.search(queries, fetch)[1][:, :fetch]) >= faiss_index.TARGET_RECALL:
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
    index, _ = faiss_index.build(ids, data, factory=f"IVF{int(4 * np.sqrt(n))},Flat")
    flat = faiss.IndexFlatIP(data.shape[1])
    flat.add(data)
    kinds = {"text": texts, "random_directions": probes.stand_in(data.shape[1]), "gaussian_like_data": gaussian_like(data),
             "near": probes.near(data)}
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
    index.cp.min_points_per_centroid = faiss_index.MIN_POINTS_PER_LIST
    sample = data[np.random.default_rng(0).choice(n, min(n, max(faiss_index.TRAIN_SAMPLE, 20 * index.nlist)), replace=False)]
    index.train(sample)
    index.add_with_ids(data, ids)
    build_s = time.perf_counter() - t
    chunks = lambda: [(ids, data)]  # noqa: E731
    held = {"near": clustered(200, DIM, seed=7, centers=centers), "text": texts}
    flat = faiss.IndexFlatIP(DIM)
    flat.add(data)
    truth = {name: ids[flat.search(q, K)[1]] for name, q in held.items()}
    del flat
    rerank = faiss_index.reranks(factory)
    near_only = probes.Probes({"near": probes.near(data[np.random.default_rng(1).choice(n, 500, replace=False)])},
                              "near queries only (the engine before this change)")
    t = time.perf_counter()
    with_stand_in, truths_stand_in = faiss_index.probe_truth(chunks, n, DIM)
    with_prompts = probes.Probes({"near": with_stand_in.sets["near"], "far": probes.text_queries(encode)},
                                 "text prompts encoded by default")
    all_q = np.concatenate([near_only.sets["near"], with_prompts.sets["far"]])
    exact_all = faiss_index.exact_top_k(chunks, all_q, K)
    truths = {"near_only": {"near": exact_all[:500]},
              "stand_in": truths_stand_in,
              "prompts": {"near": truths_stand_in["near"], "far": exact_all[500:]}}
    truth_s = time.perf_counter() - t
    row = {"n": n, "factory": factory, "build_s": round(build_s), "truth_s": round(truth_s), "tunings": {}}
    for name, queries in (("near_only", near_only), ("stand_in", with_stand_in), ("prompts", with_prompts)):
        t = time.perf_counter()
        info = faiss_index.tune(index, queries, truths[name], faiss_index.IndexInfo(factory, n), rerank=rerank)
        out = {"nprobe": info.nprobe, "rerank": info.rerank, "tuned_recall": info.recall_by_queries,
               "tune_s": round(time.perf_counter() - t, 1)}
        fetch = K * (info.rerank or 1)
        for qname, q in held.items():
            p50, p99, got = timed(index, q, fetch, ids, data)
            out[qname] = {"recall_at_10": round(faiss_index.recall_at_k(truth[qname], got), 4), "ms_p50": p50, "ms_p99": p99}
        row["tunings"][name] = out
        print(json.dumps({n: {name: out}}), file=sys.stderr, flush=True)
    fetch = K * (faiss_index.RERANK_FACTOR if rerank else 1)
    row["text_needs_nprobe"] = needed(index, texts, truth["text"], fetch)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--sq8", action="store_true", help="Also the 8-bit index (IVF,SQ8 with exact re-scoring).")
    parser.add_argument("--real", type=Path, help="An index folder built with `default`: compare stand-ins on its vectors.")
    parser.add_argument("--out", type=Path, default=Path("bench-out/tuning.json"))
    args = parser.parse_args()
    from retrieval.aligners import load_aligner

    encode = load_aligner("default").encode_texts
    load_before = os.getloadavg()[0]
    centers = np.random.default_rng(0).normal(0, 1, (1000, DIM)).astype(np.float32)
    faiss.normalize_L2(centers)
    texts = text_queries(encode)
    rows, checks = [], {}
    if args.real:
        from retrieval.storage.store import IndexStore

        store = IndexStore.open(args.real)
        real = np.concatenate([c[1] for c in store.catalog.image_vectors()])
        store.close()
        # One row per distinct vector: copies of a file tie exactly, and exact search and the
        # inverted file may break the tie by different ids, which would count as a miss.
        real = np.unique(real, axis=0)
        checks["real_index"] = stand_in_check("real_index", real, texts)
        checks["clustered_100k"] = stand_in_check("clustered_100k", clustered(100_000, DIM, seed=100_000, centers=centers), texts)
    for n in args.sizes:
        for codes in ("Flat", "SQ8") if args.sq8 else ("Flat",):
            rows.append(bench(n, codes, centers, texts, encode))
            rows[-1]["load_average_after"] = round(os.getloadavg()[0], 1)
    meta = {"date": str(date.today()), "faiss": faiss.__version__, "dim": DIM, "text_queries": len(texts),
            "target": faiss_index.TARGET_RECALL, "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "stand_in_checks": checks, "rows": rows}, indent=1))
    print(json.dumps({"meta": meta, "stand_in_checks": checks, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
