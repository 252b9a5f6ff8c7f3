"""Search latency and recall at 10k, 100k and 1M vectors, in one run.

For each size it measures, on the same vectors and queries:
- exact search (what the engine uses up to index.EXACT_LIMIT) and the engine's approximate
  index (IVF with nprobe tuned to recall@10 >= 0.99) and HNSW as an alternative:
  single-query latency (median, p99), recall@10 against exact search, load time (plain and
  memory-mapped);
- end to end through the engine for a text query with the default aligner (encode, search,
  catalog lookup) on a real catalog of that size;
- the cold start of `retrieval search` (a fresh process) to its first result.

Vectors are synthetic but clustered like real embeddings (random unit vectors have no
neighbourhood structure, the worst case for any approximate index).

    .venv/bin/python -m benchmarks.bench_search [--sizes 10000 --sizes 100000 ...] [--out bench-out/search.json]
"""

from __future__ import annotations

import json
import subprocess
import sys
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
    fill_catalog,
    load,
    machine,
    note,
    percentiles,
    report,
    summary,
)
from retrieval import ann


def latency(index, queries: np.ndarray, k: int = 10, search=ann.search) -> tuple[float, float, np.ndarray]:
    """Single-query latency through the engine's search (one OpenMP thread for small batches)."""
    times, ids = [], []
    for q in queries:
        t = time.perf_counter()
        _, i = search(index, q[None], k)
        times.append(time.perf_counter() - t)
        ids.append(i[0])
    ms = percentiles(np.array(times) * 1000)
    return ms["p50"], ms["p99"], np.array(ids)


def load_times(index, folder: Path) -> tuple[float, float]:
    path = folder / "probe.faiss"
    faiss.write_index(index, str(path))
    t = time.perf_counter()
    ann.read(path)
    plain = time.perf_counter() - t
    t = time.perf_counter()
    ann.read(path, mmap=True)
    mapped = time.perf_counter() - t
    path.unlink()
    return plain, mapped


def end_to_end(folder: Path, texts: list[str]) -> tuple[float, float]:
    from retrieval.api import open_index

    idx = open_index(str(folder))
    idx.search("warm up", k=10)
    times = []
    for text in texts:
        t = time.perf_counter()
        hits = idx.search(text, k=10)
        times.append(time.perf_counter() - t)
        assert len(hits) == 10
    idx.close()
    ms = percentiles(np.array(times) * 1000)
    return ms["p50"], ms["p99"]


def cold_start(folder: Path) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "retrieval", "search", "a dog on a beach", "--index", str(folder), "-k", "5"],
                   check=True, capture_output=True)
    return time.perf_counter() - t


def bench_size(n: int, centers: np.ndarray, work: Path) -> dict:
    data = clustered(n, DIM, seed=n, centers=centers)
    ids = np.arange(1, n + 1, dtype=np.int64)
    queries = clustered(200, DIM, seed=7, centers=centers)
    row: dict = {"n": n}

    exact, _ = ann.build(ids, data, factory="IDMap2,Flat")
    row["exact_ms_p50"], row["exact_ms_p99"], truth = latency(exact, queries)
    # The alternative: FAISS's own default, every OpenMP thread on each single query.
    row["exact_all_threads_ms_p50"], row["exact_all_threads_ms_p99"], _ = latency(
        exact, queries, search=lambda index, q, k: index.search(q, k)
    )
    row["exact_load_s"], row["exact_load_mmap_s"] = load_times(exact, work)

    t = time.perf_counter()
    ivf, info = ann.build(ids, data, factory=f"IVF{int(4 * np.sqrt(n))},Flat")
    row["ivf_build_s"] = time.perf_counter() - t
    row["ivf_nprobe"], row["ivf_tuned_recall"] = info.nprobe, info.recall_at_10
    row["ivf_ms_p50"], row["ivf_ms_p99"], got = latency(ivf, queries)
    row["ivf_recall_at_10"] = ann.recall_at_k(truth, got)
    row["ivf_load_s"], row["ivf_load_mmap_s"] = load_times(ivf, work)

    t = time.perf_counter()
    hnsw = faiss.IndexIDMap2(faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT))
    hnsw.add_with_ids(data, ids)
    row["hnsw_build_s"] = time.perf_counter() - t
    faiss.downcast_index(hnsw.index).hnsw.efSearch = 64
    row["hnsw_ms_p50"], row["hnsw_ms_p99"], got = latency(hnsw, queries)
    row["hnsw_recall_at_10"] = ann.recall_at_k(truth, got)
    del hnsw

    engine = exact if ann.factory_for(n) == "IDMap2,Flat" else ivf
    row["engine_index"] = ann.factory_for(n)
    folder = work / f"idx-{n}"
    store = fill_catalog(folder, data, engine)
    store.close()
    texts = [f"a photo of a {w}" for w in ("dog", "cat", "beach", "car", "mountain", "city at night", "bicycle", "bird")] * 5
    row["e2e_ms_p50"], row["e2e_ms_p99"] = end_to_end(folder, texts)
    row["cold_start_s"] = cold_start(folder)
    return row


def table_row(r: dict) -> dict[str, str]:
    return {
        "vectors": f"{r['n']:,}",
        "exact p50 / p99 ms": f"{r['exact_ms_p50']:.2f} / {r['exact_ms_p99']:.2f}",
        "exact, all threads p50 / p99 ms": f"{r['exact_all_threads_ms_p50']:.2f} / {r['exact_all_threads_ms_p99']:.2f}",
        "IVF (nprobe) p50 / p99 ms": f"{r['ivf_ms_p50']:.2f} / {r['ivf_ms_p99']:.2f} ({r['ivf_nprobe']})",
        "IVF recall@10": f"{r['ivf_recall_at_10']:.3f}",
        "HNSW32 p50 / p99 ms": f"{r['hnsw_ms_p50']:.2f} / {r['hnsw_ms_p99']:.2f}",
        "HNSW recall@10": f"{r['hnsw_recall_at_10']:.3f}",
        "engine uses": r["engine_index"],
        "end to end p50 / p99 ms": f"{r['e2e_ms_p50']:.1f} / {r['e2e_ms_p99']:.1f}",
        "cold start s": f"{r['cold_start_s']:.2f}",
        "load plain / mmap s (exact)": f"{r['exact_load_s']:.2f} / {r['exact_load_mmap_s']:.2f}",
    }


@command(out="bench-out/search.json", quick={"sizes": (2_000,)})
@click.option("--sizes", type=int, multiple=True, default=(10_000, 100_000, 1_000_000), show_default=True,
              help="Vectors in each index measured (repeatable).")
def main(sizes: tuple[int, ...], out: Path) -> None:
    load_before = load()
    points = centers()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            note(f"size {n:,} ...")
            rows.append(bench_size(n, points, Path(tmp)))
            note(json.dumps(rows[-1]))
    meta = {"date": str(date.today()), "machine": summary(),
            "faiss": faiss.__version__, "dim": DIM, "exact_limit": ann.DEFAULT.exact_limit,
            "load_average": [round(load_before, 1), round(load(), 1)], "host": machine()}
    title = (f"Search benchmark, {meta['machine']}, faiss {meta['faiss']}, d={DIM}, {meta['date']}, "
             f"load average {meta['load_average'][0]} before, {meta['load_average'][1]} after")
    report("search", {"meta": meta, "rows": rows}, [table_row(r) for r in rows], out, title)


if __name__ == "__main__":
    main()
