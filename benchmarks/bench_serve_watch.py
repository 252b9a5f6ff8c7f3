"""`retrieval serve` while new photos are encoded: a watcher beside the server, or inside it.

The test `retrieval serve --watch` would have to pass before it is offered (docs/watching.md).
One library (--seed-photos real photos, indexed first with the CLI) and one burst (--burst new
photos copied in at once), in three arrangements, each with a fresh server:

1. idle: `retrieval serve` alone, no encoding (the reference);
2. two processes: `retrieval serve` and `retrieval watch` side by side, the set-up
   docs/watching.md recommends;
3. one process: the server and a watcher thread in one Python process, the shape
   `serve --watch` would have (a prototype made here, not a command).

While the burst is indexed, one client sends text queries to /api/search one at a time, each a
new caption (so each is encoded), and records every latency: p50, p99 and the slowest, beside
the seconds until the whole burst is searchable, the server's resident memory, and the load.

    python -m benchmarks.bench_serve_watch                 # bench-out/serve-watch.json, .md
    python -m benchmarks.bench_serve_watch --quick         # 10 seed photos, a burst of 8
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import click
import httpx

from benchmarks import harness
from benchmarks.bench_server import free_port, wait_healthy
from benchmarks.bench_watch import Photos, rss_mb

ROOT = Path(__file__).resolve().parent.parent

#: The one-process arrangement: the app `retrieval serve` builds, and a watcher in a thread.
ONE_PROCESS = """
import sys, threading
from retrieval.ingest.watch import WatchSettings, open_watcher
from retrieval.server.app import ServerSettings, create_app
from retrieval.server.listen import listener

folder, index, port, debounce = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
app = create_app(ServerSettings(indexes=[index], port=port))
app.state.query_thread.call(app.state.library.warm)
watcher = open_watcher([folder], index, None, WatchSettings(quiet=debounce), report=print)
threading.Thread(target=watcher.run, daemon=True, name="watcher").start()
listener(app, "127.0.0.1", port).run()
"""


def count_indexed(index: Path) -> int:
    try:
        with sqlite3.connect(f"file:{index / 'catalog.db'}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def start(argv: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def arrangement(kind: str, folder: Path, index: Path, photos: Photos, burst: int, debounce: float,
                texts: list[str], work: Path) -> dict[str, Any]:
    """One arrangement: start it, warm it, copy the burst in, query until it is all searchable."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    if kind == "one process":
        server = start([sys.executable, "-c", ONE_PROCESS, str(folder), str(index), str(port), str(debounce)],
                       work / "one.log")
        procs.append(server)
    else:
        server = start([sys.executable, "-m", "retrieval", "serve", "--index", str(index), "--port", str(port)],
                       work / f"serve-{kind}.log")
        procs.append(server)
        if kind == "two processes":
            procs.append(start([sys.executable, "-m", "retrieval", "watch", str(folder), "--index", str(index),
                                "--debounce", str(debounce)], work / "watch.log"))
    try:
        wait_healthy(base, server, work / "server.log")
        expected = count_indexed(index) + (burst if kind != "idle" else 0)
        with httpx.Client(base_url=base, timeout=60) as client:
            client.get("/api/search", params={"q": "warm up", "index": index.name, "k": 10})
            time.sleep(debounce + 3)  # the watcher's start-up catch-up (nothing new) is over
            first = photos.n
            if kind != "idle":
                for i in range(burst):
                    photos.write(folder / f"burst{first + i:05d}.jpg")
            started = time.monotonic()
            times: list[float] = []
            done_s = None
            errors = 0
            rss = []
            n = 0
            # Queries run until the burst is searchable (at most 15 minutes), and at least as many
            # as the idle run makes; past the captions, each comes again with a number (still new).
            while (done_s is None or n < 60) and time.monotonic() - started < 900:
                text = texts[n % len(texts)] + (f" {n // len(texts)}" if n >= len(texts) else "")
                t = time.perf_counter()
                r = client.get("/api/search", params={"q": text, "index": index.name, "k": 10})
                times.append((time.perf_counter() - t) * 1000)
                errors += r.status_code != 200
                n += 1
                if done_s is None and count_indexed(index) >= expected:
                    done_s = time.monotonic() - started
                if n % 10 == 0:
                    rss.append(rss_mb(server.pid))
                if kind == "idle" and n >= 60:
                    break
        return {"arrangement": kind, "queries": n, **harness.percentiles(times, (50, 99)),
                "max_ms": round(max(times), 1), "errors": errors,
                "burst_searchable_s": None if done_s is None else round(done_s, 1),
                "server_rss_max_mb": round(max(rss)) if rss else None}
    finally:
        for proc in procs:
            stop(proc)


@harness.command(out="bench-out/serve-watch.json", quick={"seed_photos": 10, "burst": 8})
@click.option("--seed-photos", type=int, default=50, show_default=True, help="Photos indexed before the runs.")
@click.option("--burst", type=int, default=60, show_default=True, help="New photos copied in at once per arrangement.")
@click.option("--debounce", type=float, default=2.0, show_default=True, help="The watcher's --debounce.")
def main(seed_photos: int, burst: int, debounce: float, out: Path) -> None:
    photos = Photos()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-watch-"))
    folder, index = work / "photos", work / "idx"
    folder.mkdir()
    for i in range(seed_photos):
        photos.write(folder / f"seed{i:04d}.jpg")
    harness.note(f"indexing {seed_photos} seed photos")
    subprocess.run([sys.executable, "-m", "retrieval", "index", str(folder), "--index", str(index)],
                   check=True, cwd=ROOT, capture_output=True)
    texts = harness.dev_captions()
    load_before = harness.load()
    res: dict[str, Any] = {"date": str(date.today()), "machine": harness.summary(), "host": harness.machine(),
                           "seed_photos": seed_photos, "burst": burst, "debounce_s": debounce, "runs": []}
    try:
        for kind in ("idle", "two processes", "one process"):
            harness.note(kind)
            res["runs"].append(arrangement(kind, folder, index, photos, burst, debounce, texts, work))
            harness.note(str(res["runs"][-1]))
    finally:
        res["load_average"] = [load_before, harness.load()]
        shutil.rmtree(work, ignore_errors=True)
    rows = [{"arrangement": r["arrangement"], "queries": r["queries"], "p50 (ms)": round(r["p50"], 1), "p99 (ms)": round(r["p99"], 1),
             "slowest (ms)": r["max_ms"], "errors": r["errors"], "burst searchable (s)": r["burst_searchable_s"] if r["arrangement"] != "idle" else "-",
             "server RSS max (MB)": r["server_rss_max_mb"]} for r in res["runs"]]
    harness.report("serve-watch", res, rows, out,
                   f"`retrieval serve` while {burst} new photos are encoded, {res['date']}, {res['machine']}, "
                   f"load {res['load_average'][0]:.1f} -> {res['load_average'][1]:.1f}")


if __name__ == "__main__":
    main()
