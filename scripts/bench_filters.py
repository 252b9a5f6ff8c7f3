"""Filtered search against unfiltered search, and the three execution paths against each other.

For each size (100,000 and 1,000,000 vectors), a real index folder is filled through the
engine's code (scripts/bench_search.py's clustered vectors, catalog rows and FAISS file),
then every image gets synthetic photo metadata: a taken date spread evenly over ten years
and a camera model whose text holds tokens passing 0.1%, 1%, 10% and 50% of the images.
Metadata is independent of the vectors, so the nearest passing images are as far out as
they can be for that share.

Measured, for 200 single queries per filter (`--queries`):
- p50 / p99 latency of the engine's search (query.search_vectors: index, filter, catalog rows)
  with no filter and with date filters (indexed column) and camera filters (LIKE, no index)
  passing 0.1%, 1%, 10% and 50%;
- recall@10 against an exact filtered search (all passing vectors scored by brute force);
- which path the engine chose; and, for the thresholds, each path forced at each share.

    .venv/bin/python scripts/bench_filters.py [--sizes 100000 1000000] [--out bench-out/filters.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_search import DIM, clustered, fill_catalog  # noqa: E402

from retrieval import filters as filtered  # noqa: E402
from retrieval import index as faiss_index  # noqa: E402
from retrieval.filters import Filters  # noqa: E402
from retrieval.query import search_vectors  # noqa: E402
from retrieval.store import IndexStore  # noqa: E402

SHARES = [0.001, 0.01, 0.1, 0.5]
START = datetime(2015, 1, 1)
SPAN_DAYS = 3650


def add_metadata(store: IndexStore, n: int, seed: int) -> None:
    """Synthetic photo metadata on every row: an even spread of dates, and camera tokens by share."""
    rng = np.random.default_rng(seed)
    when = rng.random(n)
    cam = rng.random(n)
    rows = []
    for i in range(n):
        taken = (START + timedelta(days=SPAN_DAYS * float(when[i]))).strftime("%Y-%m-%dT%H:%M:%S")
        tokens = [f"p{share:g}" for share in SHARES if cam[i] < share]
        rows.append((taken, " ".join(tokens) or "other", i + 1))
    with store.catalog.transaction() as conn:
        conn.executemany(
            "UPDATE images SET taken = ?, taken_source = 'exif', camera_make = 'Bench', camera_model = ? WHERE id = ?",
            rows,
        )
    store.catalog.refresh_cameras()  # what publishing does after an index run
    store.catalog.db.execute("ANALYZE")


def date_filter(share: float) -> Filters:
    """Taken after the date that leaves `share` of the span."""
    cut = START + timedelta(days=SPAN_DAYS * (1 - share))
    return Filters.parse(after=cut.strftime("%Y-%m-%dT%H:%M:%S"))


def camera_filter(share: float) -> Filters:
    return Filters.parse(camera=f"p{share:g}")


def exact_filtered(store: IndexStore, data: np.ndarray, queries: np.ndarray, filters: Filters, k: int = 10) -> list[list[int]]:
    """The true top k among the passing images, for each query (brute force over their vectors)."""
    sql, args = filtered.where(filters.clauses(store.catalog))
    ids = np.fromiter((r[0] for r in store.catalog.db.execute(f"SELECT id FROM images WHERE {sql}", args)), np.int64)
    scores = data[ids - 1] @ queries.T
    top = np.argsort(-scores, axis=0, kind="stable")[:k]
    return [ids[top[:, j]].tolist() for j in range(len(queries))]


def timed(store: IndexStore, queries: np.ndarray, filters: Filters | None) -> tuple[float, float, list[list[int]]]:
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        hits = search_vectors(store, q[None], 10, filters=filters)[0]
        times.append(time.perf_counter() - t)
        found.append([h.id for h in hits])
    ms = np.array(times) * 1000
    return float(np.median(ms)), float(np.percentile(ms, 99)), found


def forced(store: IndexStore, queries: np.ndarray, filters: Filters, plan: filtered.Plan) -> tuple[float, list[list[int]]]:
    """p50 ms of the filtered search alone (index read, filter, ranking) with a forced path."""
    catalog = store.catalog
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        with catalog.snapshot():
            index = faiss_index.read(store.faiss_path("images", catalog.generation), mmap=True)
            _, ids = filtered.search(catalog, index, q[None], 10, filters, factory=catalog.get_meta("index_factory"), plan=plan)
        times.append(time.perf_counter() - t)
        found.append([int(i) for i in ids[0] if i >= 0])
    return float(np.median(np.array(times) * 1000)), found


def recall(truth: list[list[int]], got: list[list[int]]) -> float:
    hits = sum(len(set(t) & set(g)) for t, g in zip(truth, got))
    return round(hits / max(sum(len(t) for t in truth), 1), 4)


def bench_size(n: int, centers: np.ndarray, work: Path, n_queries: int) -> dict:
    started = time.perf_counter()
    data = clustered(n, DIM, seed=n, centers=centers)
    factory = faiss_index.factory_for(n)
    index, info = faiss_index.build(np.arange(1, n + 1, dtype=np.int64), data, factory=factory)
    store = fill_catalog(work / f"idx-{n}", data, index)
    store.catalog.set_meta(index_nprobe=info.nprobe, index_recall_at_10=info.recall_at_10)
    del index
    add_metadata(store, n, seed=n + 1)
    row: dict = {"n": n, "index": factory, "nprobe": info.nprobe, "setup_s": round(time.perf_counter() - started, 1)}
    queries = clustered(n_queries, DIM, seed=7, centers=centers)
    timed(store, queries[:5], None)  # warm the page cache
    row["unfiltered_ms_p50"], row["unfiltered_ms_p99"], _ = timed(store, queries, None)
    row["filters"] = []
    for kind, make in (("date", date_filter), ("camera", camera_filter)):
        for share in SHARES:
            f = make(share)
            plan = filtered.Plan()
            forced(store, queries[:1], f, plan)
            p50, p99, got = timed(store, queries, f)
            truth = exact_filtered(store, data, queries, f)
            entry = {
                "filter": kind, "share": share, "path": plan.chosen, "ms_p50": round(p50, 2), "ms_p99": round(p99, 2),
                "x_unfiltered_p50": round(p50 / row["unfiltered_ms_p50"], 2), "recall_at_10": recall(truth, got),
                "load_1min": os.getloadavg()[0],
            }
            row["filters"].append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)
    # The thresholds: every path forced at each share of a date filter (fewer queries: the slow ones are slow).
    row["paths"] = []
    few = queries[: max(10, n_queries // 10)]
    for share in [0.001, 0.005, 0.01, 0.05, 0.1, 0.5]:
        f = date_filter(share)
        truth = exact_filtered(store, data, few, f)
        entry = {"share": share, "passing": int(share * n)}
        for name, plan in (("exact", filtered.Plan(exact_max=n, restrict_max=n)),
                           ("restrict", filtered.Plan(exact_max=0, restrict_max=n)),
                           ("overfetch", filtered.Plan(exact_max=0, restrict_max=0))):
            if name == "exact" and share * n > 50_000:
                continue  # reading that many vectors from SQLite takes seconds per query
            ms, got = forced(store, few, f, plan)
            entry[f"{name}_ms_p50"], entry[f"{name}_recall"] = round(ms, 2), recall(truth, got)
        entry["load_1min"] = os.getloadavg()[0]
        row["paths"].append(entry)
        print(json.dumps(entry), file=sys.stderr, flush=True)
    store.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", default="bench-out/filters.json")
    args = parser.parse_args()
    report = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_1min_start": os.getloadavg()[0], "sizes": [],
    }
    # The same centres as scripts/bench_search.py.
    centers = np.random.default_rng(0).normal(0, 1, (1000, DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for n in args.sizes:
            report["sizes"].append(bench_size(n, centers, Path(tmp), args.queries))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2))
    report["load_average_1min_end"] = os.getloadavg()[0]
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
