"""What checking a FAISS file costs: checksums over the same bytes, and a stat, in one run.

retrieval.storage.integrity records a CRC-32 of every published FAISS file; searches compare size
and mtime always and the checksum on first open of files up to 64 MB. This measures the
candidates on one buffer (hashlib and zlib only: xxhash is not installed here) and the
per-query cost of the stat, with the load average beside the figures.

    python -m benchmarks.bench_checksum --mb 256
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import zlib
from collections.abc import Callable

import click
import numpy as np

from benchmarks.harness import command, cores, load, timed


def rate(fn: Callable[[bytes], object], data: bytes, repeat: int = 3) -> float:
    """GB/s of the best of `repeat` runs of `fn` over `data`."""
    return len(data) / min(timed(lambda: fn(data), repeat)) / 1e9


@command(quick={"mb": 8})
@click.option("--mb", type=int, default=256, show_default=True, help="Size of the buffer checked, in MB.")
def main(mb: int) -> None:
    data = np.random.default_rng(0).integers(0, 256, mb * 2**20, dtype=np.uint8).tobytes()
    print(f"{mb} MB buffer, load average {load():.1f} ({cores()}-core machine shared with other work)")
    for name, fn in [
        ("zlib.crc32 (chosen)", zlib.crc32),
        ("zlib.adler32", zlib.adler32),
        ("hashlib.blake2b", lambda b: hashlib.blake2b(b).digest()),
        ("hashlib.sha256", lambda b: hashlib.sha256(b).digest()),
        ("hashlib.md5", lambda b: hashlib.md5(b).digest()),
    ]:
        print(f"  {name:<22} {rate(fn, data):6.2f} GB/s")
    from retrieval.storage.integrity import crc32_of

    with tempfile.NamedTemporaryFile() as fh:
        fh.write(data)
        fh.flush()
        started = time.perf_counter()
        crc32_of(fh.name)
        print(f"  crc32_of(file, page cache) {len(data) / (time.perf_counter() - started) / 1e9:6.2f} GB/s")
        started = time.perf_counter()
        for _ in range(10_000):
            os.stat(fh.name)
        print(f"  os.stat per query        {(time.perf_counter() - started) / 10_000 * 1e6:6.1f} us")
    print(f"load average after: {load():.1f}")


if __name__ == "__main__":
    main()
