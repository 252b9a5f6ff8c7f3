"""CPU per watcher batch of one new photo with a face: the face finder kept across batches vs built per batch.

A watcher's batch of one photo decodes it in the watcher's own process. Built per batch (what
each run did before the watcher kept its source), the finder builds dlib's HOG detector and
loads the landmark and descriptor models again for every batch; kept, they load once. Both
are measured in one run, alternating, on the same index; the tests' plumbing aligner stands
in for the image model (faces do not depend on it).

    python -m benchmarks.bench_watch_faces --batches 8
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import click
from PIL import Image

from benchmarks import harness
from retrieval.ingest.settings import IndexSettings
from retrieval.ingest.source import LocalSource
from retrieval.ingest.watch import Watcher, WatchSettings

FACE = Path(sys.prefix) / "share" / "face-photos" / "obama.jpg"


def _new_face_photo(path: Path, n: int) -> Path:
    """obama.jpg with one pixel changed: new content for the index, the same face for dlib."""
    with Image.open(FACE) as image:
        picture = image.convert("RGB")
    picture.putpixel((n % picture.width, 0), (n % 256, 0, 0))
    picture.save(path, quality=92)
    return path


@harness.command(out="bench-out/watch_faces.json", quick={"batches": 2})
@click.option("--batches", type=int, default=8, show_default=True, help="Batches measured per configuration.")
def main(batches: int, out: Path) -> None:
    from tests.conftest import ColorAligner

    if not FACE.is_file():
        raise click.ClickException(f"{FACE} is missing: `bash scripts/setup.sh --test` unpacks it")
    work = Path(tempfile.mkdtemp(prefix="bench-watch-faces-"))
    folder = work / "photos"
    folder.mkdir()
    _new_face_photo(folder / "seed.jpg", 0)
    watcher = Watcher(work / "idx", ColorAligner(), [folder],
                      WatchSettings(index=IndexSettings(faces=True)))
    res: dict[str, Any] = {"date": str(date.today()), "machine": harness.summary(), "host": harness.machine(),
                           "batches": batches}
    cpu: dict[str, list[float]] = {"kept": [], "per batch": []}
    try:
        watcher.batch("start")  # the first run: the kept finder loads here, outside the timing
        load_before = harness.load()
        for i in range(batches):
            for mode in ("per batch", "kept"):
                if mode == "per batch":
                    watcher.source = LocalSource()  # a new source, hence a new finder: as each run did before
                _new_face_photo(folder / f"new{i:03d}-{mode[0]}.jpg", i * 2 + (mode == "kept") + 1)
                with harness.measure(mode) as run:
                    summary = watcher.batch("1 new")
                assert summary is not None and summary.added == 1 and summary.faces, summary
                cpu[mode].append(run.cpu_s + run.children_cpu_s)
                harness.note(f"{mode}: {cpu[mode][-1] * 1000:.0f} ms CPU")
        res["load_average"] = [load_before, harness.load()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["cpu_ms"] = {mode: {"median": round(statistics.median(v) * 1000), "all": [round(x * 1000) for x in v]}
                     for mode, v in cpu.items()}
    rows = [{"finder": mode, "CPU ms per batch (median)": res["cpu_ms"][mode]["median"],
             "min": min(res["cpu_ms"][mode]["all"]), "max": max(res["cpu_ms"][mode]["all"])} for mode in cpu]
    harness.report("watch_faces", res, rows, out,
                   f"watcher batch of 1 new face photo, {res['date']}, {res['machine']}, "
                   f"load {res['load_average'][0]} → {res['load_average'][1]}")


if __name__ == "__main__":
    main()
