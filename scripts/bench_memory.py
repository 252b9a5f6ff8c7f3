"""Peak memory of `retrieval index` against folder size: 1,000 files vs 10x and 100x more.

The pipeline holds per-file metadata (a path, a hash) but never more than a few chunks of
decoded pixels, so peak memory should barely move with the number of files. The model's
memory does not depend on the folder at all, so this measures the pipeline alone with a
trivial stand-in aligner (mean colour of a 4x4 grid) on small generated PNGs; each size
runs in a fresh process so peaks do not carry over.

    .venv/bin/python scripts/bench_memory.py [--sizes 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(folder: Path, n: int) -> None:
    rng = np.random.default_rng(n)
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(sub / f"{i:06d}.png")


CHILD = r"""
import json, resource, sys, time
import numpy as np
from retrieval import indexer
from retrieval.aligners.base import Aligner, normalize
from retrieval.indexer import IndexSettings
from retrieval.store import IndexStore
from retrieval.transform import ImageTransform

class Grid(Aligner):
    spec = identity = "bench/grid"
    dim = 48
    transform = ImageTransform(size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    def encode_images(self, pixels):
        n = len(pixels)
        return normalize(pixels.reshape(n, 3, 4, 4, 4, 4).mean(axis=(3, 5)).reshape(n, -1) + 1.5)
    def encode_texts(self, texts):
        return normalize(np.ones((len(texts), self.dim), np.float32))

folder, index = sys.argv[1], sys.argv[2]
store = IndexStore.open(index, create=True)
t = time.perf_counter()
summary = indexer.run(store, Grid(), [folder], settings=IndexSettings(workers=1, batch_size=32))
print(json.dumps({"seconds": time.perf_counter() - t, "added": summary.added,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--out", type=Path, default=Path("bench-out/memory.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            folder = Path(tmp) / f"files-{n}"
            t = time.perf_counter()
            make_folder(folder, n)
            print(f"{n:,} files made in {time.perf_counter() - t:.0f}s; indexing", file=sys.stderr, flush=True)
            out = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(Path(tmp) / f"idx-{n}")],
                                 check=True, capture_output=True, text=True)
            rows.append({"files": n, **json.loads(out.stdout.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": str(date.today()), "rows": rows}, indent=2))
    print(f"Indexing memory (pipeline only, trivial aligner), {date.today()}\n")
    print("| files | peak RSS main (MB) | peak RSS worker (MB) | files/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['files']:,} | {r['peak_rss_mb']:.0f} | {r['worker_peak_rss_mb']:.0f} | {r['added'] / r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
