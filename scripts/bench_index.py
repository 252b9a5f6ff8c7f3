"""Indexing speed on a folder of typical photos, four ways, in one run.

On the same folder of JPEG photos (2 to 12 megapixels) and the same aligner (an open_clip
architecture, ViT-B-32 by default, with one random-weights checkpoint shared by both tools):

1. encoder only: the aligner's forward pass alone over already-decoded batches of these
   photos; the ceiling for any pipeline on this machine;
2. sequential: decode (full size), preprocess and encode one batch after another in one
   process, as simple tools do;
3. ``retrieval index``: ``retrieval.api.build_index`` into a fresh index, the model already
   loaded (walk, hash, decode in workers, encode, catalog writes, FAISS build, publish); and
   the real CLI in a fresh process, start-up and model load included;
4. clip-retrieval's ``clip_inference`` on the folder, in its own virtual environment
   (created here from PyPI on first use; see ``clip_retrieval_bench.py``), same checkpoint.

It prints progress, then writes a markdown table and a JSON file with images/s for each,
the three target ratios, the machine (CPU model, cores), the date and the load average.
Vectors are cross-checked: the index's (draft-decoded, worker-made) and clip-retrieval's
against the sequential way's, by cosine similarity.

    .venv/bin/python scripts/bench_index.py                       # 300 photos, 3 rounds
    .venv/bin/python scripts/bench_index.py --photos 100 --rounds 1 --out bench-out/quick

Top-level imports stay light on purpose: the indexer's worker processes are spawned, and
spawn re-imports this file in each of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import date
from importlib import metadata
from pathlib import Path

import clip_retrieval_bench as crb

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"vs_encoder_only": 0.8, "vs_sequential": 1.5, "vs_clip_retrieval": 1.0}


def log(msg: str) -> None:
    print(f"[bench_index] {msg}", flush=True)


# -- machine and load -------------------------------------------------------------------
def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "open_clip": metadata.version("open_clip_torch"),
        "pillow": metadata.version("pillow"),
    }


class Meter:
    """Wall time, this process tree's CPU seconds and everyone else's over a stage.

    The machine is shared; `others_cpu_s` (busy CPU time of the whole machine minus ours)
    says how much a figure may have been slowed by other work.
    """

    def __enter__(self) -> Meter:
        self.load_before = round(os.getloadavg()[0], 2)
        self.t0, self.cpu0 = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        own0, busy0 = self.cpu0
        own1, busy1 = self._cpu()
        self.own_cpu_s = own1 - own0
        self.others_cpu_s = max(0.0, (busy1 - busy0) - self.own_cpu_s)
        self.load_after = round(os.getloadavg()[0], 2)

    @staticmethod
    def _cpu() -> tuple[float, float]:
        own = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            ru = resource.getrusage(who)
            own += ru.ru_utime + ru.ru_stime
        try:
            with open("/proc/stat") as fh:
                ticks = [int(x) for x in fh.readline().split()[1:]]
            busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            busy = own
        return own, busy

    def report(self, images: int) -> dict:
        return {
            "images": images,
            "seconds": round(self.seconds, 2),
            "images_per_s": round(images / self.seconds, 2),
            "own_cpu_s": round(self.own_cpu_s, 1),
            "others_cpu_s": round(self.others_cpu_s, 1),
            "load_before": self.load_before,
            "load_after": self.load_after,
        }


# -- the four ways ----------------------------------------------------------------------
def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predecode(aligner, paths: list[str]):
    """Every photo preprocessed to the model's input, untimed: the encoder-only input."""
    import numpy as np

    from retrieval.media.loader import load

    return np.stack([load(p, aligner.transform).pixels for p in paths])


def encoder_only(aligner, pixels, batch_size: int) -> dict:
    with Meter() as meter:
        for part in batches(range(len(pixels)), batch_size):
            aligner.encode_images(pixels[part.start : part.stop])
    return meter.report(len(pixels))


