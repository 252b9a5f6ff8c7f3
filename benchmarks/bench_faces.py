"""Which face detector, at which size: recall, false faces and cost per photo, all candidates in one run.

Photos with one face each: face_recognition's portraits (unpacked by `scripts/setup.sh --test` into
.venv/share/face-photos: Obama five times, two of them half-turned or cut by the frame, one 32-bit
PNG copy, Biden once) and scikit-image's astronaut. Photos without faces: scikit-image's
coffee, rocket, cat, horse, motorcycle and the wallpapers in /usr/share/backgrounds (when
installed). Each photo is decoded as the indexer does (upright, JPEG draft-decoded no smaller than
the detector needs, as `retrieval people scan` decodes), then each candidate looks at it:

- HOG (dlib's frontal detector) on a copy whose long side is 512, 640, 800 or 1024 px;
- OpenCV's Haar cascade (already in the venv for the default aligner) on a 480 px grey copy as a
  gate, with HOG at 640 px only where it fires;
- dlib's MMOD CNN at 640 px (left out by --quick: seconds a photo on CPU);
- HOG on a grey copy at 512 and 640 px (one gradient channel instead of three).

Then, on the labelled set (benchmarks/people_eval.py) decoded as `default`'s indexing decodes it
(JPEG draft to a 224 px short side), what to do when that decode is too small for HOG: look at
it as it is, decode it again larger, or enlarge it; HOG on RGB or grey.

A find on a one-face photo counts once as found; any other find is a false face. The cost is the
median CPU time per photo (this process's, so other work on a shared machine inflates it less
than wall time would), face photos and others apart; the load average is in the report.

    python -m benchmarks.bench_faces
"""

from __future__ import annotations

import glob
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from PIL import Image

from benchmarks.harness import command, load, machine, report

FACE_PHOTOS = ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg",
               "32bit.png", "biden.jpg"]
NO_FACE_SKIMAGE = ["coffee.png", "rocket.jpg", "chelsea.png", "horse.png", "motorcycle_left.png"]


def photos() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    share = Path(sys.prefix) / "share" / "face-photos"
    faces = [(n, (share / n).read_bytes()) for n in FACE_PHOTOS if (share / n).is_file()]
    faces.append(("astronaut.png", (data / "astronaut.png").read_bytes()))
    others = [(n, (data / n).read_bytes()) for n in NO_FACE_SKIMAGE]
    others += [(Path(p).name, Path(p).read_bytes()) for p in sorted(glob.glob("/usr/share/backgrounds/*.jpg"))]
    return faces, others


#: The short side `default`'s transform has its JPEGs draft-decoded to while indexing.
MODEL_DRAFT = 224


def small_drafts(decode: Any) -> list[dict[str, Any]]:
    """What to do with a model's decode too small for HOG: nothing, a second decode, or a resize,
    with HOG on the RGB or grey picture, on the labelled set's photos with people."""
    import io

    from benchmarks.people_eval import labelled_set, picture
    from retrieval.aligners.faces import FaceFinder, FaceSettings

    items = [i for i in labelled_set() if i.path.is_file()]
    blobs = []
    for item in items:
        buffer = io.BytesIO()
        picture(item).save(buffer, "JPEG", quality=92)
        blobs.append(buffer.getvalue())
    truth = sum(i.faces for i in items)
    rows = []
    variants = [(how, grey, 640) for how in ("as it is", "decoded again to 480 px", "enlarged to 480 px")
                for grey in (False, True)]
    variants.append(("enlarged to 480 px", True, 512))  # a smaller scan: what it loses
    for how, grey, side in variants:
        finder = FaceFinder(FaceSettings(grey=grey, detect_side=side)).load()
        cpu, hits, finds, missed = 0.0, 0, 0, []
        for item, blob in zip(items, blobs):
            image, size = decode(blob, draft_to=MODEL_DRAFT)
            started = time.process_time()
            if max(image.size) < 480 and min(image.size) < min(size):
                if how.startswith("decoded"):
                    image = decode(blob, draft_to=finder.draft_side)[0]
                elif how.startswith("enlarged"):
                    k = 480 / max(image.size)
                    image = image.resize((round(image.width * k), round(image.height * k)), Image.Resampling.BILINEAR)
            found = finder.detect(image)
            cpu += time.process_time() - started
            finds += len(found)
            hits += min(len(found), item.faces)
            if len(found) < item.faces:
                missed.append(f"{item.name} ({len(found)}/{item.faces})")
        rows.append({"small draft": how, "HOG on": f"{'grey' if grey else 'RGB'}, {side} px", "recall": f"{hits}/{truth}",
                     "false faces": finds - hits, "CPU ms/photo": round(1000 * cpu / len(items), 1),
                     "missed": ", ".join(missed)})
    return rows


