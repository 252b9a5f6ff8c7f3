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

    .venv/bin/python scripts/bench_search.py [--sizes 10000 100000 1000000] [--out bench-out/search.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import faiss
import numpy as np

from retrieval.ann import index as faiss_index
from retrieval.storage.catalog import to_blob
from retrieval.storage.store import IndexStore

DIM = 384  # the default aligner's dimension


def clustered(n: int, dim: int, seed: int, centers: np.ndarray) -> np.ndarray:
    """Unit vectors around `centers` (cosine to their centre about 0.8, as photos of one subject)."""
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, len(centers), n)] + rng.normal(0, 0.75 / np.sqrt(dim), (n, dim)).astype(np.float32)
    faiss.normalize_L2(x)
    return x


def latency(index, queries: np.ndarray, k: int = 10, search=faiss_index.search) -> tuple[float, float, np.ndarray]:
    """Single-query latency through the engine's search (one OpenMP thread for small batches)."""
    times, ids = [], []
    for q in queries:
        t = time.perf_counter()
        _, i = search(index, q[None], k)
        times.append(time.perf_counter() - t)
        ids.append(i[0])
    ms = np.array(times) * 1000
    return float(np.median(ms)), float(np.percentile(ms, 99)), np.array(ids)


def load_times(index, folder: Path) -> tuple[float, float]:
    path = folder / "probe.faiss"
    faiss.write_index(index, str(path))
    t = time.perf_counter()
    faiss_index.read(path)
    plain = time.perf_counter() - t
    t = time.perf_counter()
    faiss_index.read(path, mmap=True)
    mapped = time.perf_counter() - t
    path.unlink()
    return plain, mapped


def insert_rows(store: IndexStore, vectors: np.ndarray, first: int = 0) -> None:
    """Catalog rows for `vectors`: image i is /photos/i.jpg with id i + 1, in one transaction.

    `first` numbers this batch's first vector, so that a large catalog can be filled in batches.
    """
    with store.catalog.transaction() as conn:
        for start in range(0, len(vectors), 50_000):
            part = range(start, min(start + 50_000, len(vectors)))
            conn.executemany("INSERT INTO vectors (hash, vector, width, height) VALUES (?, ?, 640, 480)",
                             ((f"h{first + i}", to_blob(vectors[i])) for i in part))
            conn.executemany("INSERT INTO images (id, path, size, mtime, hash, width, height) VALUES (?, ?, 1, 0, ?, 640, 480)",
                             ((first + i + 1, f"/photos/{first + i:07d}.jpg", f"h{first + i}") for i in part))


def fill_catalog(folder: Path, vectors: np.ndarray, index) -> IndexStore:
    """A real index folder of this size: catalog rows + the FAISS file of generation 1."""
    from retrieval.aligners import load_aligner

    aligner = load_aligner("default")
    store = IndexStore.open(folder, create=True)
    store.bind_model(aligner)
    insert_rows(store, vectors)
    store.catalog.set_meta(generation=1, next_id=len(vectors) + 1, index_factory=faiss_index.factory_for(len(vectors)))
    faiss_index.write(index, store.faiss_path("images", 1))
    return store


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
    ms = np.array(times) * 1000
    return float(np.median(ms)), float(np.percentile(ms, 99))


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

    exact, _ = faiss_index.build(ids, data, factory="IDMap2,Flat")
    row["exact_ms_p50"], row["exact_ms_p99"], truth = latency(exact, queries)
    # The alternative: FAISS's own default, every OpenMP thread on each single query.
    row["exact_all_threads_ms_p50"], row["exact_all_threads_ms_p99"], _ = latency(
        exact, queries, search=lambda index, q, k: index.search(q, k)
    )
    row["exact_load_s"], row["exact_load_mmap_s"] = load_times(exact, work)

    t = time.perf_counter()
    ivf, info = faiss_index.build(ids, data, factory=f"IVF{int(4 * np.sqrt(n))},Flat")
    row["ivf_build_s"] = time.perf_counter() - t
    row["ivf_nprobe"], row["ivf_tuned_recall"] = info.nprobe, info.recall_at_10
    row["ivf_ms_p50"], row["ivf_ms_p99"], got = latency(ivf, queries)
    row["ivf_recall_at_10"] = faiss_index.recall_at_k(truth, got)
    row["ivf_load_s"], row["ivf_load_mmap_s"] = load_times(ivf, work)

    t = time.perf_counter()
    hnsw = faiss.IndexIDMap2(faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT))
    hnsw.add_with_ids(data, ids)
    row["hnsw_build_s"] = time.perf_counter() - t
    faiss.downcast_index(hnsw.index).hnsw.efSearch = 64
    row["hnsw_ms_p50"], row["hnsw_ms_p99"], got = latency(hnsw, queries)
    row["hnsw_recall_at_10"] = faiss_index.recall_at_k(truth, got)
    del hnsw

    engine = exact if faiss_index.factory_for(n) == "IDMap2,Flat" else ivf
    row["engine_index"] = faiss_index.factory_for(n)
    folder = work / f"idx-{n}"
    store = fill_catalog(folder, data, engine)
    store.close()
    texts = [f"a photo of a {w}" for w in ("dog", "cat", "beach", "car", "mountain", "city at night", "bicycle", "bird")] * 5
    row["e2e_ms_p50"], row["e2e_ms_p99"] = end_to_end(folder, texts)
    row["cold_start_s"] = cold_start(folder)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=Path("bench-out/search.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    centers = np.random.default_rng(0).normal(0, 1, (1000, DIM)).astype(np.float32)
    faiss.normalize_L2(centers)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            print(f"size {n:,} ...", file=sys.stderr, flush=True)
            rows.append(bench_size(n, centers, Path(tmp)))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    meta = {"date": str(date.today()), "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
            "faiss": faiss.__version__, "dim": DIM, "exact_limit": faiss_index.EXACT_LIMIT,
            "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"Search benchmark, {meta['machine']}, faiss {meta['faiss']}, d={DIM}, {meta['date']}, "
          f"load average {meta['load_average'][0]} before, {meta['load_average'][1]} after\n")
    print("| vectors | exact p50 / p99 ms | exact, all threads p50 / p99 ms | IVF (nprobe) p50 / p99 ms | IVF recall@10 | HNSW32 p50 / p99 ms | HNSW recall@10 | engine uses | end to end p50 / p99 ms | cold start s | load plain / mmap s (exact) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['exact_ms_p50']:.2f} / {r['exact_ms_p99']:.2f} "
              f"| {r['exact_all_threads_ms_p50']:.2f} / {r['exact_all_threads_ms_p99']:.2f} | {r['ivf_ms_p50']:.2f} / {r['ivf_ms_p99']:.2f} ({r['ivf_nprobe']}) "
              f"| {r['ivf_recall_at_10']:.3f} | {r['hnsw_ms_p50']:.2f} / {r['hnsw_ms_p99']:.2f} | {r['hnsw_recall_at_10']:.3f} | {r['engine_index']} "
              f"| {r['e2e_ms_p50']:.1f} / {r['e2e_ms_p99']:.1f} | {r['cold_start_s']:.2f} | {r['exact_load_s']:.2f} / {r['exact_load_mmap_s']:.2f} |")


if __name__ == "__main__":
    main()
