"""Peak memory of whole commands with the `default` aligner loaded, and where it goes.

Each measurement runs in a fresh process, so that peaks do not carry over:

1. `retrieval index` of N small real photos: scikit-image's 26 sample images, scaled to 40%,
   then 50%, ... of their size and saved as JPEG (quality 90) until there are N;
2. `retrieval eval easy-vqa --limit L`.
   For both: the main process's peak as the kernel counts it (wait4's ru_maxrss), and the peak of
   the whole process tree (main + decoding workers) sampled every 0.1 s from /proc, both as the
   sum of RSS (shared library pages counted once per process, as `top` shows them) and the sum
   of PSS (shared pages split between the processes: what the tree really takes);
3. the parts loaded one by one in one process (its VmHWM and VmRSS after each step), then batches of
   pixels through the whole aligner (random values, already preprocessed: what the aligner sees;
   a batch's working memory depends on its shape, not on what the picture shows);
4. the same batches through one part at a time (the classifier on ONNX Runtime, RapidOCR, MiniLM,
   the experts), each from the same start (torch, faiss and the aligner object): what each adds
   to the peak, and what stays resident after its batches (less, where a part frees its
   working memory between batches; ONNX Runtime's arena keeps it); and the classifier again
   with ONNX Runtime's CPU memory arena off (what that costs in time: seconds per batch, the
   fastest and the mean; on a shared machine only the fastest compares).

The model caches (the classifier's ONNX export, the class embeddings) are built first where
missing, so that every figure is that of a run after the first.

    python -m benchmarks.bench_peak_memory            # 50 photos, 200 pairs; bench-out/peak-memory.json, .md
    python -m benchmarks.bench_peak_memory --quick    # 8 photos, 16 pairs, batches of 8: proves it works
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import click
from PIL import Image

from benchmarks import harness

#: The parts measured alone (the CHILD script's modes besides "steps").
PARTS = ("classifier", "classifier, no arena", "ocr", "minilm", "experts")
#: The CHILD step the parts start from.
START = "the aligner object (no model yet), one batch of pixels"

# One fresh interpreter per measurement: the parts' peaks must not carry over. VmHWM is the
# kernel's peak RSS of this process, so no sampling can miss a short spike.
CHILD = r"""
import json, sys, time

def status(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) // 1024 for line in fh if line.startswith(field))

mode, batch, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
steps = []
def step(name):  # the peak so far, and what is resident now
    steps.append([name, status("VmHWM:"), status("VmRSS:")])

import numpy as np, PIL.Image
step("Python, numpy, Pillow")
if mode == "classifier, no arena":
    import onnxruntime
    class NoArena(onnxruntime.SessionOptions):
        def __init__(self):
            super().__init__()
            self.enable_cpu_mem_arena = False
    onnxruntime.SessionOptions = NoArena  # what retrieval/aligners/onnx_classifier.py instantiates
import torch
step("import torch")
import faiss
step("import faiss")
from retrieval.aligners.conse import ConseAligner
aligner = ConseAligner()
size = aligner.transform.size
# Generated in float32 directly: a float64 draw would add its own transient peak to the start.
pixels = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
step("the aligner object (no model yet), one batch of pixels")
seconds = []
if mode == "warm":
    aligner.onnx, aligner.class_embeddings
elif mode == "steps":
    aligner.onnx
    step("EfficientNet on ONNX Runtime, loaded")
    aligner.text, aligner.class_embeddings
    step("MiniLM (torch) and the class embeddings")
    aligner.experts, aligner.phrases
    step("colour, people and scene experts and their phrases")
    aligner.ocr
    step("RapidOCR, loaded")
    for i in range(batches):
        aligner.encode_images(pixels)
        step(f"batch {i + 1} of {batch} encoded")