def haar_gate(image: Image.Image, cascade: Any) -> bool:
    import cv2

    scale = min(1.0, 480 / max(image.size))
    grey = image.convert("L").resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    found = cascade.detectMultiScale(cv2.equalizeHist(np.asarray(grey)), scaleFactor=1.15, minNeighbors=3,
                                     minSize=(20, 20))
    return len(found) > 0


@command(out="bench-out/faces.json", quick={"cnn": False, "wallpapers": 5})
@click.option("--cnn/--no-cnn", default=True, help="Measure dlib's MMOD CNN too (seconds a photo).")
@click.option("--wallpapers", type=int, default=40, show_default=True, help="Photos without faces at most.")
@click.option("--labelled/--no-labelled", default=True,
              help="Also compare, on the labelled set decoded as indexing decodes it, what is done with a small draft.")
def main(out: Path, cnn: bool, wallpapers: int, labelled: bool) -> None:
    from retrieval.aligners.experts.people import load_cascade
    from retrieval.aligners.faces import FaceFinder, FaceSettings
    from retrieval.media.decode import decode

    faces, others = photos()
    others = others[:wallpapers]
    before = load()
    candidates: list[tuple[str, FaceSettings, bool]] = [
        (f"HOG at {side} px{', grey' if grey else ''}", FaceSettings(detect_side=side, grey=grey), False)
        for side in (512, 640, 800, 1024) for grey in (False, True) if side <= 640 or not grey
    ]
    candidates.append(("Haar gate at 480 px, then HOG at 640 px", FaceSettings(detect_side=640, grey=False), True))
    if cnn:
        candidates.append(("MMOD CNN at 640 px", FaceSettings(detector="cnn", detect_side=640), False))
    cascade = load_cascade("haarcascade_frontalface_default.xml")
    rows, data = [], {"machine": machine(), "load_before": before, "face_photos": len(faces),
                      "photos_without_faces": len(others), "candidates": []}
    for label, settings, gated in candidates:
        finder = FaceFinder(settings).load()
        # Decoded as the indexer decodes: draft-scaled JPEGs no smaller than the detector needs.
        decoded = {name: decode(blob, draft_to=finder.draft_side)[0] for name, blob in faces + others}
        found = false = 0
        times: dict[str, list[float]] = {"faces": [], "none": []}
        for kind, group in (("faces", faces), ("none", others)):
            for name, _ in group:
                image = decoded[name]
                started = time.process_time()
                hits = finder.detect(image) if not gated or haar_gate(image, cascade) else []
                times[kind].append(time.process_time() - started)
                if kind == "faces":
                    found += min(1, len(hits))
                    false += max(0, len(hits) - 1)
                else:
                    false += len(hits)
        row = {"detector": label, "recall": f"{found}/{len(faces)}", "false faces": false,
               "CPU ms/photo with a face": round(1000 * float(np.median(times["faces"])), 1),
               "CPU ms/photo without": round(1000 * float(np.median(times["none"])), 1)}
        rows.append(row)
        data["candidates"].append({**row, "seconds": times})
    # What a photo with people costs on top: each face aligned by its 5 landmarks and embedded.
    finder = FaceFinder().load()
    per_face = []
    for _, blob in faces:
        image = decode(blob, draft_to=finder.draft_side)[0]
        boxes = finder.detect(image)
        started = time.process_time()
        finder.embed(image, boxes)
        per_face.append((time.process_time() - started) / max(1, len(boxes)))
    data["descriptor_cpu_ms_per_face"] = round(1000 * float(np.median(per_face)), 1)
    rows.append({"detector": "+ 5-point alignment and ResNet descriptor, per face found", "recall": "",
                 "false faces": "", "CPU ms/photo with a face": data["descriptor_cpu_ms_per_face"],
                 "CPU ms/photo without": 0})
    if labelled:
        indexer_rows = small_drafts(decode)
        data["indexer_decode"] = indexer_rows
        report("faces", data, indexer_rows, None,
               "The labelled set (benchmarks/people_eval.py) saved as JPEG (quality 92) and decoded as `default`'s "
               f"indexing decodes it (draft to a short side of {MODEL_DRAFT} px); a draft whose long side is under "
               "480 px looked at as it is, decoded again larger, or enlarged; CPU ms per photo for that and HOG")
    data["load_after"] = load()
    report("faces", data, rows, out,
           f"Face detectors on {len(faces)} one-face photos and {len(others)} without faces "
           f"(load average {before:.1f} before, {data['load_after']:.1f} after)")


if __name__ == "__main__":
    main()
