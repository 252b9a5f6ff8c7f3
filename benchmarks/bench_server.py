"""Serving speed at 100,000 vectors, in one run: `retrieval serve` over HTTP against the Python API.

On one index of 100,000 vectors (the synthetic clustered 384-d vectors of bench_search,
filled into a real catalog and FAISS index with the harness's helpers, bound to the real
`default` aligner whose text encoder embeds every query), it measures:

1. In process (retrieval.api.Index), the step-by-step gains of the warm-query fast paths,
   each step on top of the previous one, interleaved query by query so machine load hits
   every step alike: the plain path (numpy BLAS on its default threads, the FAISS file read
   on every search, no text cache, exact search); one BLAS thread for the text encoder; the
   FAISS index kept loaded; its 8-bit copy scanned first (retrieval/ann/quickscan.py); a repeated
   query answered from the text-vector cache; and, as the alternative to the 8-bit copy, an
   IVF index. The IVF's nprobe is the smallest power of two whose recall@10 against exact
   search reaches 0.99 on 200 text queries; its recall and the 8-bit copy's are measured
   again on the timed queries (real text queries of the `default` aligner), and the engine's
   own IVF tuning (on queries near the data) is reported beside them. Then where a query's
   time goes: the encoder alone, and each way of searching its vector.
2. Over HTTP: a real `retrieval serve` process on 127.0.0.1 (started here, stopped at the
   end), one client: p50 / p99 of a warm text query (new texts, and repeated ones) on the
   exact and the IVF index, against the same queries in process.
3. Throughput with 1, 8 and 64 concurrent clients, every request a new text (no cache hits),
   with micro-batching (the server's default window) and without (window 0): /api/search on
   both indexes, and clip-retrieval's /knn-service on the exact one.
Clients (2 and 3) are benchmarks/loadgen.py, raw asyncio HTTP in a process of its own, the same
code for 1, 8 and 64 clients; its CPU per request is reported, since it shares the cores
with the server. One latency row repeats the earlier runs' httpx client for comparison.
4. Thumbnails: cold (made on the first request) and cached, over a small real index of
   generated full-size JPEGs (or an existing index: --thumb-index).
Every response is checked: errors are counted per phase (the target is none). The 1-minute
load average is recorded before and after each phase, since other jobs share the machine.

    .venv/bin/python -m benchmarks.bench_server [--n 100000] [--out bench-out/server.json]
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import click
import faiss
import httpx
import numpy as np

from benchmarks.harness import DIM, centers, clustered, command, fill_catalog, load, machine, note, percentiles, summary
from retrieval import ann
from retrieval.api import build_index, open_index
from retrieval.search.query import search_vectors
from retrieval.search.searcher import Searcher
from retrieval.search.settings import SearchSettings

ADJECTIVES = ["red", "old", "small", "wet", "bright", "wooden", "busy", "quiet", "snowy", "striped", "broken", "tall"]
NOUNS = ["dog", "bicycle", "boat", "house", "bird", "car", "tree", "bridge", "horse", "train", "kitchen", "clock"]
PLACES = ["on a beach", "in a city at night", "near a river", "in the mountains", "at a market", "in the rain",
          "on a table", "in a garden", "by the sea", "in a forest", "on a street", "in the snow"]


class Texts:
    """Distinct query texts, never repeated within a run: every request misses the text cache."""

    def __init__(self):
        self.i = 0

    def take(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            i = self.i
            self.i += 1
            a, b, c = i % 12, (i // 12) % 12, (i // 144) % 12
            out.append(f"a photo of a {ADJECTIVES[a]} {NOUNS[b]} {PLACES[c]}" + (f", take {i // 1728}" if i >= 1728 else ""))
        return out


#: The first few failed responses, kept for the report.
ERRORS: list[str] = []


def failed(r: httpx.Response, results: int | None = None) -> bool:
    """Whether a response is not the expected one (another status, or too few results)."""
    bad = r.status_code != 200 or (results is not None and len(r.json().get("results", [])) != results)
    if bad and len(ERRORS) < 5:
        ERRORS.append(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:200]}")
    return bad


def pct(ms: list[float]) -> dict:
    return {**{k: round(v, 2) for k, v in percentiles(ms).items()}, "n": len(ms)}


# -- the indexes ---------------------------------------------------------------------------
def publish_meta(store, **meta) -> None:
    with store.catalog.transaction():
        store.catalog.set_meta(**meta)


def recall_by_nprobe(ivf, exact, queries: np.ndarray, also: int) -> dict[int, float]:
    """Recall@10 of `ivf` against exact search at nprobe `also` and at each power of two until it reaches 0.99."""
    _, truth = ann.search(exact, queries, 10)

    def recall(nprobe: int) -> float:
        ivf.nprobe = nprobe
        return ann.recall_at_k(truth, ann.search(ivf, queries, 10)[1])

    out, nprobe = {also: recall(also)}, 1
    while nprobe < ivf.nlist:
        out[nprobe] = recall(nprobe)
        if out[nprobe] >= ann.DEFAULT.target_recall:
            return out
        nprobe *= 2
    out[ivf.nlist] = recall(ivf.nlist)
    return out


def make_vector_indexes(work: Path, n: int, tuning_texts: list[str]) -> dict:
    """Two index folders over the same catalog rows: exact (IDMap2,Flat) and IVF.

    The engine tunes an IVF's nprobe on stored vectors plus a little noise (index.tune_nprobe):
    queries close to the data. Text queries lie much farther from the images they match
    (cosine about 0.2 here), so the IVF served here gets the nprobe that reaches recall@10
    0.99 on `tuning_texts` (encoded by `default`), and both recalls are reported.
    """
    from retrieval.aligners import load_aligner

    points = centers()
    data = clustered(n, DIM, seed=n, centers=points)
    ids = np.arange(1, n + 1, dtype=np.int64)
    exact, _ = ann.build(ids, data, factory="IDMap2,Flat")
    store = fill_catalog(work / "exact", data, exact)
    publish_meta(store, index_factory="IDMap2,Flat")
    store.close()
    t = time.perf_counter()
    factory = f"IVF{int(4 * np.sqrt(n))},Flat"
    ivf, info = ann.build(ids, data, factory=factory)
    build_s = time.perf_counter() - t
    near = clustered(200, DIM, seed=7, centers=points)
    near_recall = ann.recall_at_k(ann.search(exact, near, 10)[1], ann.search(ivf, near, 10)[1])
    by_nprobe = recall_by_nprobe(ivf, exact, load_aligner("default").encode_texts(tuning_texts), info.nprobe)
    ivf.nprobe = min(k for k, v in by_nprobe.items() if v >= ann.DEFAULT.target_recall or k == ivf.nlist)
    (work / "ivf").mkdir()
    shutil.copyfile(work / "exact" / "catalog.db", work / "ivf" / "catalog.db")
    ann.write(ivf, work / "ivf" / "images-1.faiss")
    store = open_index(str(work / "ivf")).store
    publish_meta(store, index_factory=factory, index_nprobe=ivf.nprobe, index_recall_at_10=by_nprobe[ivf.nprobe])
    store.close()
    return {"factory": factory, "build_s": round(build_s, 1), "engine_nprobe": info.nprobe,
            "engine_recall_at_10_tuning": info.recall_at_10, "engine_recall_at_10_near_queries": near_recall,
            "engine_recall_at_10_text_queries": by_nprobe[info.nprobe], "text_nprobe": ivf.nprobe,
            "text_recall_at_10_by_nprobe": by_nprobe, "engine_factory_at_n": ann.factory_for(n, DIM)}


def make_photo_index(work: Path, count: int) -> Path:
    """`count` full-size JPEGs (2000x1500, made from scikit-image's sample photos), indexed with `default`."""
    import skimage
    from PIL import Image, ImageOps

    sources = [Path(skimage.__file__).parent / "data" / name
               for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")]
    folder = work / "photos-src"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(count):
        im = Image.open(sources[i % len(sources)]).convert("RGB")
        w, h = im.size
        left, top = int(rng.integers(0, w // 5)), int(rng.integers(0, h // 5))
        im = im.crop((left, top, left + w * 4 // 5, top + h * 4 // 5)).resize((2000, 1500), Image.BICUBIC)
        if i % 2:
            im = ImageOps.mirror(im)
        tint = np.clip(np.asarray(im, np.float32) * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.uint8)
        Image.fromarray(tint).save(folder / f"photo{i:04d}.jpg", quality=90)
    build_index([folder], index=str(work / "photos"))
    return work / "photos"


# -- in process ------------------------------------------------------------------------------
STEPS = ["plain path", "+ one BLAS thread (text encoder)", "+ FAISS index kept loaded",
         "+ 8-bit copy of the exact index scanned first, 10 x k candidates re-scored exactly",
         "+ text-vector cache (repeated query)",
         "instead of the 8-bit copy: IVF index (nprobe for recall@10 0.99 on text queries; not the engine's choice)"]
#: Step -> (index searched, one BLAS thread, index kept loaded, 8-bit copy, text cache).
STEP_SETTINGS = {0: ("exact", False, False, False, False), 1: ("exact", True, False, False, False),
                 2: ("exact", True, True, False, False), 3: ("exact", True, True, True, False),
                 4: ("exact", True, True, True, True), 5: ("ivf", True, True, False, False)}


def step_searchers() -> dict[int, Searcher]:
    """Each step's searcher: what it keeps between searches, as its settings say (the text cache on or off)."""
    return {step: Searcher(SearchSettings(keep_loaded=kept, quick_scan=quick, text_cache_size=1024 if cache else 0))
            for step, (_, _, kept, quick, cache) in STEP_SETTINGS.items()}


def set_step(step: int, indexes: dict, searchers: dict[int, Searcher]) -> tuple[str, bool]:
    """Search the step's index with the step's searcher (each keeps its own loaded index and copy)."""
    name, one_thread, _, _, cache = STEP_SETTINGS[step]
    indexes[name].aligner.text.one_blas_thread = one_thread  # the default aligner's text encoder
    indexes[name].searcher = searchers[step]
    return name, cache


def in_process(work: Path, texts: list[str]) -> dict:
    indexes = {"exact": open_index(str(work / "exact")), "ivf": open_index(str(work / "ivf"))}
    searchers = step_searchers()
    for step in STEP_SETTINGS:
        name, _ = set_step(step, indexes, searchers)
        for _ in range(2):  # the second search makes the 8-bit copy
            indexes[name].search("warm up", k=10)
    times: dict[int, list[float]] = {s: [] for s in range(len(STEPS))}
    cpu = dict.fromkeys(range(len(STEPS)), 0.0)
    hits: dict[int, list[list[int]]] = {2: [], 3: [], 5: []}
    parts: dict[str, list[float]] = {"encode": [], "exact scan": [], "8-bit scan + re-score": [], "IVF scan": []}
    before = load()
    for text in texts:
        for step in range(len(STEPS)):
            name, cache = set_step(step, indexes, searchers)
            idx = indexes[name]
            if cache:
                idx.search(text, k=10)  # seen once before: the timed search below is a cache hit
            t, c = time.perf_counter(), time.process_time()
            found = idx.search(text, k=10)
            times[step].append((time.perf_counter() - t) * 1000)
            cpu[step] += time.process_time() - c
            if step in hits:
                hits[step].append([h.id for h in found])
        # Where the time goes: the encoder alone, then each way of searching its vector.
        set_step(3, indexes, searchers)
        t = time.perf_counter()
        vector = indexes["exact"].aligner.encode_texts([text])
        parts["encode"].append((time.perf_counter() - t) * 1000)
        # The searchers of steps 2 (kept exact index), 3 (and its 8-bit copy) and 5 (kept IVF index).
        for part, name, step in (("exact scan", "exact", 2), ("8-bit scan + re-score", "exact", 3), ("IVF scan", "ivf", 5)):
            t = time.perf_counter()
            search_vectors(indexes[name].store, vector, 10, searcher=searchers[step])
            parts[part].append((time.perf_counter() - t) * 1000)
    set_step(4, indexes, searchers)  # the engine's defaults again
    for idx in indexes.values():
        idx.close()
    truth = np.array(hits[2])
    return {"steps": [{"step": STEPS[s], **pct(times[s]), "cpu_ms": round(cpu[s] * 1000 / len(texts), 2)}
                      for s in range(len(STEPS))],
            "parts": {k: pct(v) for k, v in parts.items()},
            "recall_at_10_text_queries": ann.recall_at_k(truth, np.array(hits[5])),
            "recall_at_10_text_queries_8bit": ann.recall_at_k(truth, np.array(hits[3])),
            "load": [before, load()]}


def in_process_plain(work: Path, name: str, texts: list[str], repeat: bool) -> dict:
    """The engine's path as it now is (every fast path on), for comparison with HTTP."""
    idx = open_index(str(work / name))
    for _ in range(2):  # the second search makes the 8-bit copy of an exact index, as the server's warm-up does
        idx.search("warm up", k=10)
    times, cpu = [], 0.0
    for text in texts:
        if repeat:
            idx.search(text, k=10)
        t, c = time.perf_counter(), time.process_time()
        idx.search(text, k=10)
        times.append((time.perf_counter() - t) * 1000)
        cpu += time.process_time() - c
    idx.close()
    return {**pct(times), "cpu_ms": round(cpu * 1000 / len(texts), 2)}


# -- the server ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, proc: subprocess.Popen, log: Path, seconds: float = 300) -> None:
    """Wait until the server at `base` answers /api/health, or exit naming its log."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not answer within {seconds:g} s; see {log}")


class Server:
    """`retrieval serve` in a child process on 127.0.0.1."""

    def __init__(self, indexes: list[Path], window_ms: float, log: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "retrieval", "serve", "--port", str(self.port), "--batch-window-ms", str(window_ms)]
        for index in indexes:
            cmd += ["--index", str(index)]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(self.base, self.proc, log, seconds=120)
        except SystemExit:
            self.stop()
            raise

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (user + system, every thread)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def http_sequential(server: Server, index: str, texts: list[str], repeat: bool) -> dict:
    """One httpx client, one request at a time (the client of the runs before 2026-12-01 23:50)."""
    errors, times, cpu = 0, [], 0.0
    with httpx.Client(base_url=server.base, timeout=30) as client:
        client.get("/api/search", params={"q": "warm up", "index": index, "k": 10})
        for text in texts:
            params = {"q": text, "index": index, "k": 10}
            if repeat:
                client.get("/api/search", params=params)
            t, c = time.perf_counter(), server.cpu_seconds()
            r = client.get("/api/search", params=params)
            times.append((time.perf_counter() - t) * 1000)
            cpu += server.cpu_seconds() - c
            errors += failed(r, 10)
    # The server's CPU clock ticks in 10 ms steps: summed over the queries it still averages right.
    return {**pct(times), "cpu_ms": round(cpu * 1000 / len(texts), 2), "errors": errors}


def loadgen(server: Server, index: str, texts: list[str], clients: int, repeat: bool = False, route: str = "search") -> dict:
    """Run benchmarks/loadgen.py (raw asyncio HTTP, its own process) against the server; its figures
    plus the server's CPU per request, summed over the run. With `repeat`, every text is sent
    once first (a run of its own), so each timed request is a text-cache hit. `route`: "search"
    (/api/search) or "knn" (clip-retrieval's /knn-service)."""
    if repeat:
        loadgen(server, index, texts, clients, route=route)
    spec = json.dumps({"port": server.port, "index": index, "texts": texts, "clients": clients, "route": route})
    before, cpu = load(), server.cpu_seconds()
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("loadgen.py"))], input=spec,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"the load generator failed: {done.stderr[-2000:]}")
    out = json.loads(done.stdout)
    requests = len(texts)
    ERRORS.extend(out["first_errors"][: max(0, 5 - len(ERRORS))])
    latencies = [x for x in out["latencies_ms"] if x is not None]
    return {"clients": clients, "requests": len(texts), "qps": round(len(texts) / out["wall_s"], 1), **pct(latencies),
            "errors": out["errors"], "server_cpu_ms_per_query": round((server.cpu_seconds() - cpu) * 1000 / requests, 2),
            "client_cpu_ms_per_request": round(out["cpu_s"] * 1000 / requests, 2), "load": [before, load()]}


def throughput(server: Server, index: str, texts: Texts, per_clients: dict[int, int], route: str = "search") -> list[dict]:
    """Queries per second at each number of clients, every request a new text; the same client code for all."""
    rows = []
    loadgen(server, index, texts.take(8), 1, route=route)  # warm: connections, the first batch
    for clients, n in per_clients.items():
        row = loadgen(server, index, texts.take(n), clients, route=route)
        rows.append(row)
        note(json.dumps(row))
    return rows


def thumbnails(server: Server, index: str, ids: list[int]) -> dict:
    out, errors = {}, 0
    with httpx.Client(base_url=server.base, timeout=60) as client:
        etags = {}
        for phase in ("cold", "cached", "not modified"):
            times = []
            for image_id in ids:
                headers = {"If-None-Match": etags[image_id]} if phase == "not modified" else {}
                t = time.perf_counter()
                r = client.get(f"/api/thumb/{image_id}", params={"index": index, "size": 256}, headers=headers)
                times.append((time.perf_counter() - t) * 1000)
                expected = 304 if phase == "not modified" else 200
                errors += r.status_code != expected
                etags[image_id] = r.headers.get("etag", "")
            out[phase] = pct(times)
    out["errors"] = errors
    return out


# -- the run -------------------------------------------------------------------------------
@command(out="bench-out/server.json", quick={"n": 5_000, "queries": 10, "photos": 3, "requests": 5})
@click.option("--n", type=int, default=100_000, show_default=True, help="Vectors in the searched index.")
@click.option("--queries", type=int, default=100, show_default=True, help="Queries per latency measurement.")
@click.option("--photos", type=int, default=200, show_default=True, help="Generated JPEGs for the thumbnail part.")
@click.option("--thumb-index", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Use this existing index for thumbnails instead of generating one.")
@click.option("--requests", type=int, default=100, show_default=True,
              help="Requests of the one-client throughput run (8 clients: 4x as many, 64 clients: 12x).")
@click.option("--window-ms", type=float, default=2.0, show_default=True, help="The micro-batching window compared with 0.")
def main(n: int, queries: int, photos: int, thumb_index: Path | None, requests: int, window_ms: float, out: Path) -> None:
    result: dict = {"meta": {
        "date": str(date.today()), "machine": summary(),
        "faiss": faiss.__version__, "n": n, "dim": DIM, "load_start": load(), "host": machine()}}
    texts = Texts()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        note(f"filling an index of {n:,} vectors ...")
        result["index"] = make_vector_indexes(work, n, texts.take(200))
        note(json.dumps(result["index"]))
        if thumb_index:
            photo_index = thumb_index
        else:
            note(f"indexing {photos} generated JPEGs for thumbnails ...")
            photo_index = make_photo_index(work, photos)

        note("in process ...")
        result["in_process_steps"] = in_process(work, texts.take(queries))
        note(json.dumps(result["in_process_steps"]))

        result["http"], result["throughput"] = {}, {}
        indexes = [work / "exact", work / "ivf", photo_index]
        for window in (window_ms, 0.0):
            label = f"window {window:g} ms"
            note(f"server, {label} ...")
            server = Server(indexes, window, work / f"server-{window:g}.log")
            try:
                if window:  # latency and thumbnails once, with the server's default settings
                    rows = {}
                    loadgen(server, "exact", texts.take(4), 1)  # warm
                    for name in ("exact", "ivf"):
                        for repeat in (False, True):
                            qs = texts.take(queries // 2)
                            key = f"{name}, {'repeated' if repeat else 'new'} texts"
                            before = load()
                            rows[key] = {"in_process": in_process_plain(work, name, qs, repeat),
                                         "http": loadgen(server, name, qs, 1, repeat), "load": [before, load()]}
                            note(f"{key} {json.dumps(rows[key])}")
                    # The earlier runs' client (httpx, in this process), for comparison with them.
                    qs = texts.take(queries // 2)
                    before = load()
                    rows["exact, new texts, httpx client"] = {
                        "in_process": in_process_plain(work, "exact", qs, False),
                        "http": http_sequential(server, "exact", qs, False), "load": [before, load()]}
                    result["http"] = rows
                    with httpx.Client(base_url=server.base) as client:
                        found = client.get("/api/search", params={"q": "a photo", "index": photo_index.name, "k": 200}).json()
                    ids = [r["id"] for r in found["results"]][:100]
                    before = load()
                    result["thumbnails"] = {**thumbnails(server, photo_index.name, ids), "images": len(ids),
                                            "load": [before, load()]}
                    note(json.dumps(result["thumbnails"]))
                per_clients = {1: requests, 8: 4 * requests, 64: 12 * requests}
                result["throughput"][label] = {name: throughput(server, name, texts, per_clients)
                                               for name in ("ivf", "exact")}
                # clip-retrieval's route, through the same micro-batcher (issue 24, item 18).
                result["throughput"][label]["exact, /knn-service"] = throughput(server, "exact", texts, per_clients, "knn")
            finally:
                server.stop()
    result["meta"]["load_end"] = load()
    result["first_errors"] = ERRORS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_report(result)


def print_report(r: dict) -> None:
    """The report's tables, several of them: more than harness.report's one."""
    m, ix = r["meta"], r["index"]
    print(f"Serving benchmark, {m['machine']}, faiss {m['faiss']}, {m['n']:,} vectors of {m['dim']} dims, {m['date']}; "
          f"load average {m['load_start']} at the start, {m['load_end']} at the end\n")
    print(f"IVF {ix['factory']}, built and tuned by the engine in {ix['build_s']} s: nprobe {ix['engine_nprobe']}, "
          f"recall@10 against exact {ix['engine_recall_at_10_tuning']:.3f} at tuning, "
          f"{ix['engine_recall_at_10_near_queries']:.3f} on 200 queries near the data, "
          f"{ix['engine_recall_at_10_text_queries']:.3f} on 200 text queries. Recall@10 on those text queries by nprobe: "
          + ", ".join(f"{k}: {v:.3f}" for k, v in sorted(ix["text_recall_at_10_by_nprobe"].items()))
          + f". Served with nprobe {ix['text_nprobe']}: recall@10 "
          f"{r['in_process_steps']['recall_at_10_text_queries']:.3f} on the (other) measured text queries. "
          f"The engine builds {ix['engine_factory_at_n']} at this size.\n")
    steps = r["in_process_steps"]
    print(f"Warm text query in process, step by step (load {steps['load'][0]} -> {steps['load'][1]}); "
          f"recall@10 against exact on these text queries: 8-bit copy {steps['recall_at_10_text_queries_8bit']:.3f}, "
          f"IVF {steps['recall_at_10_text_queries']:.3f}\n")
    print("| step | p50 ms | p99 ms | CPU ms per query |\n|---|---|---|---|")
    for s in steps["steps"]:
        print(f"| {s['step']} | {s['p50']} | {s['p99']} | {s.get('cpu_ms', '')} |")
    print("\nWhere a new text's time goes (same queries)\n\n| part | p50 ms | p99 ms |\n|---|---|---|")
    for part, v in steps.get("parts", {}).items():
        print(f"| {part} | {v['p50']} | {v['p99']} |")
    print("\nHTTP (one client, keep-alive) against the same queries in process\n")
    print("| index, queries | in process p50 / p99 ms | HTTP p50 / p99 ms | HTTP adds (p50) ms "
          "| CPU ms per query in process / server | errors | load |")
    print("|---|---|---|---|---|---|---|")
    for key, row in r["http"].items():
        a, b = row["in_process"], row["http"]
        print(f"| {key} | {a['p50']} / {a['p99']} | {b['p50']} / {b['p99']} | {b['p50'] - a['p50']:.2f} "
              f"| {a.get('cpu_ms', '')} / {b.get('cpu_ms', b.get('server_cpu_ms_per_query', ''))} | {b['errors']} | {row['load'][0]} -> {row['load'][1]} |")
    print("\nThroughput, every request a new text (no cache hits)\n")
    print("| batching | index | clients | requests | queries/s | x one client | p50 / p99 ms | server CPU ms per query "
          "| client CPU ms per request | errors | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, by_index in r["throughput"].items():
        for name, rows in by_index.items():
            one = rows[0]["qps"]
            for row in rows:
                print(f"| {label} | {name} | {row['clients']} | {row['requests']} | {row['qps']} | {row['qps'] / one:.1f} "
                      f"| {row['p50']} / {row['p99']} | {row.get('server_cpu_ms_per_query', '')} "
                      f"| {row.get('client_cpu_ms_per_request', '')} | {row['errors']} "
                      f"| {row['load'][0]} -> {row['load'][1]} |")
    t = r.get("thumbnails")
    if t:
        print(f"\nThumbnails, 256 px, {t['images']} images of 2000x1500 (load {t['load'][0]} -> {t['load'][1]})\n")
        print("| request | p50 ms | p99 ms |\n|---|---|---|")
        for phase in ("cold", "cached", "not modified"):
            print(f"| {phase} | {t[phase]['p50']} | {t[phase]['p99']} |")
        print(f"\nthumbnail errors: {t['errors']}")
    if r["first_errors"]:
        print("\nfirst errors:\n" + "\n".join(r["first_errors"]))


if __name__ == "__main__":
    main()
