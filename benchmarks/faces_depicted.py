"""Printed and painted faces: found or not, and how far each lies from the person's own photos.

A face is often in a photo as a picture: a print on a table, a poster, a painting. Each subject
(face_recognition's `obama2.jpg` and `biden.jpg`, scikit-image's astronaut) is rendered:

- as it is (the photo itself, for reference);
- **printed**: cut to head and shoulders, contrast and colour lowered, a little blurred, with a
  white border, turned a few degrees, laid on scikit-image's coffee table, sensor noise added,
  saved as a JPEG (quality 80): a photo of a print;
- **painted**: OpenCV's non-photorealistic filters (``cv2.stylization``, a watercolour-like
  look; ``cv2.edgePreservingFilter``; ``cv2.pencilSketch``'s colour sketch) and a 2-bit
  posterization (flat areas of colour, as in a poster).

Each rendering is decoded as an index run with `default` decodes a file (a JPEG draft-decoded
to a 224 px short side, then enlarged to 480 px for the faces) and as it is (full size), and
looked at by the shipped ``FaceFinder``. The distance (of the face the index run finds, else of
the full-size one) is to the mean descriptor of the person's real photos (Obama:
`obama.jpg` and `obama3.jpg`, photos other than the one rendered; Biden and the astronaut: the
same photo as it is, so it measures what the rendering alone moves), and "would join" applies
the grouping's rule (a person of two faces or more within 0.55 of the mean, of one face within 0.50).

    python -m benchmarks.faces_depicted
"""

from __future__ import annotations

import io
import sys
from datetime import date
from pathlib import Path
from typing import Any

import click
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from benchmarks import harness

FACE_PHOTOS = Path(sys.prefix) / "share" / "face-photos"
#: Head-and-shoulders boxes (left, top, right, bottom) of the photos a print is made of: a
#: portrait print shows the face large, as a photo of someone's print on a table does.
PORTRAIT_CROPS = {"obama2.jpg": (40, 180, 580, 830), "biden.jpg": (250, 40, 960, 900), "astronaut.png": (70, 0, 370, 330)}
PAINTINGS = ("stylization", "edge-preserving", "posterized", "pencil-colour")


def skimage_photo(name: str) -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / name


