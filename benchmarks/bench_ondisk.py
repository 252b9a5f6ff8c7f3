"""An image index larger than memory: the on-disk IVF index at 10 million vectors, in one run.

Fills a real catalog with N synthetic clustered 384-d vectors (bench_search's generator,
so 10M take 15 GB of float32 blobs in SQLite), computing the exact top 10 of the queries by a
streamed brute-force pass while it writes. Then, each step in a child process of its own so
that its peak memory is its own:
- builds the on-disk index from the catalog with the engine's function (retrieval.ann.ondisk.build):
  sample, training, shards, FAISS's merge_ondisk, nprobe tuning; time, peak anonymous memory
  (what must fit in RAM) and peak resident set (which also counts mapped file pages);
- at sizes up to --memory-max, builds the engine's in-memory 8-bit index (IVF,SQ8, flat
  quantizer, index.build_streamed) on the same catalog, for comparison;
- finds the exact top 10 of real text queries (the dev set's 330 captions, encoded by the
  `default` aligner) by a streamed pass over the catalog: queries far from the data, where
  the 200 clustered queries of the fill lie near it;
- searches both sets one query at a time: through the engine (query.search_vectors: snapshot,
  open the index, search, exact re-scoring from the catalog, rows), and with the index opened
  once; for the on-disk index, and for the same index with its lists copied into memory (what
  an in-memory 8-bit index of the same lists costs); recall@10 against the exact top 10.
The catalog's model is "bench", so the build has no aligner: it tunes on near queries and on
the model-free stand-in for text queries (retrieval/ann/tuning_queries.py); the text queries measure
how well that stand-in did.
Searches run with a warm page cache (the machine is shared; dropping caches would hit others).

    .venv/bin/python -m benchmarks.bench_ondisk [--n 10000000] [--work bench-out/ondisk] [--out bench-out/ondisk.json]

Steps already done in --work are not repeated (a run can be resumed); --clean removes the work folder at the end.
"""

from __future__ import annotations

import os

# OpenMP threads that sleep while they wait instead of spinning. On this shared 2-core machine
# (load average about 20 while this was written) FAISS's default spinning made training 4x
# slower: 50,000 vectors into 894 lists took 95 s with 2 spinning threads, 32 s with one
# thread, 22 s with 2 passive ones, 1.4 s on a quiet machine. Read by libgomp when faiss
# loads, so set before the import; the run's metadata records it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import logging  # noqa: E402
import resource
import shutil
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import click
import faiss
import numpy as np

from benchmarks import harness
from benchmarks.harness import DIM, clustered, command, dev_captions, insert_rows, load, machine, percentiles
from retrieval import ann
from retrieval.ann import ondisk
from retrieval.search.query import search_vectors
from retrieval.search.searcher import Searcher
from retrieval.storage.store import IndexStore

log = logging.getLogger("bench_ondisk")
FILL_CHUNK = 250_000
K = 10


class MemoryWatch:
    """Peak anonymous memory of this process, sampled (the kernel keeps no high-water mark for it)."""

    def __init__(self, every: float = 0.2):
        self.peak, self.every, self._stop = 0, every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_kb("RssAnon"))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def report(self) -> dict:
        return {"peak_anon_mb": round(self.peak / 1024), "peak_rss_mb": round(status_kb("VmHWM") / 1024)}


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def centers() -> np.ndarray:
    return harness.centers(1000, DIM)


# -- steps ------------------------------------------------------------------------
def fill(work: Path, n: int, n_queries: int) -> dict:
    """The catalog, and the exact top 10 of the queries by a brute-force pass over the same chunks."""
    store = IndexStore.open(work / "idx", create=True)
    store.catalog.set_meta(model="bench", model_identity="bench", dim=DIM)
    queries = clustered(n_queries, DIM, seed=7, centers=centers())
    best_s = np.full((n_queries, 0), -np.inf, np.float32)
    best_i = np.zeros((n_queries, 0), np.int64)
    started = time.monotonic()
    for first in range(0, n, FILL_CHUNK):
        part = clustered(min(FILL_CHUNK, n - first), DIM, seed=n + first, centers=centers())
        insert_rows(store, part, first)
        scores = queries @ part.T
        top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
        best_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], axis=1)
        best_i = np.concatenate([best_i, top + first + 1], axis=1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :K]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
        done = first + len(part)
        rate = done / (time.monotonic() - started)
        log.info("filled %d / %d (%.0f rows/s, %.0f s left)", done, n, rate, (n - done) / rate)
    store.catalog.set_meta(next_id=n + 1)
    store.close()
    np.save(work / "queries.npy", queries)
    np.save(work / "truth.npy", best_i)
    return {"fill_s": round(time.monotonic() - started), "catalog_mb": round((work / "idx" / "catalog.db").stat().st_size / 2**20)}