else:
    if mode.startswith("classifier"):
        aligner.onnx
        step("EfficientNet on ONNX Runtime, loaded")
    for i in range(batches):
        started = time.perf_counter()
        if mode.startswith("classifier"):
            aligner.logits(pixels)
        elif mode == "ocr":
            aligner.read_words(pixels)
        elif mode == "experts":
            aligner.expert_weights(pixels)
        elif mode == "minilm":
            aligner.text.encode([f"a photo of thing number {i} {j}" for j in range(2 * batch)])
            aligner.class_embeddings
        seconds.append(time.perf_counter() - started)
    step(f"{batches} batches of {batch}")
print(json.dumps({"mode": mode, "steps": steps, "batch_s": seconds}))
"""


# -- the photos ----------------------------------------------------------------------------
def make_photos(folder: Path, n: int) -> list[Path]:
    """`n` small JPEGs of scikit-image's sample images: all of them at 40%, then at 50%, ..."""
    import skimage

    data = Path(skimage.__file__).parent / "data"
    sources = sorted(p for p in data.iterdir() if p.suffix in (".png", ".jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(n):
        src = sources[i % len(sources)]
        scale = 0.4 + 0.1 * (i // len(sources))
        with Image.open(src) as image:
            rgb = image.convert("RGB")
        small = rgb.resize((max(1, int(rgb.width * scale)), max(1, int(rgb.height * scale))), Image.Resampling.BICUBIC)
        path = folder / f"{i:02d}_{src.stem}.jpg"
        small.save(path, "JPEG", quality=90)
        made.append(path)
    return made


# -- watching a command --------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(parent, []).append(int(entry))
    return kids


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants now."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _field(path: str, name: str) -> float:
    """A "Name:   N kB" line of a /proc file, in MiB (0 once the process is gone)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(name):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def watch(label: str, cmd: list[str], log: Path, interval: float = 0.1) -> dict[str, Any]:
    """Run `cmd`; its peak memory in MiB, sampled from /proc and from the kernel's own count."""
    peak = {"main_sampled": 0.0, "tree_rss": 0.0, "tree_pss": 0.0}
    most_children = 0
    with open(log, "w") as err, harness.measure(label) as run:
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT)
        while True:
            # wait4 rather than poll(): it returns the exited process's resource usage as well.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            pids = tree(proc.pid)
            most_children = max(most_children, len(pids) - 1)
            peak["main_sampled"] = max(peak["main_sampled"], _field(f"/proc/{proc.pid}/status", "VmRSS:"))
            peak["tree_rss"] = max(peak["tree_rss"], sum(_field(f"/proc/{p}/status", "VmRSS:") for p in pids))
            peak["tree_pss"] = max(peak["tree_pss"], sum(_field(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids))
            time.sleep(interval)
    if proc.returncode:
        raise click.ClickException(f"{cmd} failed ({proc.returncode}):\n{log.read_text()[-2000:]}")
    # ru_maxrss of a waited-for process is the largest of its own peak and its children's; the
    # main process is far the largest, so this is its peak, exact.
    return {"main_peak_mib": round(usage.ru_maxrss / 1024),
            **{f"{k}_peak_mib": round(v) for k, v in peak.items()}, "most_children": most_children,
            "output_tail": log.read_text()[-300:], **run.as_dict()}


def child(mode: str, batch: int, batches: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(batch), str(batches)],
                          capture_output=True, text=True)
    if done.returncode:
        raise click.ClickException(f"{mode} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def caches_ready() -> bool:
    """Whether the default aligner's ONNX export and class embeddings are cached already."""
    from retrieval.aligners.conse import cache_dir

    folder = cache_dir()
    return any(folder.glob("classifier-*.onnx")) and any(folder.glob("conse-classes-*.npy"))


# -- the report ----------------------------------------------------------------------------
def markdown(res: dict[str, Any]) -> str:
    before, after = res["load_average"]
    out = [f"Peak memory with the `default` aligner, {res['date']}, {res['machine']}, "
           f"load average {before} before, {after} after (MiB)"]
    out.append(harness.table([{
        "command": r["label"],
        "main process peak (kernel)": f"{r['main_peak_mib']:,}",
        "main, sampled": f"{r['main_sampled_peak_mib']:,}",
        "main + workers, RSS sum": f"{r['tree_rss_peak_mib']:,}",
        "main + workers, PSS sum": f"{r['tree_pss_peak_mib']:,}",
        "child processes": r["most_children"],
        "seconds": f"{r['wall_s']:.0f}",
    } for r in res["commands"]]))
    if res.get("steps"):
        out.append("The parts loaded one by one in one process (VmHWM and VmRSS after each step):")
        out.append(harness.table([{"step": name, "peak after it": f"{peak:,}", "resident after it": f"{now:,}"}
                                  for name, peak, now in res["steps"]["steps"]]))
    if res.get("parts"):
        out.append("One part at a time, from the same start (torch, faiss, the aligner object, the pixels); "
                   "the no-arena run imports ONNX Runtime first, hence its higher start:")
        rows = []
        for p in res["parts"]:
            start = next(s for s in p["steps"] if s[0] == START)
            end = p["steps"][-1]
            rows.append({"part": p["mode"], "peak at the start": f"{start[1]:,}", "peak after": f"{end[1]:,}",
                         "added to the peak": f"{end[1] - start[1]:+,}",
                         "still resident after, beyond the start": f"{end[2] - start[2]:+,}",
                         "s per batch, fastest": f"{min(p['batch_s']):.2f}",
                         "s per batch, mean": f"{sum(p['batch_s']) / len(p['batch_s']):.2f}"})
        out.append(harness.table(rows))
    return "\n\n".join(out)


@harness.command(out="bench-out/peak-memory.json", quick={"photos": 8, "eval_limit": 16, "batch": 8, "batches": 1})
@click.option("--photos", type=int, default=50, show_default=True, help="Photos in the folder indexed.")
@click.option("--eval-limit", type=int, default=200, show_default=True, help="`eval easy-vqa --limit`.")
@click.option("--batch", type=int, default=32, show_default=True, help="Images per batch in the breakdown.")
@click.option("--batches", type=int, default=3, show_default=True, help="Batches through each part in the breakdown.")
@click.option("--breakdown/--no-breakdown", default=True, show_default=True,
              help="Also measure the parts (six more processes that load models).")
def main(photos: int, eval_limit: int, batch: int, batches: int, breakdown: bool, out: Path) -> None:
    if not caches_ready():
        harness.note("building the model caches first (ONNX export, class embeddings)")
        child("warm", 1, 1)
    load_before = harness.load()
    res: dict[str, Any] = {"date": str(date.today()), "machine": harness.summary(), "host": harness.machine(),
                           "settings": {"photos": photos, "eval_limit": eval_limit, "batch": batch, "batches": batches}}
    cli = [sys.executable, "-m", "retrieval"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        make_photos(folder, photos)
        res["commands"] = []
        index = ["index", str(folder), "--index", str(Path(tmp) / "idx"), "-q"]
        evaluate = ["eval", "easy-vqa", "--limit", str(eval_limit)]
        for label, args in ((f"`retrieval index` of {photos} photos", index),
                            (f"`retrieval eval easy-vqa --limit {eval_limit}`", evaluate)):
            harness.note(label)
            res["commands"].append(watch(label, cli + args, Path(tmp) / "command.log"))
            harness.note(json.dumps({k: v for k, v in res["commands"][-1].items() if k != "output_tail"}))
    if breakdown:
        harness.note("the parts one by one")
        res["steps"] = child("steps", batch, batches)
        res["parts"] = []
        for part in PARTS:
            harness.note(f"part: {part}")
            res["parts"].append(child(part, batch, batches))
    res["load_average"] = [load_before, harness.load()]
    harness.report("peak-memory", res, [], out, markdown(res))


if __name__ == "__main__":
    main()
