"""Files by catalog id: originals and JPEG thumbnails, only from inside indexed folders.

A client never names a path. The route takes an integer id, the catalog gives the path,
and :func:`servable_path` resolves it (following every symlink) and checks that the real
file still lies inside one of the folders the index was built from (the catalog's ``roots``
meta entry; for an index built before roots were recorded, the file's own folder as
indexed). A file that moved out, or a symlink that now points elsewhere, is not served.

Thumbnails are made once per (file version, size) and cached as JPEG under
``INDEX/thumbs/SIZE/ID-<key>.jpg``; the key changes when the file changes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from retrieval.errors import RetrievalError

log = logging.getLogger(__name__)

THUMB_SIZES = (128, 256, 512)
THUMB_QUALITY = 85

#: Content types for the image formats the indexer reads; anything else is sent as bytes.
MEDIA_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".jpe": "image/jpeg", ".png": "image/png",
    ".webp": "image/webp", ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
}


def servable_path(path: str, roots: list[str] | None) -> Path | None:
    """The real path of an indexed file if it may be served, else None."""
    if not path or "\x00" in path or not os.path.isabs(path):
        return None
    allowed = [Path(r) for r in roots] if roots else [Path(path).parent]
    try:
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):  # gone, unreadable, or a symlink loop
        return None
    if not any(real == root or real.is_relative_to(root) for root in allowed):
        return None
    return real if real.is_file() else None


def media_type(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")


def version_key(image_id: int, real: Path, size: int | str = "") -> str:
    """Changes whenever the file does: an ETag and a thumbnail cache key."""
    stat = real.stat()
    raw = f"{image_id}:{real}:{stat.st_size}:{stat.st_mtime_ns}:{size}"
    return hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()


def thumbnail(index_folder: Path, image_id: int, real: Path, size: int) -> tuple[bytes, str]:
    """(JPEG bytes, etag) of the thumbnail, from the cache or made now and cached."""
    if size not in THUMB_SIZES:
        raise RetrievalError(f"thumbnail size must be one of {', '.join(map(str, THUMB_SIZES))}")
    key = version_key(image_id, real, size)
    cached = index_folder / "thumbs" / str(size) / f"{image_id}-{key}.jpg"
    if cached.is_file():
        return cached.read_bytes(), key
    data = make_thumbnail(real, size)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, cached)
    except OSError as exc:  # a read-only index folder still serves, uncached
        log.debug("thumbnail cache not written: %s", exc)
    return data, key


def make_thumbnail(real: Path, size: int) -> bytes:
    """A JPEG of at most size x size pixels, upright, RGB."""
    try:
        with warnings.catch_warnings():
            # An indexed file was already accepted by the indexer, which allows what Pillow allows
            # (up to twice MAX_IMAGE_PIXELS); beyond that Pillow raises DecompressionBombError.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(real) as image:
                if image.format == "JPEG":
                    image.draft("RGB", (size, size))
                image.load()
                image = ImageOps.exif_transpose(image)
                image.thumbnail((size, size))
                if image.mode != "RGB":
                    image = image.convert("RGB")
                out = io.BytesIO()
                image.save(out, format="JPEG", quality=THUMB_QUALITY)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise RetrievalError(f"cannot make a thumbnail of image: {exc}") from None
    return out.getvalue()
