"""What looking for faces adds to `default` indexing: images/s with faces off and on, on photos with
people and photos without, in one run.

- Photos with people: the labelled set's (benchmarks/people_eval.py) stills and video frames
  (saved as JPEG files), one or more faces each.
- Photos without people: the dev set's photos (`scripts/setup.sh --devset`) whose two captions
  name no person, the same count.
- Each saved `--copies` times at JPEG qualities 92, 91...: other contents to the indexer, the
  same work, so that a run's fixed costs (starting the workers, loading the models) weigh little.

Four configurations: faces off; faces on as shipped (dlib's ResNet descriptor read from its file
and run by numpy, retrieval/aligners/face_resnet.py); faces on with it run by torch; and faces on
with dlib's own descriptor (the same descriptors, dlib's code: what shipped before), so one run
gives the before and after and the alternative. Each configuration indexes its folder into a
fresh index with the `default` aligner loaded once (outside the timing) and the indexer's default
workers; configurations take turns, `--rounds` times, and the median run counts: wall time
(images/s) and CPU time of this process and its workers per photo (less swayed by the other work
of a shared machine). Faces on includes loading the face models in the workers (and, for torch,
importing it there), as every index run does.

Then the descriptor alone, as a decoding worker runs it (on one thread): CPU ms per face of each
descriptor on the aligned chips of the labelled set's faces, one batch per photo; and the CPU
seconds a fresh process (a decoding worker) spends to load each one, imports included.

    python -m benchmarks.bench_people_cost [--rounds 3] [--photos 40]
"""

from __future__ import annotations

import csv
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from PIL import Image, ImageOps

from benchmarks.harness import command, load, machine, note, report
from benchmarks.people_eval import labelled_set, picture

PEOPLE_WORDS = re.compile(r"\b(man|men|woman|women|person|people|boy|girl|child|children|kid|face|faces|crowd|lady|"
                          r"player|soldier|students|cyclist|friends|astronaut|portrait|someone|he|she|his|her)\b", re.I)


def save_copies(image: Image.Image, folder: Path, stem: str, copies: int) -> int:
    """`copies` JPEGs of one picture at slightly different qualities: other contents to the
    indexer (which skips a content it has), the same decoding and detection work."""
    for c in range(copies):
        image.save(folder / f"{stem}-{c}.jpg", quality=92 - c)
    return copies


def with_people(folder: Path, count: int, copies: int) -> int:
    folder.mkdir(parents=True)
    written = 0
    for item in labelled_set():
        if written >= count or not item.path.is_file() or item.faces == 0:
            continue
        save_copies(picture(item), folder, f"{written:03d}", copies)
        written += 1
    return written * copies


def without_people(folder: Path, count: int, copies: int) -> int:
    from retrieval.evaluation.devset import SETS, resolve, site_roots

    folder.mkdir(parents=True)
    with open(SETS["v2"], newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if not PEOPLE_WORDS.search(r["caption_1"] + " " + r["caption_2"])]
    pairs, _ = resolve(rows, site_roots())
    paths = list(dict.fromkeys(p for p, _ in pairs))[:count]
    for i, path in enumerate(paths):
        with Image.open(path) as opened:
            save_copies(ImageOps.exif_transpose(opened).convert("RGB"), folder, f"{i:03d}", copies)
    return len(paths) * copies


def descriptor_ms(rounds: int) -> dict[str, float]:
    """CPU ms per face of each descriptor on the labelled set's chips (median of `rounds` passes),
    torch on one thread as in a decoding worker; the chips are made once, by dlib."""
    import torch

    from retrieval.aligners.faces import DESCRIPTORS, FaceFinder, FaceSettings

    finders = {d: FaceFinder(FaceSettings(descriptor=d)).load() for d in DESCRIPTORS}
    batches = []
    for item in labelled_set():
        if item.path.is_file() and item.faces:
            image = picture(item)
            chips = finders["numpy"].chips(image, finders["numpy"].detect(image))
            if chips:
                batches.append(chips)
    faces = sum(len(b) for b in batches)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for name, finder in finders.items():
            finder.describe(batches[0])  # first call: allocations, oneDNN's kernel choice
            passes = []
            for _ in range(rounds):
                started = time.process_time()
                for chips in batches:
                    finder.describe(chips)
                passes.append(time.process_time() - started)
            out[name] = round(statistics.median(passes) / faces * 1000, 1)
    finally:
        torch.set_num_threads(threads)
    note(f"descriptor CPU ms per face over {faces} faces: {out}")
    return out


LOAD_CODE = """
import sys, time
from retrieval.aligners.faces import FaceFinder, FaceSettings
finder = FaceFinder(FaceSettings(descriptor=sys.argv[1]))
started = time.process_time()
finder._model("resnet")
print(time.process_time() - started)
"""


