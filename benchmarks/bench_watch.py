"""`retrieval watch`: how soon a photo copied in is searchable, and the watcher's memory over churn.

A real `retrieval watch` process (the CLI, the aligner given by --model) watches a temporary
folder seeded with --seed-photos real photos (scikit-image's samples, each saved with a few
pixels changed so every file is new content that must be encoded). Then:

1. latency: --copies times, on the idle library, a new photo is copied in and the catalog is
   polled (every 20 ms, as a searcher sees published rows) until its path is there; the median
   and the slowest, beside the watcher's debounce (its quiet period is the floor);
2. churn: for --minutes, in a loop, a photo is copied in, one renamed, one deleted (a pause of
   --pause seconds between rounds), and the watcher's resident memory (VmRSS of the process,
   and of its decoding workers when some are running) is sampled every 10 s: first, last, the
   highest, and the slope of a straight line through the samples.

    python -m benchmarks.bench_watch                  # 20 copies, an hour of churn; bench-out/watch.json, .md
    python -m benchmarks.bench_watch --minutes 10     # the run docs/watching.md reports
    python -m benchmarks.bench_watch --quick          # 3 copies, half a minute of churn, the test aligner
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import click
import numpy as np
from PIL import Image

from benchmarks import harness

#: A `retrieval watch` whose aligner is the tests' plumbing one (--quick: the loop, not the model).
COLOR_DRIVER = """
import sys
from retrieval import aligners
from tests.conftest import ColorAligner
aligner = ColorAligner()
aligners.load_aligner = lambda spec="default", device=None: aligner
from retrieval.cli import main
main(sys.argv[1:])
"""


class Photos:
    """New photo files on demand: scikit-image's samples, each copy with a few pixels changed."""

    def __init__(self) -> None:
        import skimage

        data = Path(skimage.__file__).parent / "data"
        self.sources = []
        for path in sorted(data.glob("*")):
            if path.suffix.lower() not in (".png", ".jpg"):
                continue
            try:
                with Image.open(path) as img:
                    if min(img.size) >= 128:
                        self.sources.append(np.asarray(img.convert("RGB")))
            except OSError:
                continue
        self.n = 0

    def write(self, path: Path) -> Path:
        pixels = self.sources[self.n % len(self.sources)].copy()
        pixels[0, : 8] = np.frombuffer(self.n.to_bytes(8, "little") * 3, dtype=np.uint8).reshape(8, 3)
        self.n += 1
        tmp = path.parent / f".{path.name}.part"  # written aside, then renamed: what copying tools do
        Image.fromarray(pixels).save(tmp, format="JPEG", quality=90)
        os.replace(tmp, path)
        return path


def indexed(index: Path, path: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{index / 'catalog.db'}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT 1 FROM images WHERE path = ?", (str(path),)).fetchone() is not None
    except sqlite3.OperationalError:
        return False


def wait_until(check, limit: float = 600.0, every: float = 0.02) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > limit:
            raise RuntimeError("the watcher did not index the photo in time")
        time.sleep(every)
    return time.monotonic() - started


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its children (decoding workers), in MB."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            continue
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(c) for c in fh.read().split()]
    except OSError:
        return []


@harness.command(out="bench-out/watch.json", quick={"copies": 3, "minutes": 0.5, "seed_photos": 6, "model": "test"})
@click.option("--model", default="default", show_default=True, help="Aligner spec; 'test' is the tests' plumbing aligner.")
@click.option("--seed-photos", type=int, default=50, show_default=True, help="Photos in the folder before watching.")
@click.option("--copies", type=int, default=20, show_default=True, help="Photos copied in one at a time for the latency.")
@click.option("--minutes", type=float, default=60.0, show_default=True, help="Minutes of churn for the memory.")
@click.option("--pause", type=float, default=3.0, show_default=True,
              help="Seconds between churn rounds: above --debounce, so that each round is a batch.")