def sequential(aligner, paths: list[str], batch_size: int) -> tuple[dict, dict]:
    """Open, decode at full size, preprocess, encode; one batch after another, one process."""
    import numpy as np
    from PIL import Image

    vectors = {}
    with Meter() as meter:
        for part in batches(paths, batch_size):
            pixels = []
            for path in part:
                with Image.open(path) as image:
                    pixels.append(aligner.transform(image.convert("RGB")))
            for path, vec in zip(part, aligner.encode_images(np.stack(pixels))):
                vectors[path] = vec
    return meter.report(len(paths)), vectors


def retrieval_index(spec: str, folder: Path, index_dir: Path, batch_size: int) -> tuple[dict, dict]:
    """build_index into a fresh index; the aligner is already loaded (load_aligner caches it)."""
    from retrieval.api import build_index, open_index
    from retrieval.ingest.pipeline import IndexSettings

    shutil.rmtree(index_dir, ignore_errors=True)
    with Meter() as meter:
        summary = build_index([folder], index=str(index_dir), model=spec, settings=IndexSettings(batch_size=batch_size))
    if summary.skipped or summary.added != summary.encoded:
        raise RuntimeError(f"retrieval index did not encode every photo: {summary.line()}")
    index = open_index(str(index_dir))
    try:
        by_hash = index.store.catalog.vectors_by_hash([row.hash for row in index.store.catalog.files().values()])
        vectors = {path: by_hash[row.hash] for path, row in index.store.catalog.files().items()}
    finally:
        index.close()
    return meter.report(summary.encoded), vectors


def retrieval_cli(spec: str, folder: Path, index_dir: Path, batch_size: int) -> dict:
    """The real command in a fresh process: interpreter start, imports and model load included."""
    shutil.rmtree(index_dir, ignore_errors=True)
    cli = Path(sys.executable).with_name("retrieval")
    cmd = [str(cli), "index", str(folder), "--index", str(index_dir), "--model", spec,
           "--batch-size", str(batch_size), "--json"]
    with Meter() as meter:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    summary = json.loads(out.stdout)
    return {**meter.report(summary["encoded"]), "index_run_seconds": round(summary["seconds"], 2)}


def clip_retrieval(python: str, folder: Path, ckpt: str, work: Path, batch_size: int, workers: int, arch: str) -> dict:
    res = crb.run_clip_inference(python, folder, ckpt, work, batch_size=batch_size, workers=workers, model=arch)
    res["load_after"] = round(os.getloadavg()[0], 2)
    return res


_CLIP_VECTORS = """
import sys, glob, numpy as np, pandas as pd
out = sys.argv[1]
vecs = np.concatenate([np.load(f) for f in sorted(glob.glob(out + '/img_emb/*.npy'))]).astype(np.float32)
paths = pd.concat([pd.read_parquet(f) for f in sorted(glob.glob(out + '/metadata/*.parquet'))])['image_path'].tolist()
np.savez(sys.argv[2], vectors=vecs, paths=np.array(paths))
"""


def clip_vectors(python: str, work: Path) -> dict:
    """clip-retrieval's embeddings by path (read with its venv's pandas, which we may not have)."""
    import numpy as np

    dest = work / "clip_vectors.npz"
    subprocess.run([python, "-c", _CLIP_VECTORS, str(work / "clip_inference_out"), str(dest)], check=True)
    data = np.load(dest)
    return {str(Path(p).resolve()): v for p, v in zip(data["paths"], data["vectors"])}


def agreement(reference: dict, other: dict) -> dict:
    """Cosine similarity of each photo's vector with the reference's (both L2-normalized)."""
    import numpy as np

    common = sorted(set(reference) & set(other))
    cos = np.array([float(np.dot(reference[p], other[p]) / np.linalg.norm(other[p])) for p in common])
    return {"photos": len(common), "min_cosine": round(float(cos.min()), 5), "mean_cosine": round(float(cos.mean()), 5)}


