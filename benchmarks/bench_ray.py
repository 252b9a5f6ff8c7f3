"""The Ray path (`retrieval index --ray`) measured three ways, in one run.

(a) overhead: the Ray path against the local path on the same folder of real-size JPEGs
    (the photo set of benchmarks/bench_index.py: crops of real photos, 2-12 MP), the same aligner, fresh
    index each time, Ray started before timing. Two ratios (target >= 0.7): (i) whole job,
    the model load counted on both sides (the aligner cache is cleared before each run, so
    the local run builds its model inside the timed run as a CLI run does, and so does the
    Ray driver, while the encoder actor loads its own); (ii) steady state, the rate between
    the first and the last vectors committed, on each side. The Ray path also runs without
    decoding ahead during the actor's model load (RaySettings(decode_ahead_files=0)), to show
    what that gains. And the cosine of each photo's vector between the two paths (target
    >= 0.999; decoding is the same code on both paths, so they should agree to float rounding).
(b) driver ingest: vectors per second the driver commits (ray_index.commit: known-content
    check, vector rows, staging rows) when results arrive faster than it writes: the driver as
    it is (commits coalesced up to COMMIT_VECTORS, one transaction each, WAL copied every 64 MB)
    against the previous driver (two transactions per encoder batch of 32, 4 MB checkpoints)
    and each change alone (target >= 20,000/s).
(c) node loss: a simulated cluster (ray.cluster_utils.Cluster, a head and two worker nodes on
    this machine); a worker node is removed mid-run; the run must finish with every photo
    indexed and the same catalog as the local path.
(d) per-stage CPU cost for the scaling model in docs/scaling.md: read+decode+preprocess per
    photo and FAISS IVF-SQ8 training and adding, in CPU seconds on one thread.
(e) the fixed cost of one small job on Ray core tasks and on Ray Data (why the pipeline uses core).
(f) an on-disk index's shards added in one process against as Ray tasks (ray_shards), on the
    same synthetic vectors: seconds in the adding step and in the whole build, and whether
    the two lists files are identical.

Every figure is written with the 1-minute load average next to it: the machine is shared.

    .venv/bin/python -m benchmarks.bench_ray                      # 300 photos, ViT-B-32 (random weights)
    .venv/bin/python -m benchmarks.bench_ray --photos 60 --rounds 1 --only a --out bench-out/ray-quick.json
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import date
from importlib import metadata
from pathlib import Path

import click

from benchmarks import bench_index as bi
from benchmarks import clip_retrieval_bench as crb
from benchmarks import harness
from benchmarks.harness import load
from benchmarks.proctable import process_table

TARGETS = {"ratio": 0.7, "min_cosine": 0.999, "ingest_per_s": 20_000}
#: The checkout: (a)'s fresh runs are ``python -m benchmarks.bench_ray`` with it on their path.
ROOT = Path(__file__).resolve().parent.parent
PARTS = ("a", "b", "c", "d", "e", "f")


@dataclass(frozen=True)
class Settings:
    """The sizes of every part, as the command line gave them."""

    photos: int = 300
    seed: int = 0
    model: str = "open_clip:ViT-B-32/random"
    batch_size: int = 32
    rounds: int = 2
    ingest_vectors: int = 50_000
    ingest_rounds: int = 3
    dim: int = 512
    cluster_photos: int = 100
    stage_photos: int = 100
    faiss_vectors: int = 200_000
    faiss_lists: int = 1024
    shard_vectors: int = 400_000
    shard_count: int = 4
    in_process: bool = False


def log(msg: str) -> None:
    harness.note(f"[bench_ray] {msg}")


def index_vectors(index_dir: Path) -> dict:
    """path -> vector of an index (plus its skipped files), read back from the catalog."""
    from retrieval.api import open_index

    idx = open_index(str(index_dir))
    try:
        files = idx.store.catalog.files()
        by_hash = idx.store.catalog.vectors_by_hash([row.hash for row in files.values()])
        return {path: by_hash[row.hash] for path, row in files.items()}
    finally:
        idx.close()


class FirstVectors(logging.Handler):
    """Seconds from the encoder actors' creation to the first vectors (ray_index logs it): their model load."""

    def __enter__(self) -> FirstVectors:
        self.seconds = None
        self.logger = logging.getLogger("retrieval.cluster.ray_index")
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("first vectors"):
            self.seconds = float(record.args[0])


class TreeCPU:
    """CPU seconds used by this process and every process below it (Ray's raylet and workers
    included), sampled from /proc so that processes which end during the run still count.

    On a shared machine wall time mostly says how busy the neighbours were; CPU seconds per
    image say what each path costs, and on 2 busy cores images/s follows from them.
    """

    def __enter__(self) -> TreeCPU:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.seen: dict[int, float] = {}
        self.base = self._sample()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self._sample()
        self.seconds = sum(self.seen.values()) - self.base

    def _loop(self) -> None:
        while not self.stop.wait(0.2):
            self._sample()

    def _sample(self) -> float:
        # utime + stime of the process itself: a parent's cutime would count a sampled child twice.
        stats = {pid: (int(fields[1]), (int(fields[11]) + int(fields[12])) / self.tick)
                 for pid, fields in process_table().items()}
        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            parent = frontier.pop()
            for pid, (ppid, _) in stats.items():
                if ppid == parent and pid not in tree:
                    tree.add(pid)
                    frontier.append(pid)
        for pid in tree:
            if pid in stats:
                self.seen[pid] = max(self.seen.get(pid, 0.0), stats[pid][1])
        return sum(self.seen.values())


