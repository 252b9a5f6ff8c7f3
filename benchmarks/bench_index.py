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
   (created here from PyPI on first use; see ``benchmarks/clip_retrieval_bench.py``), same checkpoint.

It prints progress, then writes a markdown table and a JSON file with images/s for each,
the three target ratios, the machine (CPU model, cores), the date and the load average.
Vectors are cross-checked: the index's (draft-decoded, worker-made) and clip-retrieval's
against the sequential way's, by cosine similarity.

    .venv/bin/python -m benchmarks.bench_index                    # 300 photos, 3 rounds
    .venv/bin/python -m benchmarks.bench_index --photos 100 --rounds 1 --out bench-out/quick.json

Top-level imports stay light on purpose: the indexer's worker processes are spawned, and
spawn re-imports this module in each of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from importlib import metadata
from pathlib import Path

import click

from benchmarks import clip_retrieval_bench as crb
from benchmarks import harness

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"vs_encoder_only": 0.8, "vs_sequential": 1.5, "vs_clip_retrieval": 1.0}


# -- machine and load -------------------------------------------------------------------
def machine() -> dict:
    """The harness's description of the machine, and the Pillow that decodes the photos."""
    return {**harness.machine(), "pillow": metadata.version("pillow")}


def way_report(run: harness.Run, images: int) -> dict:
    """One way's figures from its measured run. The machine is shared; `others_cpu_s` (busy CPU
    time of the whole machine minus ours) says how much a figure may have been slowed by other work."""
    return {
        "images": images,
        "seconds": round(run.wall_s, 2),
        "images_per_s": round(images / run.wall_s, 2),
        "own_cpu_s": round(run.cpu_s + run.children_cpu_s, 1),
        "others_cpu_s": round(run.others_cpu_s or 0.0, 1),
        "load_before": run.load_before,
        "load_after": run.load_after,
    }


# -- the four ways ----------------------------------------------------------------------
def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predecode(aligner, paths: list[str]):
    """Every photo preprocessed to the model's input, untimed: the encoder-only input."""
    import numpy as np

    from retrieval.media.decode import load

    return np.stack([load(p, aligner.transform).pixels for p in paths])


def encoder_only(aligner, pixels, batch_size: int) -> dict:
    with harness.measure() as run:
        for part in batches(range(len(pixels)), batch_size):
            aligner.encode_images(pixels[part.start : part.stop])
    return way_report(run, len(pixels))


def sequential(aligner, paths: list[str], batch_size: int) -> tuple[dict, dict]:
    """Open, decode at full size, preprocess, encode; one batch after another, one process."""
    import numpy as np
    from PIL import Image

    vectors = {}
    with harness.measure() as run:
        for part in batches(paths, batch_size):
            pixels = []
            for path in part:
                with Image.open(path) as image:
                    pixels.append(aligner.transform(image.convert("RGB")))
            for path, vec in zip(part, aligner.encode_images(np.stack(pixels))):
                vectors[path] = vec
    return way_report(run, len(paths)), vectors


def retrieval_index(spec: str, folder: Path, index_dir: Path, batch_size: int) -> tuple[dict, dict]:
    """build_index into a fresh index; the aligner is already loaded (load_aligner caches it)."""
    from retrieval.api import build_index, open_index
    from retrieval.ingest.pipeline import IndexSettings

    shutil.rmtree(index_dir, ignore_errors=True)
    with harness.measure() as run:
        summary = build_index([folder], index=str(index_dir), model=spec, settings=IndexSettings(batch_size=batch_size))
    if summary.skipped or summary.added != summary.encoded:
        raise RuntimeError(f"retrieval index did not encode every photo: {summary.line()}")
    index = open_index(str(index_dir))
    try:
        by_hash = index.store.catalog.vectors_by_hash([row.hash for row in index.store.catalog.files().values()])
        vectors = {path: by_hash[row.hash] for path, row in index.store.catalog.files().items()}
    finally:
        index.close()
    return way_report(run, summary.encoded), vectors


def retrieval_cli(spec: str, folder: Path, index_dir: Path, batch_size: int) -> dict:
    """The real command in a fresh process: interpreter start, imports and model load included."""
    shutil.rmtree(index_dir, ignore_errors=True)
    cli = Path(sys.executable).with_name("retrieval")
    cmd = [str(cli), "index", str(folder), "--index", str(index_dir), "--model", spec,
           "--batch-size", str(batch_size), "--json"]
    with harness.measure() as run:
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    summary = json.loads(done.stdout)
    return {**way_report(run, summary["encoded"]), "index_run_seconds": round(summary["seconds"], 2)}