# -- reporting --------------------------------------------------------------------------
def fastest(rounds: list[dict]) -> dict:
    """Other work only ever slows a round down: the fastest round is the closest to the machine."""
    best = max(rounds, key=lambda r: r["images_per_s"])
    return {**best, "rounds": [r["images_per_s"] for r in rounds]}


def ratios(res: dict) -> dict:
    ours = res["retrieval_index"]["images_per_s"]
    got = {
        "vs_encoder_only": ours / res["encoder_only"]["images_per_s"],
        "vs_sequential": ours / res["sequential"]["images_per_s"],
        "vs_clip_retrieval": ours / res["clip_retrieval"]["images_per_s"],
    }
    return {k: {"ratio": round(v, 2), "target": TARGETS[k], "met": v >= TARGETS[k]} for k, v in got.items()}


def markdown(res: dict) -> str:
    m, p = res["machine"], res["photos"]
    clip = res["clip_retrieval"]
    rows = [
        ("encoder only (forward pass on decoded batches)", res["encoder_only"]),
        ("sequential: full-size decode, preprocess, encode, one process", res["sequential"]),
        ("**`retrieval index`** (`build_index`, fresh index, model loaded)", res["retrieval_index"]),
        ("`retrieval index` CLI, fresh process (start-up, model load)", res["retrieval_cli"]),
        (f"clip-retrieval {res['clip_retrieval_version']} `clip_inference`, loop", clip),
        ("clip-retrieval `clip_inference`, whole command",
         {**clip, "images_per_s": clip["wall_images_per_s"], "seconds": clip["wall_seconds"]}),
    ]
    lines = [
        f"{res['date']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}; "
        f"{p['count']} JPEG photos, {p['min_mp']}-{p['max_mp']} MP (mean {p['mean_mp']} MP, {p['megabytes']} MB); "
        f"{res['arch']} with random weights (one checkpoint for both tools); batches of {res['batch_size']}; "
        f"`retrieval index` with its defaults ({res['index_workers']} decoding workers), clip-retrieval with "
        f"{res['clip_workers']} preprocessing workers; fastest of {res['rounds']} round(s); "
        f"load average {res['load_before']} before the run.",
        "",
        "| way | images/s | seconds | load (1 min) after | others' CPU s |",
        "|---|---|---|---|---|",
    ]
    for label, r in rows:
        lines.append(f"| {label} | {r['images_per_s']:.1f} | {r['seconds']:.1f} | {r.get('load_after', '')} "
                     f"| {r.get('others_cpu_s', '')} |")
    lines += ["", "| target | ratio | goal | met |", "|---|---|---|---|"]
    names = {"vs_encoder_only": "`retrieval index` / encoder only", "vs_sequential": "`retrieval index` / sequential",
             "vs_clip_retrieval": "`retrieval index` / clip-retrieval (loop)"}
    for key, r in res["ratios"].items():
        lines.append(f"| {names[key]} | {r['ratio']:.2f} | >= {r['target']} | {'yes' if r['met'] else 'no'} |")
    agree = res["agreement"]
    lines += ["", "Vectors against the sequential way's (cosine, min / mean): "
              f"`retrieval index` {agree['retrieval_index']['min_cosine']} / {agree['retrieval_index']['mean_cosine']}, "
              f"clip-retrieval {agree['clip_retrieval']['min_cosine']} / {agree['clip_retrieval']['mean_cosine']}."]
    return "\n".join(lines) + "\n"