class Timeline:
    """A Progress that notes when vectors were first and last committed.

    Both paths advance their progress once per commit of encoded files (the local path per
    batch, the Ray driver per coalesced commit), so the rate between the first and the last
    commit is the same measure on both: the pipeline once its model is loaded and running.
    """

    def __init__(self) -> None:
        self.label, self.first, self.last, self.first_n, self.n = None, None, None, 0, 0

    def start(self, total, label: str) -> None:
        self.label = label

    def advance(self, n: int = 1) -> None:
        if self.label != "indexing" or not n:
            return
        now = time.perf_counter()
        if self.first is None:
            self.first, self.first_n = now, n
        self.last, self.n = now, self.n + n

    def close(self) -> None:
        pass


@contextmanager
def fresh_model_load(times: dict):
    """Clear the aligner cache, so build_index loads the model inside the timed run, and time that load."""
    from retrieval import aligners

    aligners.LOADED.clear()
    real = aligners.load_aligner

    def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            times["model_load_s"] = round(time.perf_counter() - t0, 1)

    aligners.load_aligner = timed
    try:
        yield
    finally:
        aligners.load_aligner = real


def one_run(spec: str, folder: Path, index_dir: Path, batch_size: int, ray_settings=None, ahead: int | None = None,
            fresh: bool = True) -> dict:
    shutil.rmtree(index_dir, ignore_errors=True)
    timeline, loaded = Timeline(), {}
    started = time.perf_counter()
    with harness.measure() as run, TreeCPU() as cpu, (fresh_model_load(loaded) if fresh else nullcontext()):
        from retrieval.api import build_index  # inside the timing: a CLI run pays these imports too
        from retrieval.ingest.pipeline import IndexSettings

        if ahead is not None and ray_settings is not None:
            ray_settings = dataclasses.replace(ray_settings, decode_ahead_files=ahead)
        summary = build_index([folder], index=str(index_dir), model=spec, settings=IndexSettings(batch_size=batch_size),
                              ray=ray_settings, progress=timeline)
    if summary.skipped or summary.encoded != summary.added:
        raise RuntimeError(f"not every photo was encoded: {summary.line()}")
    first_s = timeline.first - started
    steady = (timeline.n - timeline.first_n) / max(1e-9, timeline.last - timeline.first)
    return {**bi.way_report(run, summary.encoded), "tree_cpu_s": round(cpu.seconds, 1),
            "cpu_ms_per_image": round(1000 * cpu.seconds / max(1, summary.encoded), 1),
            "driver_model_load_s": loaded.get("model_load_s"), "first_vectors_at_s": round(first_s, 1),
            "steady_images_per_s": round(steady, 2)}


CHILD_FLAG = "--child-run"


def child_run(params: dict) -> int:
    """(a)'s timed run in a fresh process, as `retrieval index` runs: torch, open_clip and the
    model are imported and loaded inside the timing. A Ray run joins the parent's instance
    first, outside the timing (ray.init is outside on both sides). Prints its figures as JSON."""
    logging.basicConfig(level=logging.WARNING)
    ray_settings = None
    if params["ray_address"]:
        import ray

        from retrieval.cluster import RaySettings

        ray.init(address=params["ray_address"], logging_level=logging.WARNING, log_to_driver=False)
        ray_settings = RaySettings()
    with FirstVectors() as first:
        res = one_run(params["spec"], Path(params["folder"]), Path(params["index"]), params["batch_size"],
                      ray_settings, params["ahead"])
    if first.seconds is not None:
        res["actor_first_vectors_s"] = round(first.seconds, 1)  # from the actor's creation
    print(json.dumps(res))
    return 0


