"""Peak memory of `retrieval index` against folder size: 1,000 files vs 10x and 100x more.

The pipeline keeps its per-file bookkeeping in SQLite (retrieval/storage/staging.py) and holds at
most a few chunks of decoded pixels, so the walk, reading, encoding and planning should not
grow with the number of files. Publishing builds the FAISS index, which is n x dim x 4 bytes
by nature, so the table shows the index file's size beside the peaks. Each size is indexed
and then re-indexed unchanged (a rescan), each in a fresh process so peaks do not carry over.
The model's memory does not depend on the folder, so a trivial stand-in aligner (mean colour
of a 4x4 grid, 48 dimensions) on small generated PNGs measures the pipeline alone.

    .venv/bin/python -m benchmarks.bench_memory [--sizes 1000 --sizes 10000 --sizes 100000] [--out bench-out/memory.json]
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
import numpy as np
from PIL import Image

from benchmarks import harness


def make_folder(folder: Path, n: int) -> None:
    rng = np.random.default_rng(n)
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(sub / f"{i:06d}.png")


CHILD = r"""
import json, resource, sys, time
import numpy as np
from retrieval.ingest import pipeline as indexer
from retrieval.aligners.base import Aligner, normalize
from retrieval.ingest.pipeline import IndexSettings
from retrieval.storage.store import IndexStore
from retrieval.media.transform import ImageTransform

class Grid(Aligner):
    spec = identity = "bench/grid"
    dim = 48
    transform = ImageTransform(size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    def encode_images(self, pixels):
        n = len(pixels)
        return normalize(pixels.reshape(n, 3, 4, 4, 4, 4).mean(axis=(3, 5)).reshape(n, -1) + 1.5)
    def encode_texts(self, texts):
        return normalize(np.ones((len(texts), self.dim), np.float32))

def peak_mb(who=resource.RUSAGE_SELF):
    return resource.getrusage(who).ru_maxrss / 1024

# The peak before publishing covers the walk, reading, encoding and planning: the part that
# must not grow with the folder. Publishing then builds the FAISS index, which is n x dim x 4
# bytes by nature (the same bytes a search maps), so it is reported beside its file size.
before_publish = {}
publish = indexer.publish
def measured_publish(*args, **kwargs):
    before_publish["mb"] = peak_mb()
    return publish(*args, **kwargs)
indexer.publish = measured_publish

folder, index = sys.argv[1], sys.argv[2]
store = IndexStore.open(index, create=True)
t = time.perf_counter()
summary = indexer.run(store, Grid(), [folder], settings=IndexSettings(workers=1, batch_size=32))
print(json.dumps({"seconds": time.perf_counter() - t, "added": summary.added, "unchanged": summary.unchanged,
                  "peak_before_publish_mb": before_publish.get("mb"), "peak_rss_mb": peak_mb(),
                  "index_file_mb": store.faiss_path("images", summary.generation).stat().st_size / 2**20,
                  "worker_peak_rss_mb": peak_mb(resource.RUSAGE_CHILDREN)}))
"""


def table_row(r: dict, base: dict) -> dict[str, str]:
    beyond = r["peak_rss_mb"] - base["peak_rss_mb"] - (r["index_file_mb"] - base["index_file_mb"])
    return {
        "files": f"{r['files']:,}",
        "main peak before publishing (MB)": f"{r['peak_before_publish_mb']:.0f}",
        "main peak (MB)": f"{r['peak_rss_mb']:.0f}",
        "FAISS index file (MB)": f"{r['index_file_mb']:.1f}",
        f"main peak beyond the {base['files']:,}-file run, less the index growth (MB)": f"{beyond:+.0f}",
        "decoding worker peak (MB)": f"{r['worker_peak_rss_mb']:.0f}",
        "files/s": f"{r['added'] / r['seconds']:.0f}",
        "re-run, nothing changed: main peak (MB)": f"{r['rescan_peak_rss_mb']:.0f}",
        "re-run seconds": f"{r['rescan_seconds']:.1f}",
    }


@harness.command(out="bench-out/memory.json", quick={"sizes": (200, 400)})
@click.option("--sizes", type=int, multiple=True, default=(1_000, 10_000, 100_000), show_default=True,
              help="Files in each folder indexed (repeatable).")
def main(sizes: tuple[int, ...], out: Path) -> None:
    load_before = harness.load()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            folder = Path(tmp) / f"files-{n}"
            t = time.perf_counter()
            make_folder(folder, n)
            harness.note(f"{n:,} files made in {time.perf_counter() - t:.0f}s; indexing")
            runs = []
            for _ in ("first run", "re-run, nothing changed"):
                done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(Path(tmp) / f"idx-{n}")],
                                      check=True, capture_output=True, text=True)
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            first, again = runs
            assert first["added"] == n and again["unchanged"] == n, runs
            rows.append({"files": n, **first, "rescan_peak_rss_mb": again["peak_rss_mb"],
                         "rescan_seconds": again["seconds"]})
            harness.note(json.dumps(rows[-1]))
    load_after = harness.load()
    figures = {"date": str(date.today()), "machine": harness.summary(), "load_average": [load_before, load_after],
               "rows": rows, "host": harness.machine()}
    harness.report("memory", figures, [table_row(r, rows[0]) for r in rows], out,
                   f"Indexing memory (pipeline only, trivial aligner), {date.today()}, {figures['machine']}, "
                   f"load average {load_before} before, {load_after} after")


if __name__ == "__main__":
    main()
