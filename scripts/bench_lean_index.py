"""What a memory-lean image index costs: memory, recall@10 and latency at 1M vectors, in one run.

When float32 vectors would not fit the memory limit (`retrieval index --max-index-memory`,
by default a quarter of the machine's memory), the engine keeps 8-bit codes (SQ8) in the
index and re-scores RERANK_FACTOR x k candidates per query with the exact vectors that the
catalog keeps on disk. This compares, on the same vectors and queries, through the engine's
own search path (`query.search_vectors`: snapshot, FAISS, re-scoring, catalog rows):
- IVF,Flat: what the engine builds when the vectors fit;
- IVF,SQ8 with re-scoring: what it builds when they do not;
- IVF,SQ8 re-scoring only its own top k (no extra candidates), to show what they buy;
- IVF,PQ48 with re-scoring: product quantization (autofaiss's choice for tight memory), 48
  bytes a vector, as the alternative.
Each index gets nprobe tuned to recall@10 >= 0.99 at build time where it can reach it. The
vectors are the synthetic clustered ones of bench_search.py (384-d, like `default`).

    .venv/bin/python scripts/bench_lean_index.py [--n 1000000] [--out bench-out/lean-index.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import faiss
import numpy as np
from bench_search import DIM, clustered, insert_rows

from retrieval.ann import index as faiss_index
from retrieval.search.query import search_vectors
from retrieval.storage.store import IndexStore


def fill_catalog(folder: Path, vectors: np.ndarray) -> IndexStore:
    store = IndexStore.open(folder, create=True)
    store.catalog.set_meta(model="bench", model_identity="bench", dim=vectors.shape[1])
    insert_rows(store, vectors)
    return store


def variant(store: IndexStore, data: np.ndarray, ids: np.ndarray, factory: str, factor: int,
            queries: np.ndarray, truth: np.ndarray, generation: int) -> dict:
    """Build `factory`, publish it as `generation`, time 200 single queries through the engine."""
    # Candidates per result, fixed for this row: the tuning tries only this width, searches use it.
    faiss_index.RERANK_FACTOR, faiss_index.RERANK_CHOICES = factor, (factor,)
    t = time.perf_counter()
    index, info = faiss_index.build(ids, data, factory=factory)
    build_s = time.perf_counter() - t
    path = store.faiss_path("images", generation)
    faiss_index.write(index, path)
    del index
    store.catalog.set_meta(generation=generation, index_factory=factory, index_rerank=info.rerank)
    search_vectors(store, queries[:1], k=10)  # warm the page cache
    times, got = [], []
    for q in queries:
        t = time.perf_counter()
        hits = search_vectors(store, q[None], k=10)[0]
        times.append(time.perf_counter() - t)
        got.append([h.id for h in hits] + [-1] * (10 - len(hits)))
    ms = np.array(times) * 1000
    return {
        "index": factory, "candidates_per_result": factor if faiss_index.reranks(factory) else None,
        "bytes": path.stat().st_size, "build_s": round(build_s, 1), "nprobe": info.nprobe,
        "tuned_recall_at_10": info.recall_at_10, "recall_at_10": faiss_index.recall_at_k(truth, np.array(got)),
        "ms_p50": float(np.median(ms)), "ms_p99": float(np.percentile(ms, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("bench-out/lean-index.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    n = args.n
    centers = np.random.default_rng(0).normal(0, 1, (1000, DIM)).astype(np.float32)
    faiss.normalize_L2(centers)
    data = clustered(n, DIM, seed=n, centers=centers)
    ids = np.arange(1, n + 1, dtype=np.int64)
    queries = clustered(200, DIM, seed=7, centers=centers)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(data)
    truth = ids[exact.search(queries, 10)[1]]
    del exact
    nlist = int(4 * np.sqrt(n))
    rows = []
    with tempfile.TemporaryDirectory(dir="bench-out" if Path("bench-out").is_dir() else None) as tmp:
        t = time.perf_counter()
        store = fill_catalog(Path(tmp) / "idx", data)
        print(f"catalog of {n:,} rows in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
        engine_factor, engine_choices = faiss_index.RERANK_FACTOR, faiss_index.RERANK_CHOICES
        plan = [
            (f"IVF{nlist},Flat", 1),  # the vectors fit: what the engine builds
            (f"IVF{nlist},SQ8", engine_factor),  # they do not: what it builds instead
            (f"IVF{nlist},SQ8", 1),  # the same codes with no extra candidates to re-score
            (f"IVF{nlist},PQ48", engine_factor),  # the alternative: product quantization, 48 bytes a vector
        ]
        for generation, (factory, factor) in enumerate(plan, 1):
            rows.append(variant(store, data, ids, factory, factor, queries, truth, generation))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        faiss_index.RERANK_FACTOR, faiss_index.RERANK_CHOICES = engine_factor, engine_choices
        store.close()
    meta = {"date": str(date.today()), "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
            "faiss": faiss.__version__, "n": n, "dim": DIM, "rerank_factor": faiss_index.RERANK_FACTOR,
            "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    flat = rows[0]["bytes"]
    print(f"Memory-lean index, {n:,} x {DIM}-d vectors, {meta['machine']}, faiss {meta['faiss']}, {meta['date']}, "
          f"load average {meta['load_average'][0]} before, {meta['load_average'][1]} after\n")
    print("| index | candidates re-scored per result | memory (MB) | vs Flat | nprobe | recall@10 | p50 / p99 ms (search + catalog) | build s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['index']} | {r['candidates_per_result'] or 'none'} | {r['bytes'] / 2**20:.0f} | {r['bytes'] / flat:.2f} "
              f"| {r['nprobe']} | {r['recall_at_10']:.3f} | {r['ms_p50']:.2f} / {r['ms_p99']:.2f} | {r['build_s']} |")


if __name__ == "__main__":
    main()