def load_cpu_s(descriptor: str, rounds: int) -> float:
    """CPU seconds a fresh process spends loading `descriptor` (imports included), median of `rounds`."""
    runs = [float(subprocess.run([sys.executable, "-c", LOAD_CODE, descriptor], check=True, capture_output=True,
                                 text=True).stdout.split()[-1]) for _ in range(rounds)]
    return round(statistics.median(runs), 2)


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished children (the decoding workers, which an
    index run ends): on a shared machine the work done, where wall time also counts waiting."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@command(out="bench-out/people_cost.json", quick={"rounds": 1, "photos": 8, "copies": 1})
@click.option("--rounds", default=3, show_default=True, help="Runs of each configuration (the median counts).")
@click.option("--photos", default=40, show_default=True, help="Distinct photos in each folder at most.")
@click.option("--copies", default=3, show_default=True,
              help="JPEGs of each photo (qualities 92, 91...): enough photos that the runs' fixed costs weigh little.")
def main(out: Path, rounds: int, photos: int, copies: int) -> None:
    from retrieval.aligners import load_aligner
    from retrieval.aligners.faces import FaceSettings
    from retrieval.ingest import pipeline
    from retrieval.ingest.settings import IndexSettings
    from retrieval.storage.store import IndexStore

    work = Path(tempfile.mkdtemp(prefix="bench-people-cost-"))
    folders = {"with people": work / "people", "without people": work / "none"}
    counts = {"with people": with_people(folders["with people"], photos, copies)}
    counts["without people"] = without_people(folders["without people"], counts["with people"] // copies, copies)
    aligner = load_aligner("default")
    # One untimed run first: the aligner's first batches and the OS's file cache warm up.
    warm = IndexStore.open(str(work / "warm"), create=True)
    try:
        pipeline.run(warm, aligner, [folders["without people"]], settings=IndexSettings(faces=True))
    finally:
        warm.close()
    before = load()
    # Faces off, faces on as shipped (dlib's ResNet run by numpy), run by torch, and run by dlib
    # (as shipped before) for the before/after in docs/people.md.
    configs: dict[str, FaceSettings | None] = {
        "off": None, "on": FaceSettings(), "on_torch": FaceSettings(descriptor="torch"), "on_dlib": FaceSettings(descriptor="dlib"),
    }
    times: dict[tuple[str, str], list[float]] = {(k, c): [] for k in folders for c in configs}
    cpu_runs: dict[tuple[str, str], list[float]] = {(k, c): [] for k in folders for c in configs}
    for r in range(rounds):
        for (kind, config), runs in times.items():
            face_settings = configs[config]
            index = work / f"idx-{r}-{kind.replace(' ', '-')}-{config}"
            store = IndexStore.open(str(index), create=True)
            try:
                started, cpu = time.perf_counter(), _cpu_s()
                settings = IndexSettings(faces=face_settings is not None, face_settings=face_settings)
                summary = pipeline.run(store, aligner, [folders[kind]], settings=settings)
                runs.append(time.perf_counter() - started)
                cpu_runs[(kind, config)].append(_cpu_s() - cpu)
                faces_found = store.catalog.count("faces") if face_settings is not None else 0
            finally:
                store.close()
            note(f"{kind}, faces {config}: {summary.line()} ({faces_found} faces)")
    rows = []
    for kind in folders:
        wall = {c: statistics.median(times[(kind, c)]) for c in configs}
        cpu_s = {c: statistics.median(cpu_runs[(kind, c)]) for c in configs}
        rows.append({"photos": kind, "count": counts[kind],
                     **{f"img_s_faces_{c}": round(counts[kind] / wall[c], 2) for c in configs},
                     **{f"cpu_ms_per_photo_faces_{c}": round(cpu_s[c] / counts[kind] * 1000) for c in configs},
                     "added_cpu_dlib": f"{(cpu_s['on_dlib'] / cpu_s['off'] - 1) * 100:+.0f}%",
                     "added_cpu_torch": f"{(cpu_s['on_torch'] / cpu_s['off'] - 1) * 100:+.0f}%",
                     "added_cpu_now": f"{(cpu_s['on'] / cpu_s['off'] - 1) * 100:+.0f}%",
                     "aim_met_now": cpu_s["on"] <= 1.3 * cpu_s["off"],
                     **{f"runs_s_faces_{c}": [round(t, 1) for t in times[(kind, c)]] for c in configs}})
    per_face = descriptor_ms(rounds)
    loading = {d: load_cpu_s(d, rounds) for d in per_face}
    note(f"descriptor load CPU s in a fresh process: {loading}")
    after = load()
    shutil.rmtree(work, ignore_errors=True)
    report("people_cost", {"machine": machine(), "load_before": before, "load_after": after, "aim": "+30% CPU", "rows": rows,
                           "descriptor_cpu_ms_per_face": per_face, "descriptor_load_cpu_s": loading}, rows, out,
           title=f"`default` indexing with faces off and on, median of {rounds} runs; load average {before:.1f} before, "
                 f"{after:.1f} after (the machine was shared); descriptor CPU ms per face on one thread: {per_face}; "
                 f"CPU s to load it in a fresh process: {loading}")


if __name__ == "__main__":
    main()
