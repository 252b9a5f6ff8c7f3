"""What reading a camera RAW file costs, by the ways retrieval.media.raw can take, in one run.

A real photo (scikit-image's coffee) is enlarged to a camera's sensor size and written as a
12-bit DNG through an RGGB Bayer mosaic with pidng, and as the camera's JPEG beside it. Timed
per file, best of a few runs:

- the half-size demosaic retrieval uses when a RAW has no large enough preview (LibRaw, camera
  white balance, 8-bit output), and the full-size demosaic it avoids;
- the preview path (retrieval.media.raw.decode_raw for the model's 224 px): the same DNG with
  the picture embedded as a JPEG preview of the sensor's size (as Canon's CR2 carry), and of
  1616 x 1080 (as Sony's ARW and Nikon's NEF carry); pidng writes none, so
  benchmarks/raw_files.py chains one to the file as cameras do;
- the HEIC of the same picture through retrieval.media.decode, for scale.

LibRaw may use more than one thread in its demosaic; the figures are per file, wall time.

    python -m benchmarks.bench_raw              # 24 MP (6000 x 4000)
    python -m benchmarks.bench_raw --quick      # 2 MP
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import click

from benchmarks.harness import command, load, machine, report, timed


def _dng_bytes(picture, folder: Path, preview=None) -> bytes:
    from benchmarks.raw_files import save_dng

    return save_dng(picture, folder / "shot.dng", date="2024:05:01 10:00:00", preview=preview).read_bytes()


@command(out="bench-out/raw.json", quick={"megapixels": 2})
@click.option("--megapixels", type=float, default=24, show_default=True, help="Sensor size of the DNG (3:2).")
@click.option("--repeat", type=int, default=3, show_default=True, help="Runs per way; the best is reported.")
def main(megapixels: float, repeat: int, out: Path) -> None:
    import rawpy
    from PIL import Image
    from skimage import data

    from retrieval.media import heif
    from retrieval.media.decode import decode
    from retrieval.media.raw import decode_raw

    width = int(round((megapixels * 1e6 * 1.5) ** 0.5 / 2)) * 2
    height = int(round(width / 1.5 / 2)) * 2
    picture = Image.fromarray(data.coffee()).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    heif.register()
    with tempfile.TemporaryDirectory() as scratch:
        dng = _dng_bytes(picture, Path(scratch))
        with_full = _dng_bytes(picture, Path(scratch), preview=picture)
        with_small = _dng_bytes(picture, Path(scratch), preview=picture.resize((1616, 1080)))
    jpeg, heic = io.BytesIO(), io.BytesIO()
    picture.save(jpeg, format="JPEG", quality=92)
    picture.save(heic, format="HEIF", quality=90)
    load_before = load()

    def full() -> None:
        with rawpy.imread(io.BytesIO(dng)) as raw:
            raw.postprocess(output_bps=8, use_camera_wb=True)

    ways = [
        ("RAW: half-size demosaic (used without a preview)", lambda: decode_raw(dng, 224, preview=False)),
        ("RAW: full-size demosaic (avoided)", full),
        ("RAW with a sensor-size JPEG preview: the preview, drafted to 224 px", lambda: decode_raw(with_full, 224)),
        ("RAW with a 1616 x 1080 JPEG preview: the preview, drafted to 224 px", lambda: decode_raw(with_small, 224)),
        ("JPEG of the same picture, drafted to 224 px", lambda: decode(jpeg.getvalue(), 224)),
        ("HEIC of the same picture, full decode", lambda: decode(heic.getvalue(), 224)),
    ]
    rows, results = [], {}
    for label, fn in ways:
        best = min(timed(fn, repeat=repeat, warmup=1)) * 1000
        results[label] = round(best, 2)
        rows.append({"way": label, "ms per file (best)": f"{best:.2f}"})
    report("raw", {"megapixels": round(width * height / 1e6, 1), "size": [width, height], "dng_bytes": len(dng),
                   "heic_bytes": len(heic.getvalue()), "jpeg_bytes": len(jpeg.getvalue()), "ms": results,
                   "load_before": load_before, "load_after": load(), "machine": machine()},
           rows, out, title=f"{width} x {height} ({width * height / 1e6:.1f} MP) DNG; load average "
                            f"{load_before:.1f} before, {load():.1f} after")


if __name__ == "__main__":
    main()
