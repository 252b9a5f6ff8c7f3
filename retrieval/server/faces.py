"""Faces for the page: the strip of named people, who is in a photo, and a face's thumbnail.

A face is served by its id only. Its picture is cut on demand from an indexed file holding its
content (faces are keyed by content hash, docs/people.md), and only from a file the server may
serve: one still inside the indexed folders (retrieval/server/files.py's rules, applied by the
route). Crops are cached beside the index like thumbnails, keyed by the file's version and the box.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from retrieval.errors import RetrievalError
from retrieval.media.decode import DECODE_ERRORS, as_rgb, open_still
from retrieval.server import files
from retrieval.storage.catalog import Catalog

#: Sides a face thumbnail may have.
FACE_SIZES = (64, 128, 256)
#: Room around the detector's box, as a share of its side: a box is tight on the features, and a
#: face cut at the brows and chin is hard to recognise.
MARGIN = 0.35


def named_people(catalog: Catalog) -> list[dict[str, Any]]:
    """The named, shown people, most photos first: id, name, photo count and their clearest face's id."""
    if catalog.schema_version < 5:
        return []
    rows = catalog.db.execute(
        "SELECT people.id, people.name, count(DISTINCT images.id) AS n, "
        "(SELECT f.id FROM faces f WHERE f.person_id = people.id ORDER BY f.score DESC, f.id LIMIT 1) "
        "FROM people JOIN faces ON faces.person_id = people.id "
        "JOIN images ON images.hash = faces.hash AND images.status = 'ok' "
        "WHERE people.name IS NOT NULL AND people.hidden = 0 GROUP BY people.id ORDER BY n DESC, people.name"
    )
    return [{"id": r[0], "name": r[1], "count": r[2], "face_id": r[3]} for r in rows]


def face_source(catalog: Catalog, face_id: int) -> tuple[int, tuple[int, int, int, int]] | None:
    """(image id, box) of a face: the first indexed file with its content, and where the face is in it."""
    if catalog.schema_version < 5:
        return None
    row = catalog.db.execute(
        "SELECT images.id, faces.x, faces.y, faces.w, faces.h FROM faces JOIN images ON images.hash = faces.hash "
        "AND images.status = 'ok' WHERE faces.id = ? ORDER BY images.id LIMIT 1", [face_id]
    ).fetchone()
    return None if row is None else (int(row[0]), (int(row[1]), int(row[2]), int(row[3]), int(row[4])))


def face_thumbnail(index_folder: Path, face_id: int, image_id: int, real: Path, box: tuple[int, int, int, int],
                   size: int) -> tuple[bytes, str]:
    """(JPEG bytes, etag) of the face, square, `size` pixels a side; cached beside the index."""
    if size not in FACE_SIZES:
        raise RetrievalError(f"face thumbnail size must be one of {', '.join(map(str, FACE_SIZES))}")
    key = files.version_key(image_id, real, f"face{face_id}:{box}:{size}")
    cached = index_folder / "thumbs" / "faces" / f"{face_id}-{key}.jpg"
    if cached.is_file():
        return cached.read_bytes(), key
    data = crop_face(real, box, size)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(cached.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(cached)
    except OSError:  # a read-only index folder still serves, uncached
        pass
    return data, key


def crop_face(real: Path, box: tuple[int, int, int, int], size: int) -> bytes:
    """The square around `box` (x, y, w, h in the upright picture's pixels), as a JPEG."""
    x, y, w, h = box
    side = max(w, h) * (1 + 2 * MARGIN)
    cx, cy = x + w / 2, y + h / 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the indexer already accepted this file; its notes went to the log then
            with open_still(real) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened)
                left, top = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
                right, bottom = min(image.width, round(cx + side / 2)), min(image.height, round(cy + side / 2))
                if right <= left or bottom <= top:
                    raise RetrievalError("the face lies outside its picture (was the file changed?)")
                face = as_rgb(image.crop((left, top, right, bottom)))
    except DECODE_ERRORS as exc:
        raise RetrievalError(f"cannot read the picture of this face: {exc}") from None
    face = ImageOps.pad(face, (size, size), method=Image.Resampling.LANCZOS, color=(0, 0, 0))
    out = io.BytesIO()
    face.save(out, format="JPEG", quality=88)
    return out.getvalue()