def text_truth(work: Path) -> dict:
    """Real text queries (the dev set's captions through `default`) and their exact top 10, one pass."""
    from retrieval.aligners import load_aligner

    texts = dev_captions()
    queries = np.ascontiguousarray(load_aligner("default").encode_texts(texts), np.float32)
    store = IndexStore.open(work / "idx")
    started = time.monotonic()
    truth = ann.exact_top_k(store.catalog.image_vectors, queries, K)
    store.close()
    np.save(work / "text_queries.npy", queries)
    np.save(work / "text_truth.npy", truth)
    return {"text_queries": len(texts), "truth_s": round(time.monotonic() - started)}


def build_ondisk(work: Path) -> dict:
    store = IndexStore.open(work / "idx")
    n, path = store.catalog.count("images"), store.faiss_path("images", 1)
    started = time.monotonic()
    with MemoryWatch() as mem:
        # As the engine calls it (retrieval.ingest.publish._write_ondisk_index).
        _, info = ondisk.build(store.catalog.image_vectors, n, DIM, path, sample=ondisk.catalog_sample(store.catalog))
    out = {"build_s": round(time.monotonic() - started), **mem.report(), "factory": info.factory,
           "nprobe": info.nprobe, "rerank": info.rerank, "tuned_recall_at_10": info.recall_at_10,
           "tuned_recall_by_queries": info.recall_by_queries, "tuned_on": info.tuned_on,
           "faiss_mb": round(path.stat().st_size / 2**20), "ivfdata_mb": round(ondisk.lists_path(path).stat().st_size / 2**20)}
    store.close()
    return out


def build_memory(work: Path) -> dict:
    """The engine's in-memory 8-bit index (what it builds when the codes fit), same catalog."""
    store = IndexStore.open(work / "idx")
    n, path = store.catalog.count("images"), store.faiss_path("images", 2)
    factory = f"IVF{int(4 * np.sqrt(n))},SQ8"
    started = time.monotonic()
    with MemoryWatch() as mem:
        index, info = ann.build_streamed(store.catalog.image_vectors, n, DIM, factory=factory)
        ann.write(index, path)
        del index
    store.close()
    return {"build_s": round(time.monotonic() - started), **mem.report(), "factory": factory,
            "nprobe": info.nprobe, "rerank": info.rerank, "tuned_recall_at_10": info.recall_at_10,
            "tuned_recall_by_queries": info.recall_by_queries, "faiss_mb": round(path.stat().st_size / 2**20)}


def timed(queries: np.ndarray, truth: np.ndarray, one) -> dict:
    one(queries[0])  # warm up
    times, got = [], []
    for q in queries:
        t = time.perf_counter()
        ids = one(q)
        times.append(time.perf_counter() - t)
        got.append(list(ids) + [-1] * (K - len(ids)))
    ms = percentiles(np.array(times) * 1000)
    return {"ms_p50": round(ms["p50"], 2), "ms_p99": round(ms["p99"], 2),
            "recall_at_10": round(ann.recall_at_k(truth, np.array(got)), 4)}


def search(work: Path, generation: int, in_memory: bool) -> dict:
    """Single queries through the engine (a fresh open per query) and with the index opened once."""
    store = IndexStore.open(work / "idx")
    sets = {"near": (np.load(work / "queries.npy"), np.load(work / "truth.npy"))}
    if (work / "text_truth.npy").exists():
        sets["text"] = (np.load(work / "text_queries.npy"), np.load(work / "text_truth.npy"))
    path = store.faiss_path("images", generation)
    index = ann.read(path, mmap=True)
    factory = ondisk.factory_for(store.catalog.count("images")) if generation == 1 else f"IVF{faiss.extract_index_ivf(index).nlist},SQ8"
    # The width the build tuned, as the engine's publishing records it (retrieval.ingest.publish._tuning_meta).
    rerank = json.loads((work / ("build-ondisk.json" if generation == 1 else "build-memory.json")).read_text()).get("rerank")
    store.catalog.set_meta(generation=generation, index_factory=factory, index_rerank=rerank)
    out: dict = {"rerank": rerank}
    with MemoryWatch() as mem:
        if not in_memory:
            searcher = Searcher()  # as a long-lived caller searches: the index kept loaded
            for name, (queries, truth) in sets.items():
                out[f"engine_{name}"] = timed(
                    queries, truth, lambda q: [h.id for h in search_vectors(store, q[None], K, searcher=searcher)[0]]
                )
        else:
            # The same lists copied into RAM: an in-memory 8-bit index of exactly these codes.
            ivf = faiss.extract_index_ivf(index)
            lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
            started = time.monotonic()
            source = ivf.invlists
            for number in range(ivf.nlist):
                size = source.list_size(number)
                if size:
                    lists.add_entries(number, size, source.get_ids(number), source.get_codes(number))
            ivf.replace_invlists(lists, True)
            lists.this.disown()
            out["load_s"] = round(time.monotonic() - started)
        lookup = store.catalog.image_vectors_by_id
        for name, (queries, truth) in sets.items():
            out[f"opened_once_{name}"] = timed(queries, truth, lambda q: ann.search_ranked(
                index, q[None], K, factory=factory, lookup=lookup, rerank=rerank)[1][0].tolist())
    out.update(mem.report())
    store.close()
    return out


