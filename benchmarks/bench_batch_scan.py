"""CPU per query of one batch of queries against an exact index of 100,000 vectors, by way of searching.

The server hands the engine micro-batches of up to 64 text queries (retrieval/server/batcher.py).
This measures, per batch size, what each way of answering a batch exactly costs per query:

- the 8-bit copy's scan then exact re-scoring (retrieval/ann/quickscan.py), one OpenMP thread;
- FAISS's own exact search on the memory-mapped float32 index, one and two OpenMP threads,
  with its default choice between a plain scan and a BLAS product (``blas threshold``) and
  with the product forced for every batch;
- what QuickScan.search does now (the codes below ``BATCH_EXACT`` queries, the product from it);
- numpy's product over an aligned float32 copy of the vectors (one BLAS thread) and a top-k.

Every way's results are compared with FAISS's exact search (its plain scan): recall@10, and
the largest difference between the score at a rank and exact search's score at that rank
(near-tied vectors may swap places between two exact ways; their scores may not differ).
The 1-minute load average is recorded before and after.

    .venv/bin/python -m benchmarks.bench_batch_scan [--n 100000] [--out bench-out/batch-scan.json]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import faiss
import numpy as np

from benchmarks.harness import DIM, centers, clustered, command, load, machine, note, report
from retrieval import ann
from retrieval.ann import quickscan
from retrieval.blas import OneBlasThread

K = 10


def faiss_exact(exact, threads: int, force_blas: bool):
    def run(queries):
        saved_threshold = faiss.cvar.distance_compute_blas_threshold
        if force_blas:
            faiss.cvar.distance_compute_blas_threshold = 1
        try:
            with ann.omp_threads(threads):
                return exact.search(queries, K)
        finally:
            faiss.cvar.distance_compute_blas_threshold = saved_threshold
    return run


def codes_only(exact):
    quick = quickscan.QuickScan(exact, ann.AnnSettings(quick_batch_exact=1 << 30))  # never the product

    def run(queries):
        return quick.search(queries, K)
    return run


def numpy_aligned(vectors: np.ndarray, ids: np.ndarray):
    copy = np.array(vectors, order="C")  # numpy's own allocation: aligned, so the product uses BLAS

    def run(queries):
        with OneBlasThread():
            sims = queries @ copy.T
        top = np.argpartition(-sims, K, axis=1)[:, :K]
        scores = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(scores, order, axis=1), ids[np.take_along_axis(top, order, axis=1)]
    return run


@command(out="bench-out/batch-scan.json", quick={"n": 5_000, "n_queries": 64})
@click.option("--n", type=int, default=100_000, show_default=True, help="Vectors in the exact index.")
@click.option("--sizes", type=int, multiple=True, default=(1, 8, 16, 32, 64), show_default=True,
              help="Batch sizes (repeatable).")
@click.option("--queries", "n_queries", type=int, default=256, show_default=True, help="Queries timed per way and batch size.")
def main(n: int, sizes: tuple[int, ...], n_queries: int, out: Path) -> None:
    points = centers(300, normalize=False)
    vectors = clustered(n, DIM, 1, points)
    queries = clustered(n_queries, DIM, 2, points * 0.6)  # near the data, not on it
    with tempfile.TemporaryDirectory() as tmp:
        built, _ = ann.build(np.arange(n, dtype=np.int64) * 3 + 7, vectors, factory="IDMap2,Flat")
        path = Path(tmp) / "images-1.faiss"
        ann.write(built, path)
        del built
        exact = ann.read(path, mmap=True)  # as the server holds it
        quick = quickscan.QuickScan(exact)
        ways = {
            "8-bit scan + re-score, 1 thread": codes_only(exact),
            "QuickScan.search as committed (product from quick_batch_exact)": lambda q: quick.search(q, K),
            "FAISS exact, 1 thread": faiss_exact(exact, 1, False),
            "FAISS exact, 2 threads": faiss_exact(exact, 2, False),
            "FAISS exact BLAS, 1 thread": faiss_exact(exact, 1, True),
            "FAISS exact BLAS, 2 threads": faiss_exact(exact, 2, True),
            "numpy aligned float32 copy, 1 thread": numpy_aligned(quick.vectors, quick.ids),
        }
        truth_scores, truth = faiss_exact(exact, 1, False)(queries)
        result = {"n": n, "dim": DIM, "k": K, "faiss": faiss.__version__,
                  "blas_threshold": faiss.cvar.distance_compute_blas_threshold, "load_start": load(), "rows": []}
        for size in sizes:
            for way, run in ways.items():
                run(queries[:size])  # warm
                wall, cpu, found, worst = 0.0, 0.0, [], 0.0
                for start in range(0, n_queries - size + 1, size):
                    batch = queries[start : start + size]
                    t, c = time.perf_counter(), time.process_time()
                    scores, ids = run(batch)
                    wall += time.perf_counter() - t
                    cpu += time.process_time() - c
                    found.append(ids)
                    worst = max(worst, float(np.abs(scores - truth_scores[start : start + size]).max()))
                done = (n_queries // size) * size
                row = {"batch": size, "way": way, "wall_ms_per_query": round(wall * 1000 / done, 3),
                       "cpu_ms_per_query": round(cpu * 1000 / done, 3), "queries": done,
                       "recall_at_10": ann.recall_at_k(truth[:done], np.concatenate(found)),
                       "max_score_error": float(f"{worst:.2g}")}
                result["rows"].append(row)
                note(json.dumps(row))
        result["load_end"] = load()
    result["host"] = machine()
    title = (f"{n:,} x {DIM} exact index (memory-mapped), k={K}, faiss {result['faiss']}; "
             f"load average {result['load_start']} -> {result['load_end']}")
    rows = [{"batch": r["batch"], "way": r["way"], "wall ms per query": r["wall_ms_per_query"],
             "CPU ms per query": r["cpu_ms_per_query"], "recall@10": f"{r['recall_at_10']:.4f}",
             "largest score error": f"{r['max_score_error']:g}"} for r in result["rows"]]
    report("batch-scan", result, rows, out, title)


if __name__ == "__main__":
    main()