def subject(name: str) -> Image.Image:
    """An upright RGB picture of one of the subjects (face_recognition's photos or scikit-image's)."""
    path = FACE_PHOTOS / name if (FACE_PHOTOS / name).is_file() else skimage_photo(name)
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def printed(photo: Image.Image, crop: tuple[int, int, int, int] | None = None, angle: float = 4.0,
            side: int = 380, seed: int = 0, background: str = "coffee.png") -> bytes:
    """A JPEG photo of `photo` printed and laid on a table (see the module's text)."""
    rng = np.random.default_rng(seed)
    card = photo.crop(crop) if crop else photo.copy()
    card.thumbnail((side, side))
    card = ImageEnhance.Contrast(card).enhance(0.75)
    card = ImageEnhance.Color(card).enhance(0.7).filter(ImageFilter.GaussianBlur(0.8))
    card = ImageOps.expand(card, border=max(8, side // 20), fill=(245, 245, 238))
    card = card.convert("RGBA").rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    with Image.open(skimage_photo(background)) as table:
        scene = table.convert("RGB").resize((900, 600))
    scene.paste(card, (300, 60), card)
    pixels = np.asarray(scene, np.float32) + rng.normal(0, 4, (scene.height, scene.width, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=80)
    return out.getvalue()


def painted(photo: Image.Image, style: str = "stylization") -> bytes:
    """`photo` rendered non-photorealistically (one of :data:`PAINTINGS`), as a PNG."""
    import cv2

    bgr = cv2.cvtColor(np.asarray(photo), cv2.COLOR_RGB2BGR)
    if style == "stylization":
        out = cv2.stylization(bgr, sigma_s=60, sigma_r=0.45)
    elif style == "edge-preserving":
        out = cv2.edgePreservingFilter(bgr, flags=cv2.RECURS_FILTER, sigma_s=60, sigma_r=0.4)
    elif style == "pencil-colour":
        _, out = cv2.pencilSketch(bgr, sigma_s=60, sigma_r=0.07, shade_factor=0.05)
    elif style == "posterized":
        out = cv2.cvtColor(np.asarray(ImageOps.posterize(photo, 2)), cv2.COLOR_RGB2BGR)
    else:
        raise ValueError(f"unknown painting style {style!r}: one of {', '.join(PAINTINGS)}")
    buffer = io.BytesIO()
    Image.fromarray(cv2.cvtColor(out, cv2.COLOR_BGR2RGB)).save(buffer, "PNG")
    return buffer.getvalue()


def renderings(name: str) -> dict[str, bytes]:
    """Every rendering of subject `name`, by label, as file bytes."""
    photo = subject(name)
    as_is = io.BytesIO()
    photo.save(as_is, "PNG")
    out = {"photo as it is": as_is.getvalue()}
    out |= {f"printed, turned {a:+g}°": printed(photo, PORTRAIT_CROPS[name], angle=a) for a in (4.0, -6.0)}
    out |= {f"painted: {style}": painted(photo, style) for style in PAINTINGS}
    return out


class IndexDraft:
    """What `default`'s transform is to the decoder (a JPEG drafted to a 224 px short side), without the model."""

    size = 224

    def __call__(self, image: Image.Image) -> np.ndarray:
        return np.zeros((3, 1, 1), np.float32)  # the pixels are not used: faces only


@harness.command(out="bench-out/faces_depicted.json")
def main(out: Path) -> None:
    from retrieval.aligners.faces import FaceFinder
    from retrieval.media.decode import decode, load_bytes

    if not (FACE_PHOTOS / "obama.jpg").is_file():
        raise click.ClickException(f"{FACE_PHOTOS} is missing: `bash scripts/setup.sh --test` unpacks it")
    finder = FaceFinder().load()

    def faces(data: bytes) -> list[Any]:
        image, _ = decode(data)
        return finder.find(image.convert("RGB"))

    def descriptor(name: str) -> np.ndarray:
        found = faces((FACE_PHOTOS / name).read_bytes() if (FACE_PHOTOS / name).is_file() else skimage_photo(name).read_bytes())
        return found[0].embedding

    people = {"Obama": np.stack([descriptor("obama.jpg"), descriptor("obama3.jpg")]),
              "Biden": descriptor("biden.jpg")[None], "astronaut": descriptor("astronaut.png")[None]}
    means = {who: e.mean(axis=0) for who, e in people.items()}
    radius = {who: 0.55 if len(e) >= 2 else 0.50 for who, e in people.items()}
    load_before = harness.load()
    rows: list[dict[str, Any]] = []
    for name, who in (("obama2.jpg", "Obama"), ("biden.jpg", "Biden"), ("astronaut.png", "astronaut")):
        for label, data in renderings(name).items():
            full = faces(data)
            indexed = load_bytes(label, data, IndexDraft(), draft=True, faces=finder).faces or []
            row: dict[str, Any] = {"subject": name, "rendering": label, "found by an index run": len(indexed),
                                   "found full size": len(full)}
            if indexed or full:
                face = (indexed or full)[0]
                dist = {p: float(np.linalg.norm(face.embedding - m)) for p, m in means.items()}
                others = min(d for p, d in dist.items() if p != who)
                joins = [p for p in sorted(dist, key=dist.__getitem__) if dist[p] < radius[p]]
                row |= {"score": round(face.score, 2), "to own mean": round(dist[who], 3),
                        "to nearest other": round(others, 3), "would join": joins[0] if joins else "a new person"}
            rows.append(row)
            harness.note(f"{name} {label}: {row}")
    res: dict[str, Any] = {"date": str(date.today()), "machine": harness.summary(), "host": harness.machine(),
           "load_average": [load_before, harness.load()], "rows": rows}
    harness.report("faces_depicted", res, rows, out,
                   f"printed and painted faces, {res['date']}, {res['machine']}, "
                   f"load {res['load_average'][0]} → {res['load_average'][1]}")


if __name__ == "__main__":
    main()
