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

    python scripts/bench_aligners.py            # prints a markdown table
    python scripts/bench_aligners.py --quick    # fewer rounds
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from retrieval.aligners import conse
from retrieval.aligners.conse import ConseAligner
from retrieval.aligners.experts import to_uint8
from retrieval.aligners.openclip import OpenClipAligner

CAPTIONS = Path(__file__).with_name("devset_captions.csv")


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
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--texts", type=int, default=256, help="texts per batch")
    parser.add_argument("--quick", action="store_true", help="1 timed round instead of 5")
    parser.add_argument("--default-only", action="store_true", help="only the default recipes and experts")
    args = parser.parse_args()
    rounds = 1 if args.quick else 5
    load_before = os.getloadavg()[0]
    texts = captions(args.texts)
    rows = []

    previous, shipped = ConseAligner(device="cpu", config=conse.RECIPE_2026_11), ConseAligner(device="cpu")
    # The baseline: ConSE alone as it ran before, with the classifier on torch.
    baseline = ConseAligner(device="cpu", config=conse.RECIPE_2026_11, onnx=False)
    morning = ConseAligner(device="cpu", config=conse.RECIPE_2026_12_02)
    batch = pixels(shipped, args.batch)
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
    if args.default_only:
        return report(rows, args, rounds, load_before, cold=None)
    lite2 = ConseAligner(device="cpu", config={**conse.RECIPE_2026_11, "image_model": "lite2"})
    batch2 = pixels(lite2, args.batch)
    rows.append(("previous recipe with Lite2 (260 px)", rate(lambda: lite2.encode_images(batch2), len(batch2), rounds), "-"))

    clip = OpenClipAligner("ViT-B-32", "random", device="cpu")
    batch = pixels(clip, args.batch)
    images = rate(lambda: clip.encode_images(batch), len(batch), rounds)
    trimmed, full = rates([lambda: clip.encode_texts(texts), lambda: clip.encode_texts(texts, trim=False)], len(texts), rounds)
    rows.append(("`open_clip:ViT-B-32/random`", images, f"{trimmed:.0f} trimmed / {full:.0f} full 77 tokens ({trimmed / full:.1f}x)"))
    return report(rows, args, rounds, load_before, cold=cold_start_seconds(rounds))


def report(rows: list, args, rounds: int, load_before: float, cold: float | None) -> int:
    cpu = platform.processor() or platform.machine()
    print(f"CPU: {cpu}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"batches of {args.batch} images / {args.texts} captions; fastest of {rounds} rounds; "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other work slows every figure)\n")
    print("| aligner | images/s | texts/s |\n|---|---|---|")
    for label, images, text in rows:
        print(f"| {label} | {images:.1f} | {text} |")
    if cold is not None:
        print(f"\nCold start of a text query with `default` (fresh process to first vector): {cold:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