def clip_retrieval(python: str, folder: Path, ckpt: str, work: Path, batch_size: int, workers: int, arch: str) -> dict:
    res = crb.run_clip_inference(python, folder, ckpt, work, batch_size=batch_size, workers=workers, model=arch)
    res["load_after"] = harness.load()
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


@harness.command(out="bench-out/index-speed.json", quick={"photos": 20, "rounds": 1})
@click.option("--photos", type=int, default=300, show_default=True, help="Photos in the test folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the photo folder.")
@click.option("--arch", default="ViT-B-32", show_default=True, help="open_clip architecture.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per model call, every way.")
@click.option("--clip-workers", type=int, default=8, show_default=True,
              help="clip-retrieval's num_prepro_workers (its own default and its fastest here).")
@click.option("--rounds", type=int, default=3, show_default=True,
              help="Timed rounds; the fastest of each way counts (this shared VM varies by a few percent).")
@click.option("--work", "work_dir", default="bench-out/index-speed-work", show_default=True,
              help="Photos, checkpoint, index and runs.")
@click.option("--venv", default="bench-out/clipret-venv", show_default=True, help="clip-retrieval's virtual environment.")
def main(photos: int, seed: int, arch: str, batch_size: int, clip_workers: int, rounds: int, work_dir: str, venv: str,
         out: Path) -> None:
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_before = harness.load()

    harness.note("clip-retrieval venv (first use: about 3 minutes and 6.4 GB)")
    python = crb.ensure_venv(venv, torch_pins=torch_pins())
    install = json.loads((Path(venv) / crb._MARKER).read_text()).get("install_seconds")
    paths = crb.make_photo_folder(work / "photos", n=photos, seed=seed)
    info = json.loads((work / "photos" / "manifest.json").read_text())
    ckpt = crb.make_random_checkpoint(python, work / f"{arch}_random.pt", model=arch)
    spec = f"open_clip:{arch}/{ckpt}"

    from retrieval.aligners import load_aligner
    from retrieval.ingest.pipeline import IndexSettings

    harness.note(f"loading {spec}")
    aligner = load_aligner(spec)
    harness.note("preprocessing the photos for the encoder-only way (untimed)")
    pixels = predecode(aligner, paths)

    ways = ["encoder_only", "sequential", "retrieval_index", "retrieval_cli", "clip_retrieval"]
    results: dict[str, list] = {w: [] for w in ways}
    vectors: dict[str, dict] = {}
    for rnd in range(rounds):
        # Rotate the order so a drift in the machine's load does not always hit the same way.
        order = ways[rnd % len(ways) :] + ways[: rnd % len(ways)]
        for way in order:
            harness.note(f"round {rnd + 1}/{rounds}: {way} ...")
            if way == "encoder_only":
                res = encoder_only(aligner, pixels, batch_size)
            elif way == "sequential":
                res, vectors["sequential"] = sequential(aligner, paths, batch_size)
            elif way == "retrieval_index":
                res, vectors["retrieval_index"] = retrieval_index(spec, work / "photos", work / "index", batch_size)
            elif way == "retrieval_cli":
                res = retrieval_cli(spec, work / "photos", work / "index-cli", batch_size)
            else:
                res = clip_retrieval(python, work / "photos", ckpt, work / "clip-run", batch_size, clip_workers, arch)
            results[way].append(res)
            harness.note(f"  {res.get('images_per_s')} images/s, load {res.get('load_after')}, others' CPU {res.get('others_cpu_s')} s")
    vectors["clip_retrieval"] = clip_vectors(python, work / "clip-run")

    res = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "load_before": load_before,
        "arch": arch,
        "checkpoint": ckpt,
        "batch_size": batch_size,
        "rounds": rounds,
        "photos": {"count": len(paths), "min_mp": 2, "max_mp": 12, "mean_mp": round(info["megapixels"] / len(paths), 1),
                   "megabytes": round(sum(os.path.getsize(p) for p in paths) / 1e6), "folder": str(work / "photos")},
        "index_workers": IndexSettings().worker_count(),
        "clip_workers": clip_workers,
        "clip_retrieval_version": crb.CLIP_RETRIEVAL_VERSION,
        "clip_retrieval_install_seconds": install,
        **{way: fastest(runs) for way, runs in results.items()},
    }
    res["ratios"] = ratios(res)
    res["agreement"] = {k: agreement(vectors["sequential"], vectors[k]) for k in ("retrieval_index", "clip_retrieval")}
    res["bench_seconds"] = round(time.perf_counter() - started, 1)
    # The page is two tables and a note, so it goes whole as the report's title.
    harness.report("index-speed", res, [], out, markdown(res).rstrip("\n"))
    harness.note(f"done in {res['bench_seconds']:.0f}s")
    click.get_current_context().exit(0 if all(r["met"] for r in res["ratios"].values()) else 1)


if __name__ == "__main__":
    main()