# -- the run ------------------------------------------------------------------------
def child(step: str, work: Path, *args: str) -> dict:
    """Run `step` in a fresh process (its own peak memory); its result comes back as JSON in a file."""
    result = work / f"{step}{'-' + '-'.join(args) if args else ''}.json"
    if result.exists():
        log.info("%s: done before, kept", result.name)
        return json.loads(result.read_text())
    before = load()
    subprocess.run([sys.executable, "-m", "benchmarks.bench_ondisk", "--step", step, "--work", str(work),
                    *(part for arg in args for part in ("--step-arg", arg))], check=True)
    data = json.loads(result.read_text())
    data["load_average"] = [round(before, 1), round(load(), 1)]
    result.write_text(json.dumps(data))
    log.info("%s: %s", step, json.dumps(data))
    return data


def run_step(step: str, work: Path, args: tuple[str, ...]) -> None:
    steps = {"build-ondisk": lambda: build_ondisk(work), "build-memory": lambda: build_memory(work),
             "text-truth": lambda: text_truth(work),
             "search": lambda: search(work, int(args[0]), args[1] == "ram")}
    data = steps[step]()
    data["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    (work / f"{step}{'-' + '-'.join(args) if args else ''}.json").write_text(json.dumps(data))


@command(out="bench-out/ondisk.json", quick={"n": 20_000, "queries": 20})
@click.option("--n", type=int, default=10_000_000, show_default=True, help="Vectors in the catalog.")
@click.option("--queries", type=int, default=200, show_default=True, help="Clustered queries near the data.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-out/ondisk"), show_default=True,
              help="Folder of the catalog, indexes and finished steps (a run can be resumed).")
@click.option("--memory-max", type=int, default=2_000_000, show_default=True,
              help="Largest size at which the engine's in-memory IVF,SQ8 build (flat k-means) is also run.")
@click.option("--clean", is_flag=True, help="Delete the work folder (catalog included) at the end.")
@click.option("--step", hidden=True, help="One step, in a child process of its own.")
@click.option("--step-arg", "step_args", multiple=True, hidden=True)
def main(n: int, queries: int, work: Path, memory_max: int, clean: bool, step: str | None, step_args: tuple[str, ...],
         out: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if step:
        run_step(step, work, step_args)
        return
    work = work / str(n)
    work.mkdir(parents=True, exist_ok=True)
    load_before = load()
    rows: dict = {}
    fill_file = work / "fill.json"
    if not fill_file.exists():
        fill_file.write_text(json.dumps(fill(work, n, queries)))
    rows["fill"] = json.loads(fill_file.read_text())
    rows["ondisk_build"] = child("build-ondisk", work)
    rows["text_truth"] = child("text-truth", work)
    rows["ondisk_search"] = child("search", work, "1", "disk")
    rows["same_lists_in_ram_search"] = child("search", work, "1", "ram")
    if n <= memory_max:
        rows["memory_build"] = child("build-memory", work)
        rows["memory_search"] = child("search", work, "2", "disk")
    meta = {"date": str(date.today()), "machine": f"{harness.summary()}, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB", "faiss": faiss.__version__,
            "n": n, "dim": DIM, "queries": queries, "rerank_least": ann.DEFAULT.rerank_factor,
            "memory_limit_default_mb": ann.memory_limit_default() // 2**20,
            "load_average": [round(load_before, 1), round(load(), 1)],
            "self_cpu_s": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime), "host": machine()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if clean:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