def fresh_run(params: dict) -> dict:
    """child_run in a new process; this process's tree (Ray's processes included) is counted for CPU."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with TreeCPU() as cpu:
        done = subprocess.run([sys.executable, "-m", "benchmarks.bench_ray", CHILD_FLAG, json.dumps(params)],
                              stdout=subprocess.PIPE, text=True, check=True, env=env)
    res = json.loads(done.stdout.strip().splitlines()[-1])
    # The child counted only its own tree: Ray's raylet and workers are this process's children.
    res["tree_cpu_s"] = round(cpu.seconds, 1)
    res["cpu_ms_per_image"] = round(1000 * cpu.seconds / max(1, res["images"]), 1)
    return res


def in_process_run(params: dict) -> dict:
    """(a)'s run in this process, whose driver has its model loaded already (--in-process): as a
    long-lived process (a notebook, a server) that indexes again. The encoder actor still loads its own."""
    from retrieval.cluster import RaySettings

    with FirstVectors() as first:
        res = one_run(params["spec"], Path(params["folder"]), Path(params["index"]), params["batch_size"],
                      RaySettings() if params["ray_address"] else None, params["ahead"], fresh=False)
    if first.seconds is not None:
        res["actor_first_vectors_s"] = round(first.seconds, 1)
    return res


def fresh_process_load(spec: str) -> float:
    """Seconds a fresh Python process takes to import the aligner's code (torch, open_clip) and load it."""
    code = ("import time; t = time.perf_counter(); from retrieval.aligners import load_aligner; "
            f"load_aligner({spec!r}); print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


# -- (a) overhead ---------------------------------------------------------------------------
#: (a)'s ways: name, on Ray?, decoded files that may wait for a loading encoder (None: the module's value).
WAYS = [("local", False, None), ("ray", True, None), ("ray, no decode-ahead", True, 0)]


def overhead(args: Settings, work: Path, spec: str) -> dict:
    import ray

    from retrieval.cluster import RaySettings

    paths = crb.make_photo_folder(work / "photos", n=args.photos, seed=args.seed)
    folder = work / "photos"
    log(f"loading {spec} in a fresh process (which also reads its files into the page cache)")
    fresh_load = fresh_process_load(spec)
    run = fresh_run
    if args.in_process:
        from retrieval.aligners import load_aligner

        load_aligner(spec)
        run = in_process_run
    started = time.perf_counter()
    ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    ray_start = time.perf_counter() - started
    address = ray.get_runtime_context().gcs_address
    results: dict[str, list] = {way: [] for way, *_ in WAYS}
    try:
        for rnd in range(args.rounds):
            # Alternated order: the machine's load drifts.
            for way, on_ray, ahead in (WAYS if rnd % 2 == 0 else WAYS[::-1]):
                log(f"(a) round {rnd + 1}/{args.rounds}: {way} ...")
                res = run({"spec": spec, "folder": str(folder), "batch_size": args.batch_size, "ahead": ahead,
                                 "index": str(work / f"index-{way.replace(', ', '-').replace(' ', '-')}"),
                                 "ray_address": address if on_ray else None})
                results[way].append(res)
                log(f"    {res['images_per_s']} images/s whole job, {res['steady_images_per_s']} steady, "
                    f"first vectors at {res['first_vectors_at_s']} s, load {res['load_after']}")
    finally:
        ray.shutdown()
    local_v, ray_v = index_vectors(work / "index-local"), index_vectors(work / "index-ray")
    best = {way: bi.fastest(rounds) for way, rounds in results.items()}
    steady = {way: max(r["steady_images_per_s"] for r in rounds) for way, rounds in results.items()}

    def ratio(value: float) -> dict:
        return {"value": round(value, 2), "target": TARGETS["ratio"], "met": value >= TARGETS["ratio"]}

    # Lowest CPU cost per image of each way: on 2 cores kept busy, the throughput ratio a quiet machine would show.
    cpu_cost = {way: min(r["cpu_ms_per_image"] for r in rounds) for way, rounds in results.items()}
    agree = bi.agreement(local_v, ray_v)
    info = json.loads((folder / "manifest.json").read_text())
    return {
        "photos": {"count": len(paths), "mean_mp": round(info["megapixels"] / len(paths), 1),
                   "megabytes": round(sum(os.path.getsize(p) for p in paths) / 1e6)},
        "model": spec,
        "ray_start_seconds": round(ray_start, 1),
        "fresh_process_model_load_s": fresh_load,
        "decode_ahead_files": RaySettings().decode_ahead_files,
        "in_process": args.in_process,
        "ways": best,
        "steady_images_per_s": steady,
        "ratio": ratio(best["ray"]["images_per_s"] / best["local"]["images_per_s"]),
        "steady_ratio": ratio(steady["ray"] / steady["local"]),
        "ratio_no_decode_ahead": round(best["ray, no decode-ahead"]["images_per_s"] / best["local"]["images_per_s"], 2),
        "cpu_ms_per_image": cpu_cost, "cpu_ratio": round(cpu_cost["local"] / cpu_cost["ray"], 2),
        "agreement": {**agree, "target": TARGETS["min_cosine"], "met": agree["min_cosine"] >= TARGETS["min_cosine"]},
    }


# -- (b) driver ingest ----------------------------------------------------------------------
#: (b)'s variants: name, results per commit, one transaction per commit, WAL pages between checkpoints.
#: "driver" is what ray_index does now: results coalesced up to COMMIT_VECTORS, one transaction,
#: the WAL copied every STREAMING_CHECKPOINT_PAGES; "before" is the previous driver, a commit of
#: two transactions for every encoder batch of 32 with SQLite's 4 MB checkpoints.
def ingest_variants():
    from retrieval.cluster.ray_index import COMMIT_VECTORS
    from retrieval.cluster.ray_index import STREAMING_CHECKPOINT_PAGES as pages

    return [("before", 32, False, 1000), ("one transaction", 32, True, 1000), ("64 MB checkpoints", 32, True, pages),
            ("coalesced", COMMIT_VECTORS, True, 1000), ("driver", COMMIT_VECTORS, True, pages)]


def ingest(args: Settings, work: Path) -> dict:
    """The driver's commit step fed with ready results as fast as it can take them."""
    import numpy as np

    from retrieval.cluster.ray_index import commit, store_and_record
    from retrieval.media.decode import Loaded
    from retrieval.media.files import FileStat
    from retrieval.storage.staging import Staging
    from retrieval.storage.store import IndexStore

    n, dim = args.ingest_vectors, args.dim
    rng = np.random.default_rng(0)
    out = []
    # Alternated rounds: the machine's load drifts; the best round of each variant is kept.
    for name, per_commit, one_transaction, pages in [v for _ in range(args.ingest_rounds) for v in ingest_variants()]:
        index_dir = work / f"ingest-{per_commit}"
        shutil.rmtree(index_dir, ignore_errors=True)
        store = IndexStore.open(str(index_dir), create=True)
        store.catalog.set_meta(dim=dim)
        root = work / "ingest-root"
        staging = Staging(store.catalog, [root])
        cpu0 = time.process_time()
        staging.add_stats(FileStat(f"{root}/{i:08d}.jpg", 1000 + i, 1.0) for i in range(n))
        stage_cpu = time.process_time() - cpu0
        vectors = rng.standard_normal((per_commit, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        load_before = load()
        t0, cpu0 = time.perf_counter(), time.process_time()
        store.catalog.db.conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
        # The driver before 2026-12-02 wrote vectors, then file rows, each in its own transaction.
        step = commit if one_transaction else store_and_record
        with store.catalog.quick_commits():  # as during any run
            for start in range(0, n, per_commit):
                ids = range(start, min(n, start + per_commit))
                hashes = [f"{i:032x}" for i in ids]
                rows = [Loaded(f"{root}/{i:08d}.jpg", hash=h, width=640, height=480) for i, h in zip(ids, hashes)]
                step(store, staging, rows, [(h, vectors[j], 640, 480) for j, h in enumerate(hashes)])
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        # What publishing costs per file before FAISS: plan and apply (SQL), then the chunked
        # read of every vector that builds the index.
        cpu0 = time.process_time()
        plan = staging.plan(1)
        with store.catalog.publishing():
            staging.apply()
        publish_sql_cpu = time.process_time() - cpu0
        cpu0 = time.process_time()
        read = sum(len(ids) for ids, _ in store.catalog.image_vectors())
        read_cpu = time.process_time() - cpu0
        if plan.new_rows != n or read != n:
            raise RuntimeError(f"publishing saw {plan.new_rows} new rows and read {read} vectors, not {n}")
        stored = store.catalog.count("vectors")
        staging.close()
        store.close()
        if stored != n:
            raise RuntimeError(f"ingest stored {stored} vectors, not {n}")
        rate = n / seconds
        checkpoints = f"every {round(pages * 4096 / 2**20)} MiB"
        out.append({"variant": name, "vectors_per_commit": per_commit, "transactions_per_commit": 1 if one_transaction else 2,
                    "wal_checkpoints": checkpoints, "vectors": n,
                    "seconds": round(seconds, 2), "vectors_per_s": round(rate), "cpu_seconds": round(cpu, 2),
                    "vectors_per_cpu_s": round(n / cpu), "met": rate >= TARGETS["ingest_per_s"],
                    "staged_files_per_cpu_s": round(n / stage_cpu), "plan_apply_files_per_cpu_s": round(n / publish_sql_cpu),
                    "vectors_read_per_cpu_s": round(n / read_cpu),
                    "load_before": load_before, "load_after": load()})
        log(f"(b) {name}: {per_commit} per commit, WAL copied {checkpoints}: {rate:,.0f} vectors/s "
            f"({n / cpu:,.0f} per CPU second), load {load()}")
        shutil.rmtree(index_dir, ignore_errors=True)
    best = {}
    for r in out:
        key = r["variant"]
        if key not in best or r["vectors_per_s"] > best[key]["vectors_per_s"]:
            best[key] = {**r, "rounds": [x["vectors_per_s"] for x in out if x["variant"] == key],
                         "cpu_rounds": [x["vectors_per_cpu_s"] for x in out if x["variant"] == key]}
    return {"dim": dim, "target": TARGETS["ingest_per_s"], "runs": list(best.values())}


# -- (c) node loss --------------------------------------------------------------------------
def node_loss(args: Settings, work: Path, spec: str) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from retrieval.cluster import RaySettings

    folder = work / "photos-cluster"
    crb.make_photo_folder(folder, n=args.cluster_photos, seed=args.seed + 1)
    log("(c) local reference run")
    reference = one_run(spec, folder, work / "cluster-local", args.batch_size)
    # The head takes no work (num_cpus=0) so that everything runs on the two worker nodes.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
    index_dir = work / "cluster-ray"
    removed: dict = {}

    def remove_mid_run():
        # Once a fifth of the photos have vectors, take away the node doing the most.
        import sqlite3

        deadline = time.time() + 600
        while time.time() < deadline:
            time.sleep(0.2)
            try:
                with sqlite3.connect(index_dir / "catalog.db", timeout=1) as db:
                    done = db.execute("SELECT count(*) FROM vectors").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if done >= args.cluster_photos // 5:
                victim, processes = _busiest(workers)
                removed.update(node=str(getattr(victim, "node_id", "?"))[:12], worker_processes=processes,
                               vectors_before=done, load=load())
                log(f"(c) removing node {removed['node']} after {done} vectors")
                cluster.remove_node(victim, allow_graceful=False)
                return

    try:
        killer = threading.Thread(target=remove_mid_run, daemon=True)
        killer.start()
        res = one_run(spec, folder, index_dir, args.batch_size, RaySettings(address=cluster.address))
        killer.join(timeout=5)
    finally:
        ray.shutdown()
        cluster.shutdown()
    local_v, ray_v = index_vectors(work / "cluster-local"), index_vectors(index_dir)
    agree = bi.agreement(local_v, ray_v)
    same_paths = sorted(local_v) == sorted(ray_v)
    log(f"(c) done: {res['images']} photos, node removed: {bool(removed)}, same paths: {same_paths}, {agree}")
    return {"photos": args.cluster_photos, "nodes": "head (0 CPUs) + 2 workers (2 CPUs each)", "removed": removed,
            "run": res, "local_reference": reference, "same_paths": same_paths, "agreement": agree,
            "met": bool(removed) and same_paths and agree["min_cosine"] >= TARGETS["min_cosine"]}


def _busiest(nodes):
    """The worker node whose raylet has the most live worker processes (the encoder's node, usually)."""
    parents = {}
    for fields in process_table().values():
        if fields[0] != "Z":
            parents[int(fields[1])] = parents.get(int(fields[1]), 0) + 1

    def count(node):
        try:
            return parents.get(node.all_processes["raylet"][0].process.pid, 0)
        except (KeyError, IndexError, AttributeError):
            return 0

    victim = max(nodes, key=count)
    return victim, count(victim)


# -- (d) per-stage rates for the scaling model -----------------------------------------------
def stage_rates(args: Settings, work: Path, spec: str) -> dict:
    """CPU cost of each stage per item, as CPU seconds (robust on a shared machine): decode, FAISS add."""
    import faiss
    import numpy as np

    from retrieval.aligners import load_aligner
    from retrieval.media.decode import load as load_file

    paths = crb.make_photo_folder(work / "photos", n=args.photos, seed=args.seed)[: args.stage_photos]
    transform = load_aligner(spec).transform
    load_before = load()
    cpu0 = time.process_time()
    for path in paths:
        if load_file(path, transform).pixels is None:
            raise RuntimeError(f"{path} did not decode")
    decode_cpu = (time.process_time() - cpu0) / len(paths)
    log(f"(d) read, hash, draft-decode and preprocess: {decode_cpu * 1000:.1f} ms of CPU per photo, load {load()}")
    # Web-size images (what LAION-style collections hold): the same photos at 640 x 480.
    from PIL import Image

    small = work / "photos-640"
    small.mkdir(exist_ok=True)
    small_paths = []
    for path in paths:
        dest = small / Path(path).name
        if not dest.exists():
            with Image.open(path) as im:
                im.draft("RGB", (640, 480))
                im.convert("RGB").resize((640, 480)).save(dest, quality=90)
        small_paths.append(str(dest))
    cpu0 = time.process_time()
    for path in small_paths:
        load_file(path, transform)
    small_cpu = (time.process_time() - cpu0) / len(small_paths)
    log(f"(d) the same at 640 x 480: {small_cpu * 1000:.1f} ms of CPU per image")

    rng = np.random.default_rng(0)
    n, nlist = args.faiss_vectors, args.faiss_lists
    x = rng.standard_normal((n, args.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    faiss.omp_set_num_threads(1)  # per core: the model multiplies by cores
    index = faiss.index_factory(args.dim, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
    cpu0 = time.process_time()
    index.train(x[: 20 * nlist])
    train_cpu = time.process_time() - cpu0
    cpu0 = time.process_time()
    index.add(x)
    add_cpu = time.process_time() - cpu0
    log(f"(d) FAISS IVF{nlist},SQ8: train on {20 * nlist:,} in {train_cpu:.1f} CPU s, add {n / add_cpu:,.0f} vectors "
        f"per CPU second, load {load()}")
    return {"photos": len(paths), "decode_cpu_ms_per_photo": round(decode_cpu * 1000, 1),
            "decode_photos_per_cpu_s": round(1 / decode_cpu, 1),
            "decode_cpu_ms_640x480": round(small_cpu * 1000, 2), "decode_640x480_per_cpu_s": round(1 / small_cpu),
            "faiss": {"factory": f"IVF{nlist},SQ8", "dim": args.dim, "vectors": n, "train_vectors": 20 * nlist,
                      "train_cpu_s": round(train_cpu, 1), "add_vectors_per_cpu_s": round(n / add_cpu)},
            "load_before": load_before, "load_after": load()}


# -- (e) Ray Data against Ray core, per run ----------------------------------------------------
def _square(batch):
    return {"x": batch["x"] * batch["x"]}


def engine_overhead(args: Settings) -> dict:
    """The fixed cost of one small job (1,000 items in chunks of 8) on each Ray API, Ray already started."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    out: dict = {"items": 1000, "load_before": load()}
    try:
        @ray.remote(num_cpus=0.5)
        def square(chunk):
            return [v * v for v in chunk]

        for rnd in range(3):
            t0 = time.perf_counter()
            refs = [square.remote(list(range(i, i + 8))) for i in range(0, 1000, 8)]
            total = sum(sum(part) for part in ray.get(refs))
            core = time.perf_counter() - t0
            t0 = time.perf_counter()
            ds = ray.data.from_items([{"x": i} for i in range(1000)]).map_batches(_square, batch_size=8)
            total_data = sum(int(b["x"].sum()) for b in ds.iter_batches(batch_size=64, batch_format="numpy"))
            data = time.perf_counter() - t0
            if total != total_data:
                raise RuntimeError("the two pipelines disagree")
            out.setdefault("core_seconds", []).append(round(core, 2))
            out.setdefault("data_seconds", []).append(round(data, 2))
            log(f"(e) round {rnd + 1}: core tasks {core:.2f} s, Ray Data {data:.2f} s, load {load()}")
    finally:
        ray.shutdown()
    out["load_after"] = load()
    return out


# -- the scaling model (docs/scaling.md) ----------------------------------------------------
#: Published end-to-end ViT-B/32 rates per GPU (clip-retrieval: about 1,500/s on an RTX 3080,
#: 2,500/s on an A100, both limited by decoding and resizing), and the machines assumed.
MODEL = {"images": 100_000_000, "gpu_images_per_s": 2500, "cores_per_node": 16, "driver_cores": 16,
         "nodes": [1, 2, 4, 8, 16, 32, 64]}


def scaling_model(res: dict, web: bool) -> list[dict]:
    """Hours per phase for MODEL["images"] on N one-GPU nodes, from this run's per-core rates.

    encode phase  n / min(N * per-node rate, driver commit rate)
                  per-node rate = min(GPU rate, (cores - 1) * decode rate per core)
    driver        walk/stage and plan/apply at their per-core rates (one thread: SQLite)
    publish       every vector read back (one thread) and added to FAISS on the driver's cores
    """
    stages, runs = res["stages"], res["ingest"]["runs"]
    # The driver's own configuration (ray_index: coalesced commits, 64 MB checkpoints).
    best = next(r for r in runs if r["variant"] == "driver")
    decode = stages["decode_640x480_per_cpu_s"] if web else stages["decode_photos_per_cpu_s"]
    n, m = MODEL["images"], MODEL
    node = min(m["gpu_images_per_s"], (m["cores_per_node"] - 1) * decode)
    commit = best["vectors_per_cpu_s"]
    fixed = (n / best["staged_files_per_cpu_s"] + n / best["plan_apply_files_per_cpu_s"]
             + n / best["vectors_read_per_cpu_s"] + n / (stages["faiss"]["add_vectors_per_cpu_s"] * m["driver_cores"]))
    rows = []
    for nodes in m["nodes"]:
        rate = min(nodes * node, commit)
        encode = n / rate
        limit = "driver commits" if nodes * node >= commit else ("GPU" if node == m["gpu_images_per_s"] else "CPU decoding")
        rows.append({"nodes": nodes, "images_per_s": round(rate), "encode_h": round(encode / 3600, 1),
                     "driver_and_publish_h": round(fixed / 3600, 1), "total_h": round((encode + fixed) / 3600, 1),
                     "encode_limited_by": limit,
                     "serial_share": round(fixed / (encode + fixed), 2)})
    return rows


# -- report ---------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"{res['date']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}, "
             f"ray {res['ray_version']}; load average {res['load_before']} at the start."]
    if "overhead" in res:
        a = res["overhead"]
        lines += ["", f"(a) {a['photos']['count']} JPEGs ({a['photos']['mean_mp']} MP mean, {a['photos']['megabytes']} MB), "
                  f"{a['model']}, fastest of {len(a['ways']['local']['rounds'])} round(s); Ray started before timing "
                  f"({a['ray_start_seconds']} s). "
                  + ("Runs in the bench's process, the driver's model loaded before timing; the encoder actor loads "
                     "its own inside the timing. " if a.get("in_process") else
                     "Each run is a fresh process, as `retrieval index` is: its driver imports torch and loads the "
                     "model inside the timing (a Ray run joins Ray first, outside it), and the encoder actor loads "
                     "its own. ")
                  + f"(A fresh process alone takes {a['fresh_process_model_load_s']} s to import and load the model.) "
                  f"Decoded files allowed to wait for a loading encoder: {a['decode_ahead_files']}.", "",
                  "| way | images/s (whole job) | seconds | rounds (images/s) | driver model load (s) | first vectors at (s) "
                  "| steady images/s (first to last vectors) | CPU ms per image (all processes) | load before / after |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for way, r in a["ways"].items():
            lines.append(f"| {way} | {r['images_per_s']} | {r['seconds']} | {r['rounds']} | {r['driver_model_load_s']} "
                         f"| {r['first_vectors_at_s']} | {r['steady_images_per_s']} | {r['cpu_ms_per_image']} "
                         f"| {r['load_before']} / {r['load_after']} |")
        firsts = {way: r["actor_first_vectors_s"] for way, r in a["ways"].items() if "actor_first_vectors_s" in r}
        if firsts:
            lines += ["", "First vectors after the encoder actor was created (its model load and the first batch): "
                      + "; ".join(f"{way} {s} s" for way, s in firsts.items()) + "."]
        whole = ("whole job, the driver's model loaded before timing (the actor's load inside)" if a.get("in_process")
                 else "whole job with the model load on both sides")
        lines += ["", f"Ray / local, {whole}: **{a['ratio']['value']}** "
                  f"(target >= {a['ratio']['target']}; without decoding ahead {a['ratio_no_decode_ahead']}); "
                  f"steady state (best rounds): **{a['steady_ratio']['value']}**. Vectors: "
                  f"min cosine {a['agreement']['min_cosine']}, mean {a['agreement']['mean_cosine']} "
                  f"over {a['agreement']['photos']} photos (target >= {a['agreement']['target']}). "
                  f"CPU cost per image, local / Ray (lowest round each): {a.get('cpu_ratio')}."]
    if "ingest" in res:
        b = res["ingest"]
        lines += ["", f"(b) driver ingest, {b['dim']}-d vectors:", "",
                  "| variant | vectors per commit | transactions per commit | WAL copied | vectors/s (best round) | rounds "
                  "| vectors per CPU second (rounds) | load before / after (best round) |", "|---|---|---|---|---|---|---|---|"]
        for r in b["runs"]:
            lines.append(f"| {r['variant']} | {r['vectors_per_commit']:,} | {r['transactions_per_commit']} | {r['wal_checkpoints']} "
                         f"| {r['vectors_per_s']:,} | {r['rounds']} | {r['cpu_rounds']} | {r['load_before']} / {r['load_after']} |")
    if "stages" in res:
        d = res["stages"]
        f = d["faiss"]
        lines += ["", f"(d) per-stage CPU cost (CPU seconds, one thread): read, hash, draft-decode and preprocess "
                  f"{d['decode_cpu_ms_per_photo']} ms per photo ({d['decode_photos_per_cpu_s']} photos per core-second, "
                  f"{d['photos']} photos), {d['decode_cpu_ms_640x480']} ms at 640 x 480 "
                  f"({d['decode_640x480_per_cpu_s']} per core-second); FAISS {f['factory']} at {f['dim']}-d: train on {f['train_vectors']:,} vectors "
                  f"{f['train_cpu_s']} CPU s, add {f['add_vectors_per_cpu_s']:,} vectors per core-second; "
                  f"load {d['load_before']} / {d['load_after']}."]
    if "engines" in res:
        e = res["engines"]
        lines += ["", f"(e) one small job, {e['items']} items in chunks of 8, Ray running: core tasks "
                  f"{e['core_seconds']} s, Ray Data {e['data_seconds']} s (3 rounds; load {e['load_before']} / {e['load_after']})."]
    if "shards" in res:
        f = res["shards"]
        lines += ["", f"(f) on-disk index of {f['vectors']:,} {f['dim']}-d vectors in {f['shards']} shards, "
                  f"{f['cpus']} CPUs; identical lists files: {f['identical_lists']}:", "",
                  "| shards added by | adding (s) | whole build (s) | load before / after |", "|---|---|---|---|"]
        for way, r in f["runs"].items():
            lines.append(f"| {way} | {r['adding_s']} | {r['build_s']} | {r['load_before']} / {r['load_after']} |")
    if "node_loss" in res:
        c = res["node_loss"]
        rm = c["removed"]
        lines += ["", f"(c) {c['photos']} photos on {c['nodes']}: node removed after {rm.get('vectors_before')} vectors "
                  f"(load {rm.get('load')}); run finished in {c['run']['seconds']} s with {c['run']['images']} photos; "
                  f"same paths as the local path: {c['same_paths']}; vectors min cosine {c['agreement']['min_cosine']}."]
    if "stages" in res and "ingest" in res:
        for web in (True, False):
            kind = "web-size images (640 x 480)" if web else "camera photos (2-12 MP)"
            lines += ["", f"Scaling model, {MODEL['images']:,} {kind}, one GPU ({MODEL['gpu_images_per_s']:,} img/s) "
                      f"and {MODEL['cores_per_node']} cores per node, driver with {MODEL['driver_cores']} cores:", "",
                      "| nodes | images/s | encode phase (h) | driver walk + publish (h) | total (h) | encode phase limited by "
                      "| serial share |", "|---|---|---|---|---|---|---|"]
            for r in scaling_model(res, web):
                lines.append(f"| {r['nodes']} | {r['images_per_s']:,} | {r['encode_h']} | {r['driver_and_publish_h']} | "
                             f"{r['total_h']} | {r['encode_limited_by']} | {r['serial_share']} |")
    return "\n".join(lines) + "\n"


# -- (f) on-disk shards: one process against Ray tasks ---------------------------------------
def shard_builds(args: Settings) -> dict:
    import tempfile

    import numpy as np
    import ray

    from retrieval.ann import ondisk
    from retrieval.cluster.ray_shards import add_shards

    n, dim = args.shard_vectors, harness.DIM
    x = harness.clustered(n, dim, seed=0, centers=harness.centers(200, dim, seed=0))
    ids = np.arange(1, n + 1, dtype=np.int64)

    def chunks():
        for start in range(0, n, 8192):
            yield ids[start:start + 8192], x[start:start + 8192]

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    runs, lists = {}, {}
    try:
        with tempfile.TemporaryDirectory(dir=".") as tmp:
            for way, adder in (("one process", ondisk.add_shards_here), ("Ray tasks", add_shards)):
                timed = {}

                def adding(*a, _adder=adder, _timed=timed):
                    t0 = time.perf_counter()
                    try:
                        return _adder(*a)
                    finally:
                        _timed["s"] = time.perf_counter() - t0

                out = Path(tmp) / f"{way.replace(' ', '-')}.faiss"
                load_before, t0 = load(), time.perf_counter()
                ondisk.build(chunks, n, dim, out, shard_rows=n // args.shard_count, add_shards=adding)
                runs[way] = {"build_s": round(time.perf_counter() - t0, 1), "adding_s": round(timed["s"], 1),
                             "load_before": load_before, "load_after": load()}
                lists[way] = ondisk.lists_path(out).read_bytes()
                log(f"(f) {way}: adding {runs[way]['adding_s']} s, build {runs[way]['build_s']} s, load {load()}")
    finally:
        ray.shutdown()
    return {"vectors": n, "dim": dim, "shards": args.shard_count, "cpus": os.cpu_count(), "runs": runs,
            "identical_lists": lists["one process"] == lists["Ray tasks"]}


@harness.command(out="bench-out/ray.json", quick={
    "photos": 20, "rounds": 1, "ingest_vectors": 2_000, "ingest_rounds": 1, "cluster_photos": 20, "stage_photos": 5,
    "faiss_vectors": 20_000, "faiss_lists": 64, "shard_vectors": 20_000})
@click.option("--photos", type=int, default=Settings.photos, show_default=True, help="(a), (d) photos in the folder.")
@click.option("--seed", type=int, default=Settings.seed, show_default=True)
@click.option("--model", default=Settings.model, show_default=True, help="Aligner spec (ViT-B-32, random weights).")
@click.option("--batch-size", type=int, default=Settings.batch_size, show_default=True)
@click.option("--rounds", type=int, default=Settings.rounds, show_default=True, help="(a) timed rounds of each way.")
@click.option("--ingest-vectors", type=int, default=Settings.ingest_vectors, show_default=True)
@click.option("--ingest-rounds", type=int, default=Settings.ingest_rounds, show_default=True)
@click.option("--dim", type=int, default=Settings.dim, show_default=True, help="(b), (d) vector width.")
@click.option("--cluster-photos", type=int, default=Settings.cluster_photos, show_default=True)
@click.option("--stage-photos", type=int, default=Settings.stage_photos, show_default=True,
              help="(d) photos decoded for the per-core rate.")
@click.option("--faiss-vectors", type=int, default=Settings.faiss_vectors, show_default=True)
@click.option("--faiss-lists", type=int, default=Settings.faiss_lists, show_default=True)
@click.option("--shard-vectors", type=int, default=Settings.shard_vectors, show_default=True,
              help="(f) synthetic 384-d vectors.")
@click.option("--shard-count", type=int, default=Settings.shard_count, show_default=True,
              help="(f) shards they are added in.")
@click.option("--in-process", is_flag=True,
              help="(a) runs in this process, its driver's model loaded before timing (not fresh CLI processes).")
@click.option("--only", type=click.Choice(PARTS), multiple=True, default=PARTS, show_default=True,
              help="Parts to run (repeatable).")
@click.option("--work", "work_dir", default="bench-out/ray-work", show_default=True)
@click.option(CHILD_FLAG, "child_params", hidden=True, help="(a)'s timed run in this fresh process (JSON).")
def main(only: tuple[str, ...], work_dir: str, child_params: str | None, out: Path, **sizes) -> None:
    if child_params:
        child_run(json.loads(child_params))
        return
    args = Settings(**sizes)
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    res = {"date": date.today().isoformat(), "machine": bi.machine(), "ray_version": metadata.version("ray"),
           "load_before": load()}
    if "b" in only:
        res["ingest"] = ingest(args, work)
    if "a" in only:
        res["overhead"] = overhead(args, work, args.model)
    if "c" in only:
        res["node_loss"] = node_loss(args, work, args.model)
    if "d" in only:
        res["stages"] = stage_rates(args, work, args.model)
    if "e" in only:
        res["engines"] = engine_overhead(args)
    if "f" in only:
        res["shards"] = shard_builds(args)
    # The page is several tables and notes, so it goes whole as the report's title.
    harness.report("ray", json.loads(json.dumps(res, default=str)), [], out, markdown(res).rstrip("\n"))
    ok = [res["overhead"]["ratio"]["met"], res["overhead"]["agreement"]["met"]] if "overhead" in res else []
    ok += [max(r["vectors_per_s"] for r in res["ingest"]["runs"]) >= TARGETS["ingest_per_s"]] if "ingest" in res else []
    ok += [res["node_loss"]["met"]] if "node_loss" in res else []
    click.get_current_context().exit(0 if all(ok) else 1)


if __name__ == "__main__":
    main()
