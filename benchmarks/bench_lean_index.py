"""What a memory-lean image index costs: memory, recall@10 and latency at 1M vectors, in one run.

When float32 vectors would not fit the memory limit (`retrieval index --max-index-memory`,
by default a quarter of the machine's memory), the engine keeps 8-bit codes (SQ8) in the
index and re-scores AnnSettings.rerank_factor x k candidates per query with the exact vectors that the
catalog keeps on disk. This compares, on the same vectors and queries, through the engine's
own search path (`query.search_vectors`: snapshot, FAISS, re-scoring, catalog rows):
- IVF,Flat: what the engine builds when the vectors fit;
- IVF,SQ8 with re-scoring: what it builds when they do not;
- IVF,SQ8 re-scoring only its own top k (no extra candidates), to show what they buy;
- IVF,PQ48 with re-scoring: product quantization (autofaiss's choice for tight memory), 48
  bytes a vector, as the alternative.
Each index gets nprobe tuned to recall@10 >= 0.99 at build time where it can reach it. The
vectors are the synthetic clustered ones of bench_search (384-d, like `default`).

    .venv/bin/python -m benchmarks.bench_lean_index [--n 1000000] [--out bench-out/lean-index.json]
"""

from __future__ import annotations

import json
import tempfile
import time
from datetime import date
from pathlib import Path

import click
import faiss
import numpy as np

from benchmarks.harness import (
    DIM,
    centers,
    clustered,
    command,
    insert_rows,
    load,
    machine,
    note,
    percentiles,
    report,
    summary,
)
from retrieval import ann
from retrieval.search.query import search_vectors
from retrieval.search.searcher import Searcher
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
    settings = ann.AnnSettings(rerank_factor=factor, rerank_choices=(factor,))
    t = time.perf_counter()
    index, info = ann.build(ids, data, factory=factory, settings=settings)
    build_s = time.perf_counter() - t
    path = store.faiss_path("images", generation)
    ann.write(index, path)
    del index
    store.catalog.set_meta(generation=generation, index_factory=factory, index_rerank=info.rerank)
    searcher = Searcher()  # as a long-lived caller searches: the index kept loaded
    search_vectors(store, queries[:1], k=10, searcher=searcher)  # warm the page cache
    times, got = [], []
    for q in queries:
        t = time.perf_counter()
        hits = search_vectors(store, q[None], k=10, searcher=searcher)[0]
        times.append(time.perf_counter() - t)
        got.append([h.id for h in hits] + [-1] * (10 - len(hits)))
    ms = percentiles(np.array(times) * 1000)
    return {
        "index": factory, "candidates_per_result": factor if ann.reranks(factory) else None,
        "bytes": path.stat().st_size, "build_s": round(build_s, 1), "nprobe": info.nprobe,
        "tuned_recall_at_10": info.recall_at_10, "recall_at_10": ann.recall_at_k(truth, np.array(got)),
        "ms_p50": ms["p50"], "ms_p99": ms["p99"],
    }


@command(out="bench-out/lean-index.json", quick={"n": 5_000})
@click.option("--n", type=int, default=1_000_000, show_default=True, help="Vectors in the index.")
def main(n: int, out: Path) -> None:
    load_before = load()
    points = centers()
    data = clustered(n, DIM, seed=n, centers=points)
    ids = np.arange(1, n + 1, dtype=np.int64)
    queries = clustered(200, DIM, seed=7, centers=points)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(data)
    truth = ids[exact.search(queries, 10)[1]]
    del exact
    nlist = int(4 * np.sqrt(n))
    rows = []
    with tempfile.TemporaryDirectory(dir="bench-out" if Path("bench-out").is_dir() else None) as tmp:
        t = time.perf_counter()
        store = fill_catalog(Path(tmp) / "idx", data)
        note(f"catalog of {n:,} rows in {time.perf_counter() - t:.0f}s")
        engine_factor = ann.DEFAULT.rerank_factor
        plan = [
            (f"IVF{nlist},Flat", 1),  # the vectors fit: what the engine builds
            (f"IVF{nlist},SQ8", engine_factor),  # they do not: what it builds instead
            (f"IVF{nlist},SQ8", 1),  # the same codes with no extra candidates to re-score
            (f"IVF{nlist},PQ48", engine_factor),  # the alternative: product quantization, 48 bytes a vector
        ]
        for generation, (factory, factor) in enumerate(plan, 1):
            rows.append(variant(store, data, ids, factory, factor, queries, truth, generation))
            note(json.dumps(rows[-1]))
        store.close()
    meta = {"date": str(date.today()), "machine": summary(),
            "faiss": faiss.__version__, "n": n, "dim": DIM, "rerank_factor": ann.DEFAULT.rerank_factor,
            "load_average": [round(load_before, 1), round(load(), 1)], "host": machine()}
    flat = rows[0]["bytes"]
    title = (f"Memory-lean index, {n:,} x {DIM}-d vectors, {meta['machine']}, faiss {meta['faiss']}, {meta['date']}, "
             f"load average {meta['load_average'][0]} before, {meta['load_average'][1]} after")
    table = [{"index": r["index"], "candidates re-scored per result": r["candidates_per_result"] or "none",
              "memory (MB)": f"{r['bytes'] / 2**20:.0f}", "vs Flat": f"{r['bytes'] / flat:.2f}", "nprobe": r["nprobe"],
              "recall@10": f"{r['recall_at_10']:.3f}", "p50 / p99 ms (search + catalog)": f"{r['ms_p50']:.2f} / {r['ms_p99']:.2f}",
              "build s": r["build_s"]} for r in rows]
    report("lean-index", {"meta": meta, "rows": rows}, table, out, title)


if __name__ == "__main__":
    main()
