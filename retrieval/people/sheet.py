"""Faces drawn: one face cut from its photo (made on demand, never stored), and a sheet of people.

`retrieval people --sheet FILE` draws a row per person: id, name and count, then some of their
faces. The page's face thumbnails are cut by :func:`face_crop` too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

from retrieval.media.decode import DECODE_ERRORS, as_rgb, decoder_messages, open_still

log = logging.getLogger(__name__)

THUMB = 96
LABEL = 14
GAP = 4
#: Faces drawn per person on a sheet.
FACES_EACH = 8
#: Share of the box's side added around it: a face with its hair and chin reads better.
MARGIN = 0.25


def face_crop(path: str | Path, box: Sequence[int], size: int = THUMB) -> Image.Image:
    """The face at `box` (x, y, w, h in the upright picture's pixels) of the photo at `path`, as a
    `size` square; grey when the file cannot be read any more."""
    x, y, w, h = (int(v) for v in box)
    notes: list[str] = []
    try:
        with decoder_messages(notes), open_still(path) as image:
            upright = as_rgb(ImageOps.exif_transpose(image))
            pad = MARGIN * max(w, h)
            region = (max(0, round(x - pad)), max(0, round(y - pad)),
                      min(upright.width, round(x + w + pad)), min(upright.height, round(y + h + pad)))
            return ImageOps.pad(upright.crop(region), (size, size), color="#eeeeee")
    except (*DECODE_ERRORS, TypeError):
        return Image.new("RGB", (size, size), "#cccccc")
    finally:
        for note in notes:
            log.info("%s: %s", path, note)


def people_sheet(people: Sequence[dict[str, Any]], out: str | Path, faces_each: int = FACES_EACH) -> Path:
    """A row per person (as :func:`retrieval.people.naming.listing` gives them): a title line, then
    up to `faces_each` of their faces."""
    width = GAP + faces_each * (THUMB + GAP)
    row = LABEL + GAP + THUMB + GAP
    sheet = Image.new("RGB", (max(width, 320), GAP + max(1, len(people)) * row), "white")
    draw = ImageDraw.Draw(sheet)
    for i, person in enumerate(people):
        top = GAP + i * row
        title = f"{person['id']}  {person.get('name') or '(unnamed)'}  {person['count']} photo(s)"
        draw.text((GAP + 2, top + 1), title, fill="black")
        for j, found in enumerate(person["faces"][:faces_each]):
            sheet.paste(face_crop(found["path"], found["box"]), (GAP + j * (THUMB + GAP), top + LABEL + GAP))
    out = Path(out)
    sheet.save(out)
    return out
