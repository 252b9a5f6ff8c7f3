"""Where recall@10 of the on-disk index type is lost: list assignment, lists probed, or re-scoring width.

Builds, in memory and in one run, the engine's on-disk index type (``IVF{4 sqrt n}_HNSW32,SQ8``,
trained by ``retrieval.ann.ondisk.train``) over N of bench_search's clustered 384-d vectors,
twice: vectors assigned to lists with the HNSW graph's search width 16 (FAISS's default, the
first 10M build) and 64 (the engine's HNSW_EF). For each it reports:
- the share of vectors that sit in a list other than their nearest centroid's;
- recall@10 against exact search, by nprobe and by candidates re-scored per result (4, 8, 16,
  32 x k), for three query sets: near queries (the benchmark's clustered queries), real text
  queries (the dev set's captions through `default`) and the model-free stand-in for text
  queries (retrieval/ann/tuning_queries.py);
- the same at "every list" with the graph's search width left at 64, which is what the first
  10M build searched when its nprobe was every list.

    .venv/bin/python -m benchmarks.bench_ondisk_recall [--n 1000000] [--out bench-out/ondisk-recall.json]
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import date
from pathlib import Path

import click
import faiss
import numpy as np

from benchmarks import harness
from benchmarks.harness import DIM, clustered, command, dev_captions, load, machine
from retrieval import ann
from retrieval.ann import ondisk, tuning_queries

WIDTHS = (4, 8, 16, 32)
K = 10


def centers() -> np.ndarray:
    return harness.centers(1000, DIM)


def text_queries() -> np.ndarray:
    from retrieval.aligners import load_aligner

    return np.ascontiguousarray(load_aligner("default").encode_texts(dev_captions()), np.float32)


def grid(index, hnsw, sets: dict, truths: dict, nprobes: list[int], cap_ef: int | None = None) -> dict:
    """Recall@10 by query set, nprobe and width; `cap_ef` keeps the graph's width fixed (else = nprobe)."""
    out: dict = {}
    for nprobe in nprobes:
        index.nprobe = nprobe
        hnsw.efSearch = cap_ef or max(64, nprobe)
        row = {}
        for name, q in sets.items():
            t = time.perf_counter()
            got = index.search(q, K * WIDTHS[-1])[1]
            row[name] = {w: round(ann.recall_at_k(truths[name], got[:, : K * w]), 4) for w in WIDTHS}
            row[name]["search_s"] = round(time.perf_counter() - t, 1)
        out[nprobe] = row
        logging.info("nprobe %d%s: %s", nprobe, f" (graph width {cap_ef})" if cap_ef else "", json.dumps(row))
    return out


@command(out="bench-out/ondisk-recall.json", quick={"n": 100_000})
@click.option("--n", type=int, default=1_000_000, show_default=True, help="Vectors in the index (100,000 at least).")
def main(n: int, out: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    load_before = load()
    c = centers()
    data = np.concatenate([clustered(min(250_000, n - i), DIM, seed=n + i, centers=c) for i in range(0, n, 250_000)])
    ids = np.arange(1, n + 1, dtype=np.int64)
    nlist = ondisk.nlist_for(n)
    sample = data[np.random.default_rng(0).choice(n, max(100_000, 20 * nlist), replace=False)]
    t = time.perf_counter()
    trained = ondisk.train(sample, nlist)
    train_s = time.perf_counter() - t
    sets = {"near": clustered(200, DIM, seed=7, centers=c), "text": text_queries(), "stand_in": tuning_queries.stand_in(DIM)}
    exact = faiss.IndexFlatIP(DIM)
    exact.add(data)
    truths = {name: ids[exact.search(q, K)[1]] for name, q in sets.items()}
    centroids = faiss.downcast_index(trained.quantizer).storage.reconstruct_n(0, nlist)
    flat = faiss.IndexFlatIP(DIM)
    flat.add(centroids)
    check = data[np.random.default_rng(3).choice(n, 20_000, replace=False)]
    nearest = flat.search(check, 1)[1][:, 0]
    del exact
    nprobes = [4**i for i in range(1, 10) if 4**i < nlist] + [nlist]
    results: dict = {}
    for ef in (16, 64):
        index = faiss.deserialize_index(faiss.serialize_index(trained))
        hnsw = faiss.downcast_index(index.quantizer).hnsw
        hnsw.efSearch = ef
        hnsw_assigned = index.quantizer.search(check, 1)[1][:, 0]
        t = time.perf_counter()
        index.add_with_ids(data, ids)
        results[f"assign_ef{ef}"] = {
            "misassigned_share": round(float(np.mean(hnsw_assigned != nearest)), 4),
            "add_s": round(time.perf_counter() - t),
            "by_nprobe": grid(index, hnsw, sets, truths, nprobes),
            "every_list_graph_width_64": grid(index, hnsw, sets, truths, [nlist], cap_ef=64)[nlist],
        }
        del index
    meta = {"date": str(date.today()), "n": n, "dim": DIM, "nlist": nlist, "faiss": faiss.__version__,
            "train_s": round(train_s), "queries": {k: len(v) for k, v in sets.items()},
            "load_average": [round(load_before, 1), round(load(), 1)], "host": machine()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
