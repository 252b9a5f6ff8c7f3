"""Helpers to benchmark clip-retrieval's ``clip_inference`` on this machine, offline.

It never imports the ``retrieval`` package (only ``benchmarks.harness``, for timing and
progress) and drives clip-retrieval through a *separate* virtual environment in a subprocess. clip-retrieval pins
``numpy<2``, ``open-clip-torch<3`` and ``pyarrow<16``, which would fight the project's
own environment if installed beside it.

Typical use::

    from benchmarks.clip_retrieval_bench import (ensure_venv, make_photo_folder, make_random_checkpoint,
                                                 run_clip_inference, run_encoder_ceiling)
    py = ensure_venv("/work/bench/clipret-venv")
    make_photo_folder("/work/bench/photos", n=200, seed=0)
    ckpt = make_random_checkpoint(py, "/work/bench/vit_b32_random.pt")
    print(run_clip_inference(py, "/work/bench/photos", ckpt, "/work/bench/run", batch_size=32, workers=2))
    print(run_encoder_ceiling(py, ckpt))

Or as a command: ``python -m benchmarks.clip_retrieval_bench --help``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from benchmarks import harness

# Pinned so the benchmark is reproducible; 2.45.0 is the newest release at the time of writing.
CLIP_RETRIEVAL_VERSION = "2.45.0"
# These two lie on this machine's disk and pip is capped at them (/etc/xdg/pip); asking for them
# exactly makes pip take the local wheels instead of downloading a multi-GB CUDA build.
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
# torch 2.14.1 pulls setuptools>=77; setuptools>=81 no longer ships pkg_resources, which
# clip-anytorch (a hard dependency of clip-retrieval) imports at module level
# ("ModuleNotFoundError: No module named 'pkg_resources'"). 77..80 satisfies both.
SETUPTOOLS_PIN = "setuptools>=77.0.3,<81"
# Written last by ensure_venv: its presence (with the same content) means the venv is complete.
_MARKER = ".clip_retrieval_bench.json"

# Environment for every subprocess that touches clip-retrieval: belt and braces so nothing
# tries a model hub (unreachable here) or wandb's servers.
_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONWARNINGS": "ignore",
}

# Folders of real photographs that Debian wallpaper/doc packages put on these machines
# (gnome/mate/ubuntu backgrounds, opencv-doc samples). Used when present; otherwise the
# generator falls back to scikit-image's sample photos, then to synthetic images.
_PHOTO_DIRS = ["/usr/share/backgrounds", "/usr/share/wallpapers", "/usr/share/doc/opencv-doc/examples/data"]


def _log(msg: str) -> None:
    harness.note(f"[clip_retrieval_bench] {msg}")


def _venv_python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _pip(python: Path, *args: str) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    _log("$ " + " ".join(cmd))
    t0 = time.perf_counter()
    # Output goes straight to our stdout so CI logs show pip's progress and any resolver error.
    subprocess.run(cmd, check=True)
    _log(f"  done in {time.perf_counter() - t0:.0f}s")


def ensure_venv(path: str | os.PathLike, base_python: str | None = None, torch_pins: list[str] | None = None) -> str:
    """Create (or reuse) a venv with clip-retrieval in it; return its python executable.

    Idempotent: a marker file written after a successful install and import check short-cuts
    later calls. ``base_python`` defaults to the running interpreter; it must be CPython 3.11
    on this machine because that is what the on-disk torch wheels are built for.
    ``torch_pins`` (default :data:`TORCH_PINS`) lets a caller pin the torch it runs itself,
    so that both sides of a comparison use the same torch.
    Costs about 3 minutes and 6.4 GB on a fresh machine (torch's CUDA build is 5.5 GB of it).
    """
    venv = Path(path).resolve()
    python = _venv_python(venv)
    torch_pins = list(torch_pins or TORCH_PINS)
    spec = {"clip-retrieval": CLIP_RETRIEVAL_VERSION, "torch": torch_pins, "setuptools": SETUPTOOLS_PIN}
    marker = venv / _MARKER
    if python.exists() and marker.exists():
        try:
            if json.loads(marker.read_text()).get("spec") == spec:
                _log(f"venv ready at {venv}")
                return str(python)
        except (OSError, ValueError):
            pass  # corrupt marker: fall through and (re)install, which is idempotent in pip
    t0 = time.perf_counter()
    if not python.exists():
        _log(f"creating venv at {venv}")
        # sys.executable of a venv is fine: venv resolves to the base interpreter itself.
        subprocess.run([base_python or sys.executable, "-m", "venv", str(venv)], check=True)
    # torch first, alone: the exact pins make pip take the local-disk wheels; installing
    # clip-retrieval first would let its "torch<3" range pick whatever the index offers.
    _pip(python, "--quiet", *torch_pins)
    # Then clip-retrieval with its full dependency set (needed anyway: clip_retrieval/__init__
    # imports the flask back end, faiss, wandb and sentence-transformers even for inference).
    # Repeating the torch pins keeps the resolver from touching torch; numpy goes to 1.26.
    _pip(python, "--quiet", f"clip-retrieval=={CLIP_RETRIEVAL_VERSION}", SETUPTOOLS_PIN, *torch_pins)
    # Import check through the real entry point, offline, so a broken venv fails here, not mid-benchmark.
    check = "from clip_retrieval.clip_inference.main import main; import open_clip, torch; print(torch.__version__)"
    out = subprocess.run([str(python), "-c", check], check=True, capture_output=True, text=True, env=_env())
    _log(f"import check ok (torch {out.stdout.strip()})")
    marker.write_text(json.dumps({"spec": spec, "install_seconds": round(time.perf_counter() - t0, 1)}))
    _log(f"venv ready at {venv} after {time.perf_counter() - t0:.0f}s")
    return str(python)


def _cpu_report(run: harness.Run) -> dict:
    """Own (child-process) CPU seconds vs the rest of the machine's over a run.

    This 2-core machine is often shared with other jobs (parallel sessions, CI), which halves
    throughput without any error. Reporting ``others_cpu_s`` lets a benchmark flag or discard a
    contended run instead of publishing a wrong number. Linux-only (/proc/stat); empty elsewhere.
    """
    if run.others_cpu_s is None:
        return {}
    return {"own_cpu_s": round(run.children_cpu_s, 1), "others_cpu_s": round(run.others_cpu_s, 1)}


def _env(threads: int | None = None) -> dict[str, str]:
    env = {**os.environ, **_OFFLINE_ENV}
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


_CHECKPOINT_CODE = """
import sys, torch, open_clip
torch.manual_seed(int(sys.argv[3]))
model = open_clip.create_model(sys.argv[1], pretrained=None)
torch.save(model.state_dict(), sys.argv[2])
"""


def make_random_checkpoint(python: str, path: str | os.PathLike, model: str = "ViT-B-32", seed: int = 0) -> str:
    """Save a randomly initialised open_clip model's state dict to ``path`` (using the venv's open_clip).

    No pretrained weights can be downloaded here; random weights cost exactly the same FLOPs,
    which is all a speed comparison needs. Returns the absolute path; reuses an existing file.
    """
    dest = Path(path).resolve()
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        subprocess.run([python, "-c", _CHECKPOINT_CODE, model, str(tmp), str(seed)], check=True, env=_env())
        tmp.replace(dest)
        _log(f"wrote random {model} checkpoint {dest} ({dest.stat().st_size / 1e6:.0f} MB)")
    return str(dest)


def run_clip_inference(
    python: str,
    image_folder: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    workdir: str | os.PathLike,
    batch_size: int = 32,
    workers: int = 2,
    model: str = "ViT-B-32",
) -> dict:
    """Run ``clip-retrieval inference`` on a folder of images and time it.

    Returns ``images``, ``seconds`` and ``images_per_s`` for the processing loop alone (the
    tool's own stats: from the first batch request to the last write, so model creation,
    checkpoint load and warm-up are excluded), plus ``wall_seconds`` / ``wall_images_per_s``
    for the whole command including interpreter start, imports and model load, and the
    loop's split into ``read_seconds`` (time waiting for the DataLoader) and ``inference_seconds``.
    """
    ckpt = Path(checkpoint_path).resolve()
    work = Path(workdir).resolve()
    out = work / "clip_inference_out"
    if out.exists():
        shutil.rmtree(out)  # clip_inference appends/overwrites partitions; start clean for exact counts
    work.mkdir(parents=True, exist_ok=True)
    # all_clip's open_clip loader splits the name on "/": the first part is the architecture and
    # "/".join(rest) is the `pretrained` argument, which open_clip loads from disk when the path
    # exists. An absolute path therefore needs the double slash this concatenation produces
    # ("open_clip:ViT-B-32//abs/ckpt.pt"); a single slash would make it relative to the cwd.
    clip_model = f"open_clip:{model}/{ckpt}"
    args = {
        "input_dataset": str(Path(image_folder).resolve()),
        "output_folder": str(out),
        "input_format": "files",  # a plain folder of *.jpg; keys are file paths
        "batch_size": batch_size,
        "num_prepro_workers": workers,  # DataLoader worker processes doing decode + resize
        "enable_text": False,  # no captions; the text side is what would pull mclip from a hub
        "enable_image": True,
        "enable_metadata": False,
        "clip_model": clip_model,
        "use_jit": False,  # default for the CLI too; stated so the run is explicit
        "use_mclip": False,
        "distribution_strategy": "sequential",  # one local worker, no pyspark/slurm
        "clip_cache_path": str(work / "clip_cache"),  # never ~/.cache; nothing is downloaded anyway
        "enable_wandb": False,
    }
    cli = Path(python).with_name("clip-retrieval")
    # The documented console script; fall back to the same fire entry point if it is missing.
    if cli.exists():
        cmd = [str(cli), "inference"]
    else:
        cmd = [python, "-c", "import fire; from clip_retrieval.clip_inference.main import main; fire.Fire(main)"]
    for key, value in args.items():
        cmd += [f"--{key}", str(value)]
    _log("$ " + " ".join(cmd))
    with harness.measure() as run:
        proc = subprocess.run(cmd, env=_env(), cwd=work, capture_output=True, text=True)
    wall = run.wall_s
    (work / "clip_inference.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"clip_inference failed ({proc.returncode}); tail:\n{proc.stderr[-3000:]}")
    # The per-partition stats file (LoggerWriter) holds running sums over batches of each batch's
    # read / inference / write / total duration, so summed "total_duration" is the processing loop
    # without model load and warm-up. We read that instead of parsing the "\r sample_per_sec N"
    # progress line: it is an int, printed every 5 s, and its start/end timestamps in the file
    # are sums over batches too (its "no initial load" figure works only via a running minimum).
    stats: dict = {}
    for f in sorted((out / "stats").glob("[0-9]*.json")):
        for k, v in json.loads(f.read_text()).items():
            stats[k] = stats.get(k, 0) + v
    images = int(stats.get("sample_count", 0))
    # Cross-check against what was actually written, so a silently skipped image is noticed.
    written = _count_embeddings(python, out / "img_emb")
    if images == 0 or written != images:
        raise RuntimeError(f"clip_inference stats say {images} images but {written} embeddings were written")
    loop = float(stats["total_duration"])
    return {
        "images": images,
        "seconds": round(loop, 3),
        "images_per_s": round(images / loop, 2),
        "wall_seconds": round(wall, 3),
        "wall_images_per_s": round(images / wall, 2),
        "read_seconds": round(float(stats["read_duration"]), 3),
        "inference_seconds": round(float(stats["inference_duration"]), 3),
        "batch_size": batch_size,
        "workers": workers,
        **_cpu_report(run),
    }


def _count_embeddings(python: str, folder: Path) -> int:
    # numpy may not be importable by the caller's interpreter; the venv always has it.
    code = "import sys, glob, numpy as np; print(sum(np.load(f).shape[0] for f in glob.glob(sys.argv[1] + '/*.npy')))"
    res = subprocess.run([python, "-c", code, str(folder)], check=True, capture_output=True, text=True, env=_env())
    return int(res.stdout.strip() or 0)


_CEILING_CODE = """
import json, sys, time, torch, open_clip
model_name, ckpt, batch, threads, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
model = open_clip.create_model(model_name, pretrained=ckpt).eval()
x = torch.randn(batch, 3, 224, 224)  # already decoded, resized and normalised
with torch.inference_mode():
    for _ in range(2):
        model.encode_image(x)  # warm-up: allocator, oneDNN kernel selection
    times = []
    for _ in range(iters):
        t0 = time.perf_counter(); model.encode_image(x); times.append(time.perf_counter() - t0)