# -- main -------------------------------------------------------------------------------
def torch_pins() -> list[str]:
    """The project's own torch and torchvision releases, so both tools run the same torch."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in ("torch", "torchvision")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:3]))
    parser.add_argument("--photos", type=int, default=300, help="photos in the test folder (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the photo folder (default 0)")
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (default ViT-B-32)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per model call, every way (default 32)")
    parser.add_argument("--clip-workers", type=int, default=8,
                        help="clip-retrieval's num_prepro_workers (default 8, its own default and its fastest here)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; the fastest of each way counts (default 3: this shared VM varies by a few percent)")
    parser.add_argument("--work", default="bench-out/index-speed-work", help="photos, checkpoint, index and runs")
    parser.add_argument("--venv", default="bench-out/clipret-venv", help="clip-retrieval's virtual environment")
    parser.add_argument("--out", default="bench-out/index-speed", help="writes OUT.md and OUT.json")
    args = parser.parse_args()
    work, out = Path(args.work).resolve(), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_before = round(os.getloadavg()[0], 2)

    log("clip-retrieval venv (first use: about 3 minutes and 6.4 GB)")
    python = crb.ensure_venv(args.venv, torch_pins=torch_pins())
    install = json.loads((Path(args.venv) / crb._MARKER).read_text()).get("install_seconds")
    paths = crb.make_photo_folder(work / "photos", n=args.photos, seed=args.seed)
    info = json.loads((work / "photos" / "manifest.json").read_text())
    ckpt = crb.make_random_checkpoint(python, work / f"{args.arch}_random.pt", model=args.arch)
    spec = f"open_clip:{args.arch}/{ckpt}"

    from retrieval.aligners import load_aligner
    from retrieval.ingest.pipeline import IndexSettings

    log(f"loading {spec}")
    aligner = load_aligner(spec)
    log("preprocessing the photos for the encoder-only way (untimed)")
    pixels = predecode(aligner, paths)

    ways = ["encoder_only", "sequential", "retrieval_index", "retrieval_cli", "clip_retrieval"]
    results: dict[str, list] = {w: [] for w in ways}
    vectors: dict[str, dict] = {}
    for rnd in range(args.rounds):
        # Rotate the order so a drift in the machine's load does not always hit the same way.
        order = ways[rnd % len(ways) :] + ways[: rnd % len(ways)]
        for way in order:
            log(f"round {rnd + 1}/{args.rounds}: {way} ...")
            if way == "encoder_only":
                res = encoder_only(aligner, pixels, args.batch_size)
            elif way == "sequential":
                res, vectors["sequential"] = sequential(aligner, paths, args.batch_size)
            elif way == "retrieval_index":
                res, vectors["retrieval_index"] = retrieval_index(spec, work / "photos", work / "index", args.batch_size)
            elif way == "retrieval_cli":
                res = retrieval_cli(spec, work / "photos", work / "index-cli", args.batch_size)
            else:
                res = clip_retrieval(python, work / "photos", ckpt, work / "clip-run", args.batch_size,
                                     args.clip_workers, args.arch)
            results[way].append(res)
            log(f"  {res.get('images_per_s')} images/s, load {res.get('load_after')}, others' CPU {res.get('others_cpu_s')} s")
    vectors["clip_retrieval"] = clip_vectors(python, work / "clip-run")

    res = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "load_before": load_before,
        "arch": args.arch,
        "checkpoint": ckpt,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "photos": {"count": len(paths), "min_mp": 2, "max_mp": 12, "mean_mp": round(info["megapixels"] / len(paths), 1),
                   "megabytes": round(sum(os.path.getsize(p) for p in paths) / 1e6), "folder": str(work / "photos")},
        "index_workers": IndexSettings().worker_count(),
        "clip_workers": args.clip_workers,
        "clip_retrieval_version": crb.CLIP_RETRIEVAL_VERSION,
        "clip_retrieval_install_seconds": install,
        **{way: fastest(rounds) for way, rounds in results.items()},
    }
    res["ratios"] = ratios(res)
    res["agreement"] = {k: agreement(vectors["sequential"], vectors[k]) for k in ("retrieval_index", "clip_retrieval")}
    res["bench_seconds"] = round(time.perf_counter() - started, 1)
    table = markdown(res)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    print("\n" + table)
    log(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')} in {res['bench_seconds']:.0f}s")
    return 0 if all(r["met"] for r in res["ratios"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
