"""Encoder throughput of each aligner on this machine, in one run: images/s and texts/s.

Images are preprocessed pixel batches of real photos (scikit-image's sample photos;
decoding and resizing are the loader's cost, not the aligner's); texts are the dev set's hand-written captions (one sentence of 8 to 25
words each). Every figure is the fastest of several timed rounds after a warm-up round:
other work on a shared machine only ever slows a round down, so the fastest is the
closest to what the machine can do.
The ``default`` rows compare, in the same rounds, ConSE alone (the recipe of 2026-11, the
issue's baseline), the recipe of the morning of 2026-12-02 (experts, no words) and the shipped
one (experts and the words read by OCR), and time each expert alone. One photo in eight has
words on it (scikit-image's page of a book), so reading costs what it costs where text is
found, not just the detector's pass over pictures without any. Also times the cold start of a text query with ``default`` in a fresh process (what
``retrieval search "..."`` pays before it can search).

    python -m benchmarks.bench_aligners            # prints a markdown table (and writes bench-out/aligners.json, .md)
    python -m benchmarks.bench_aligners --quick    # 1 timed round instead of 5
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

from benchmarks import harness
from retrieval.aligners import conse
from retrieval.aligners.conse import ConseAligner
from retrieval.aligners.experts import to_uint8
from retrieval.aligners.openclip import OpenClipAligner
from retrieval.evaluation.devset import CAPTIONS


def rates(fns: list, items: int, rounds: int) -> list[float]:
    """Items per second of each call: its fastest of `rounds`, after a warm-up call each.

    The calls take turns within each round, so a change in the machine's load hits all
    of them alike and their ratios stay fair.
    """
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [items / min(spent) for spent in times]


def rate(fn, items: int, rounds: int) -> float:
    return rates([fn], items, rounds)[0]


def captions(n: int) -> list[str]:
    with open(CAPTIONS, newline="", encoding="utf-8") as fh:
        texts = [row["caption"] for row in csv.DictReader(fh)]
    return (texts * (n // len(texts) + 1))[:n]


def pixels(aligner, n: int) -> np.ndarray:
    """`n` real photos through the aligner's transform (experts behave differently on noise)."""
    import skimage
    from PIL import Image

    folder = Path(skimage.__file__).parent / "data"
    names = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg", "camera.png",
             "page.png")
    photos = [aligner.transform(Image.open(folder / name)) for name in names]
    return np.stack([photos[i % len(photos)] for i in range(n)])


def cold_start_seconds(rounds: int) -> float:
    """Fresh interpreter -> first text vector from `default`, fastest of `rounds`."""
    code = "from retrieval.aligners import load_aligner; load_aligner('default').encode_texts(['a dog on a beach'])"
    return min(harness.timed(lambda: subprocess.run([sys.executable, "-c", code], check=True), repeat=rounds))


@harness.command(out="bench-out/aligners.json", quick={"rounds": 1})
@click.option("--batch", "batch_size", type=int, default=32, show_default=True, help="Images per batch.")
@click.option("--texts", "text_count", type=int, default=256, show_default=True, help="Texts per batch.")
@click.option("--rounds", type=int, default=5, show_default=True, help="Timed rounds (the fastest counts).")
@click.option("--default-only", is_flag=True, help="Only the default recipes and experts.")
def main(batch_size: int, text_count: int, rounds: int, default_only: bool, out: Path) -> None:
    load_before = harness.load()
    texts = captions(text_count)
    rows = []

    previous, shipped = ConseAligner(device="cpu", config=conse.RECIPE_2026_11), ConseAligner(device="cpu")
    # The baseline: ConSE alone as it ran before, with the classifier on torch.
    baseline = ConseAligner(device="cpu", config=conse.RECIPE_2026_11, onnx=False)
    morning = ConseAligner(device="cpu", config=conse.RECIPE_2026_12_02)
    batch = pixels(shipped, batch_size)
    uint8 = to_uint8(batch, shipped.transform.mean, shipped.transform.std)
    fns = [lambda: baseline.encode_images(batch), lambda: previous.encode_images(batch),
           lambda: morning.encode_images(batch), lambda: shipped.encode_images(batch)]
    fns += [lambda e=e: e.weights(uint8) for e in shipped.experts] + [lambda: shipped.ocr.sentences(uint8)]
    measured = rates(fns, len(batch), rounds)
    text = rate(lambda: shipped.encode_texts(texts), len(texts), rounds)
    onnx = "ONNX Runtime" if previous.onnx is not None else "torch: no ONNX export here"
    rows.append(("ConSE alone, classifier on torch (`default` of 2026-11 as it ran: the baseline)", measured[0], f"{text:.0f}"))
    rows.append((f"ConSE alone, classifier on {onnx}", measured[1], f"{text:.0f}"))
    rows.append(("`default` of 2026-12-02 morning (+ colour, people and scene experts)", measured[2], f"{text:.0f}"))
    rows.append((f"**`default`** (+ experts + words read by OCR; {measured[3] / measured[0]:.2f} of the baseline)",
                 measured[3], f"{text:.0f}"))
    for expert, speed in zip(shipped.experts, measured[4:]):
        rows.append((f"{expert.name} expert alone", speed, "-"))
    rows.append(("OCR alone (RapidOCR, PP-OCRv6 small, 224 px, one thread)", measured[-1], "-"))
    if default_only:
        write_report(rows, batch_size, text_count, rounds, load_before, None, out)
        return
    lite2 = ConseAligner(device="cpu", config={**conse.RECIPE_2026_11, "image_model": "lite2"})
    batch2 = pixels(lite2, batch_size)
    rows.append(("previous recipe with Lite2 (260 px)", rate(lambda: lite2.encode_images(batch2), len(batch2), rounds), "-"))

    clip = OpenClipAligner("ViT-B-32", "random", device="cpu")
    batch = pixels(clip, batch_size)
    images = rate(lambda: clip.encode_images(batch), len(batch), rounds)
    trimmed, full = rates([lambda: clip.encode_texts(texts), lambda: clip.encode_texts(texts, trim=False)], len(texts), rounds)
    rows.append(("`open_clip:ViT-B-32/random`", images, f"{trimmed:.0f} trimmed / {full:.0f} full 77 tokens ({trimmed / full:.1f}x)"))
    write_report(rows, batch_size, text_count, rounds, load_before, cold_start_seconds(rounds), out)


def write_report(rows: list, batch_size: int, text_count: int, rounds: int, load_before: float, cold: float | None,
                 out: Path) -> None:
    host = harness.machine()
    load_after = harness.load()
    title = (f"CPU: {host['cpu']}, {host['cores']} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
             f"batches of {batch_size} images / {text_count} captions; fastest of {rounds} rounds; "
             f"load average {load_before:.1f} before, {load_after:.1f} after (other work slows every figure)")
    table = [{"aligner": label, "images/s": f"{images:.1f}", "texts/s": text} for label, images, text in rows]
    figures = {"host": host, "torch_threads": torch.get_num_threads(), "batch": batch_size, "texts": text_count,
               "rounds": rounds, "load_average": [load_before, load_after],
               "rows": [{"aligner": label, "images_per_s": round(images, 2), "texts_per_s": text} for label, images, text in rows],
               "cold_start_s": None if cold is None else round(cold, 2)}
    harness.report("aligners", figures, table, out, title)
    if cold is not None:
        click.echo(f"\nCold start of a text query with `default` (fresh process to first vector): {cold:.1f} s")


if __name__ == "__main__":
    main()