times.sort()
med = times[len(times) // 2]
print(json.dumps({"batch_size": batch, "threads": threads, "iters": iters, "median_batch_s": round(med, 4),
                  "images_per_s": round(batch / med, 2), "best_images_per_s": round(batch / times[0], 2)}))
"""


def run_encoder_ceiling(
    python: str, checkpoint_path: str, model: str = "ViT-B-32", batch_size: int = 32, threads: int = 2, iters: int = 5
) -> dict:
    """Image-encoder forward pass alone on pre-decoded 224 px batches, in the same venv python.

    The upper bound for any pipeline on this machine: no decoding, no resizing, no I/O.
    """
    with harness.measure() as run:
        res = subprocess.run(
            [
                python,
                "-c",
                _CEILING_CODE,
                model,
                str(Path(checkpoint_path).resolve()),
                str(batch_size),
                str(threads),
                str(iters),
            ],
            check=True,
            capture_output=True,
            text=True,
            env=_env(threads),
        )
    return {**json.loads(res.stdout.strip().splitlines()[-1]), **_cpu_report(run)}


# --------------------------------------------------------------------------------------------
# Test photos
# --------------------------------------------------------------------------------------------

# Common camera / phone aspect ratios (landscape; some images get rotated to portrait).
_ASPECTS = [(4, 3), (3, 2), (16, 9), (1, 1)]


def _source_photos() -> list[Path]:
    found: list[Path] = []
    for d in _PHOTO_DIRS:
        p = Path(d)
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in (".jpg", ".jpeg") and f.is_file())
    return found


def _skimage_photos():
    # scikit-image is a project dependency and ships a few real photos (about 0.25 MP each).
    try:
        from skimage import data
    except ImportError:
        return []
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina"):
        try:
            out.append(getattr(data, name)())
        except Exception:  # noqa: BLE001 - some need pooch downloads; skip those
            continue
    return out


def _synthetic(rng, w: int, h: int):
    """Noise + gradients + soft blobs at low resolution, upscaled: JPEG-wise roughly photo-like."""
    import numpy as np
    from PIL import Image

    sw, sh = max(8, w // 16), max(8, h // 16)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    img = np.zeros((sh, sw, 3), np.float32)
    for c in range(3):
        a, b, k = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 60 * a * xx / sw + 60 * b * yy / sh + 40 * np.sin(k * 6 * xx / sw + c)
    for _ in range(int(rng.integers(3, 9))):
        cx, cy, r = rng.uniform(0, sw), rng.uniform(0, sh), rng.uniform(2, sw / 3)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-80, 80, 3)
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)


def make_photo_folder(
    dest: str | os.PathLike, n: int = 200, seed: int = 0, min_mp: float = 2.0, max_mp: float = 12.0
) -> list[str]:
    """Write ``n`` photo-like JPEGs (quality 90, 2-12 megapixels) into ``dest``; return their paths.

    Few large real photos exist offline, so each image is a random crop of a real photo
    (Debian wallpapers when installed, else scikit-image samples, else synthetic), upscaled
    to a random camera-like size, with mild sensor-like grain so the JPEG carries
    high-frequency detail (file sizes ~0.2-0.5 bytes/pixel like real camera output, and a
    realistic decode cost). Deterministic for a given seed and set of source files; reuses
    the folder when a manifest with the same parameters is already there.
    """
    import numpy as np
    from PIL import Image

    out = Path(dest)
    manifest = out / "manifest.json"
    sources = _source_photos()
    params = {"n": n, "seed": seed, "min_mp": min_mp, "max_mp": max_mp, "sources": [str(s) for s in sources]}
    if manifest.exists():
        try:
            m = json.loads(manifest.read_text())
            if m.get("params") == params and all((out / f).exists() for f in m["files"]):
                return [str(out / f) for f in m["files"]]
        except (OSError, ValueError, KeyError):
            pass
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("photo_*.jpg"):
        old.unlink()
    rng = np.random.default_rng(seed)
    arrays = [] if sources else _skimage_photos()
    kind = "debian" if sources else ("skimage" if arrays else "synthetic")
    _log(f"generating {n} photos in {out} from {kind} sources ({len(sources) or len(arrays)} images)")
    t0 = time.perf_counter()
    files, total_bytes, total_px = [], 0, 0
    for i in range(n):
        mp = rng.uniform(min_mp, max_mp) * 1e6
        aw, ah = _ASPECTS[int(rng.integers(len(_ASPECTS)))]
        if rng.random() < 0.3:
            aw, ah = ah, aw  # portrait
        w = int(round((mp * aw / ah) ** 0.5))
        h = int(round(w * ah / aw))
        if sources:
            src = Image.open(sources[int(rng.integers(len(sources)))])
            src.draft("RGB", (w // 2, h // 2))  # no need to decode a 30 MP wallpaper at full size
            src = src.convert("RGB")
        elif arrays:
            src = Image.fromarray(arrays[int(rng.integers(len(arrays)))]).convert("RGB")
        else:
            src = None
        if src is not None:
            # Random crop with the target aspect covering 50-100% of the largest such crop.
            sw, sh = src.size
            cw = min(sw, sh * aw / ah) * rng.uniform(0.5, 1.0)
            ch = cw * ah / aw
            x0, y0 = rng.uniform(0, sw - cw), rng.uniform(0, sh - ch)
            if rng.random() < 0.5:
                src = src.transpose(Image.FLIP_LEFT_RIGHT)
            img = src.resize((w, h), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
        else:
            img = _synthetic(rng, w, h)
        # Luma grain (one plane, float32 to keep 12 MP images cheap): upscaled crops are too
        # smooth otherwise and would decode unrealistically fast and compress unrealistically well.
        arr = np.asarray(img, dtype=np.float32)
        arr += rng.standard_normal((h, w, 1), dtype=np.float32) * float(rng.uniform(2.0, 5.0))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        name = f"photo_{i:04d}.jpg"
        img.save(out / name, quality=90)  # Pillow default subsampling at q90 is 4:2:0, like cameras
        files.append(name)
        total_bytes += (out / name).stat().st_size
        total_px += w * h
    manifest.write_text(json.dumps({"params": params, "files": files, "megapixels": round(total_px / 1e6, 1)}))
    _log(
        f"  {n} photos, {total_px / 1e6 / n:.1f} MP mean, {total_bytes / 1e6:.0f} MB, "
        f"{total_bytes / total_px:.2f} B/px, in {time.perf_counter() - t0:.0f}s"
    )
    return [str(out / f) for f in files]


@harness.command()
@click.option("--venv", default="/work/bench/clipret-venv", show_default=True, help="clip-retrieval's virtual environment.")
@click.option("--workdir", default="/work/bench", show_default=True, help="Photos, checkpoint and runs.")
@click.option("--photos", type=int, default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="clip-retrieval's preprocessing workers.")
def main(venv: str, workdir: str, photos: int, seed: int, batch_size: int, workers: int) -> None:
    work = Path(workdir)
    py = ensure_venv(venv)
    folder = work / "photos"
    make_photo_folder(folder, photos, seed)
    ckpt = make_random_checkpoint(py, work / "vit_b32_random.pt")
    click.echo(json.dumps({"clip_inference": run_clip_inference(py, folder, ckpt, work / "run", batch_size, workers)}))
    click.echo(json.dumps({"encoder_ceiling": run_encoder_ceiling(py, ckpt, batch_size=batch_size)}))


if __name__ == "__main__":
    main()