@click.option("--debounce", type=float, default=2.0, show_default=True, help="The watcher's --debounce.")
def main(model: str, seed_photos: int, copies: int, minutes: float, pause: float, debounce: float, out: Path) -> None:
    photos = Photos()
    work = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    folder, index = work / "photos", work / "idx"
    folder.mkdir()
    for i in range(seed_photos):
        photos.write(folder / f"seed{i:04d}.jpg")
    if model == "test":
        argv = [sys.executable, "-c", COLOR_DRIVER]
    else:
        argv = [sys.executable, "-m", "retrieval"]
    argv += ["watch", str(folder), "--index", str(index), "--debounce", str(debounce)]
    if model != "test":
        argv += ["--model", model]
    log = work / "watch.log"
    load_before = harness.load()
    proc = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parent.parent)
    res: dict[str, Any] = {"date": str(date.today()), "machine": harness.summary(), "host": harness.machine(),
                           "model": model, "seed_photos": seed_photos, "debounce_s": debounce}
    try:
        harness.note("indexing the seed photos")
        res["first_run_s"] = round(wait_until(lambda: indexed(index, folder / f"seed{seed_photos - 1:04d}.jpg"), 3600), 2)
        time.sleep(debounce + 1)
        latencies = []
        for i in range(copies):
            path = photos.write(folder / f"new{i:04d}.jpg")
            latencies.append(wait_until(lambda p=path: indexed(index, p)))
            harness.note(f"copy {i + 1}: searchable after {latencies[-1]:.2f}s")
            time.sleep(debounce + 0.5)  # idle again before the next
        res["latency_s"] = {"median": round(statistics.median(latencies), 2), "max": round(max(latencies), 2),
                            "min": round(min(latencies), 2), "all": [round(x, 2) for x in latencies]}
        samples: list[tuple[float, float]] = []
        started = last_sample = time.monotonic()
        samples.append((0.0, rss_mb(proc.pid)))
        rounds = 0
        live = [folder / f"new{i:04d}.jpg" for i in range(copies)]
        while time.monotonic() - started < minutes * 60:
            live.append(photos.write(folder / f"churn{rounds:06d}.jpg"))
            renamed = live.pop(0)
            target = renamed.with_name(f"r{rounds:06d}.jpg")
            os.rename(renamed, target)
            live.append(target)
            if len(live) > 30:
                live.pop(0).unlink()
            rounds += 1
            time.sleep(pause)
            if time.monotonic() - last_sample >= 10:
                last_sample = time.monotonic()
                samples.append((last_sample - started, rss_mb(proc.pid)))
                harness.note(f"{samples[-1][0]:.0f}s: {samples[-1][1]:.0f} MB")
        mb = [m for _, m in samples]
        slope = float(np.polyfit([t for t, _ in samples], mb, 1)[0]) * 3600 if len(samples) > 2 else 0.0
        res["churn"] = {"minutes": minutes, "rounds": rounds, "samples": len(samples),
                        "rss_first_mb": round(mb[0]), "rss_last_mb": round(mb[-1]), "rss_max_mb": round(max(mb)),
                        "slope_mb_per_hour": round(slope, 1), "series": [(round(t), round(m)) for t, m in samples]}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            res["exit_status_on_sigterm"] = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            res["exit_status_on_sigterm"] = "killed after 120 s"
        res["batch_lines"] = sum(1 for line in log.read_text().splitlines() if line.startswith("batch "))
        res["load_average"] = [load_before, harness.load()]
        shutil.rmtree(work, ignore_errors=True)
    rows = [{
        "aligner": model, "latency median (s)": res["latency_s"]["median"], "latency max (s)": res["latency_s"]["max"],
        "churn minutes": minutes, "churn rounds": res["churn"]["rounds"], "batches": res["batch_lines"],
        "RSS first / last / max (MB)": f"{res['churn']['rss_first_mb']} / {res['churn']['rss_last_mb']} / "
                                       f"{res['churn']['rss_max_mb']}",
        "RSS slope (MB/hour)": res["churn"]["slope_mb_per_hour"], "exit on SIGTERM": res["exit_status_on_sigterm"],
    }]
    harness.report("watch", res, rows, out, f"`retrieval watch`, {res['date']}, {res['machine']}, "
                                            f"load {res['load_average'][0]} → {res['load_average'][1]}")


if __name__ == "__main__":
    main()
