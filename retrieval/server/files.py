"""Files by catalog id: originals and JPEG thumbnails, only from inside indexed folders.

A client never names a path. The route takes an integer id, the catalog gives the path,
and :func:`servable_path` resolves it (following every symlink) and checks that the real
file still lies inside one of the folders the index was built from (the catalog's ``roots``
meta entry; for an index built before roots were recorded, the file's own folder as
indexed). A file that moved out, or a symlink that now points elsewhere, is not served.

Thumbnails are made once per (file version, size) and cached as JPEG under
``INDEX/thumbs/SIZE/ID-<key>.jpg``; the key changes when the file changes. An original in a
format browsers do not draw (TIFF; HEIC and RAW later) is shown as a larger JPEG made and
cached the same way (``thumbs/2048``); the file itself stays one download away.

Who decodes is the caller's choice (`make`): the server decodes a format whose C library prints
to stderr (TIFF) in a process of its own (:mod:`retrieval.server.decoding`), the rest here.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageOps

from retrieval.errors import RetrievalError
from retrieval.media.decode import DECODE_ERRORS, as_rgb, open_still, warnings_noted

log = logging.getLogger(__name__)

THUMB_SIZES = (128, 256, 512)
THUMB_QUALITY = 85

#: Content types of the image formats browsers draw, by extension: these originals are sent as they are.
BROWSER_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".jpe": "image/jpeg", ".jfif": "image/jpeg", ".png": "image/png",
    ".apng": "image/apng", ".webp": "image/webp", ".avif": "image/avif", ".gif": "image/gif", ".bmp": "image/bmp",
    ".ico": "image/x-icon",
}
#: Content types of the videos the walk yields (retrieval.media.files.VIDEO_SUFFIXES): the original is sent
#: as it is, in byte ranges when asked (retrieval.server.ranges), so a <video> element can seek in it.
VIDEO_TYPES = {
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
    ".mkv": "video/x-matroska", ".avi": "video/x-msvideo",
}
#: Content types of the originals of other formats, when asked for as a download; anything else is sent as bytes.
MEDIA_TYPES = {**BROWSER_TYPES, **VIDEO_TYPES, ".tif": "image/tiff", ".tiff": "image/tiff", ".jp2": "image/jp2",
               ".psd": "image/vnd.adobe.photoshop"}
#: The longest side of the JPEG sent in place of an original browsers cannot draw (TIFF...): a full-screen view.
PREVIEW_SIZE = 2048
PREVIEW_QUALITY = 90


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


def browser_draws(path: Path) -> bool:
    """Whether browsers draw the file's format, so the original itself can be shown."""
    return path.suffix.lower() in BROWSER_TYPES


def is_video(path: Path) -> bool:
    """Whether the file is a video: its original is what the page plays, its thumbnails are frames."""
    return path.suffix.lower() in VIDEO_TYPES


def version_key(image_id: int, real: Path, size: int | str = "") -> str:
    """Changes whenever the file does: an ETag and a thumbnail cache key."""
    stat = real.stat()
    raw = f"{image_id}:{real}:{stat.st_size}:{stat.st_mtime_ns}:{size}"
    return hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()


#: Makes the JPEG of a file at most SIZE pixels a side: :func:`make_thumbnail`, or the server's decoders.
Maker = Callable[[Path, int], bytes]


def thumbnail(index_folder: Path, image_id: int, real: Path, size: int, make: Maker | None = None) -> tuple[bytes, str]:
    """(JPEG bytes, etag) of the thumbnail, from the cache or made now (by `make`) and cached."""
    if size not in THUMB_SIZES:
        raise RetrievalError(f"thumbnail size must be one of {', '.join(map(str, THUMB_SIZES))}")
    return _cached_jpeg(index_folder, image_id, real, size, make or make_thumbnail)


def preview(index_folder: Path, image_id: int, real: Path, make: Maker | None = None) -> tuple[bytes, str]:
    """(JPEG bytes, etag) of an original browsers cannot draw, at most PREVIEW_SIZE pixels a side, cached like a thumbnail."""
    return _cached_jpeg(index_folder, image_id, real, PREVIEW_SIZE, make or make_thumbnail)


def video_thumbnail(index_folder: Path, image_id: int, real: Path, size: int, seconds: float) -> tuple[bytes, str]:
    """(JPEG bytes, etag) of the frame shown `seconds` into a video (a search hit's moment), at most
    `size` pixels a side, made by retrieval.media.video.frame_at and cached per tenth of a second.

    A moment past the video's end is the end's frame, cached as the end: what any client can
    ask for caches at most ten frames a second of the video, not one per number it sends."""
    if size not in THUMB_SIZES:
        raise RetrievalError(f"thumbnail size must be one of {', '.join(map(str, THUMB_SIZES))}")
    moment = round(max(0.0, seconds), 1)
    if not _cache_file(index_folder, image_id, real, size, f"@{moment:.1f}")[0].is_file():
        from retrieval.media.video import probe  # PyAV loads only when a video's frame is asked for

        duration = probe(str(real)).get("duration")
        if duration is not None and moment > duration:
            moment = round(max(0.0, duration - 0.05), 1)
    return _cached_jpeg(index_folder, image_id, real, size, lambda path, side: video_frame_jpeg(path, moment, side),
                        variant=f"@{moment:.1f}")


def video_frame_jpeg(real: Path, seconds: float, size: int) -> bytes:
    """A JPEG of at most size x size pixels of the frame shown `seconds` into the video."""
    from retrieval.media.video import frame_at  # PyAV loads only when a video's frame is asked for

    image = frame_at(str(real), seconds)
    image.thumbnail((size, size))
    out = io.BytesIO()
    as_rgb(image).save(out, format="JPEG", quality=THUMB_QUALITY)
    return out.getvalue()


def _cached_jpeg(index_folder: Path, image_id: int, real: Path, size: int, make: Maker,
                 variant: str = "") -> tuple[bytes, str]:
    """`variant` tells apart pictures of one file at one size (a video's moments); a still image has none."""
    cached, key = _cache_file(index_folder, image_id, real, size, variant)
    if cached.is_file():
        return cached.read_bytes(), key
    data = make(real, size)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, cached)
    except OSError as exc:  # a read-only index folder still serves, uncached
        log.debug("thumbnail cache not written: %s", exc)
    return data, key


def _cache_file(index_folder: Path, image_id: int, real: Path, size: int, variant: str = "") -> tuple[Path, str]:
    """Where a picture of the file is cached, and its key (the ETag)."""
    key = version_key(image_id, real, f"{size}{variant}")
    return index_folder / "thumbs" / str(size) / f"{image_id}-{key}.jpg", key


def make_thumbnail(real: Path, size: int) -> bytes:
    """A JPEG of at most size x size pixels, upright, RGB; Pillow's warnings (corrupt EXIF, odd tags)
    go to the log at INFO with the file's name, not to stderr. Decoded in this process: a format whose
    decoder prints from C (TIFF) needs :meth:`retrieval.server.decoding.Decoders.thumbnail`."""
    notes: list[str] = []
    try:
        with warnings_noted(notes):
            return jpeg_of(real, size)
    finally:
        for said in notes:
            log.info("%s: %s", real, said)


def jpeg_of(real: Path, size: int) -> bytes:
    """:func:`make_thumbnail`'s work, leaving what the decoders say to the caller to collect."""
    try:
        with warnings.catch_warnings():
            # An indexed file was already accepted by the indexer, which allows what Pillow allows
            # (up to twice MAX_IMAGE_PIXELS); beyond that Pillow raises DecompressionBombError.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_still(real, size) as opened:  # HEIC, and RAW through its preview or a demosaic
                if opened.format == "JPEG":
                    opened.draft("RGB", (size, size))
                opened.load()
                image = ImageOps.exif_transpose(opened)
                if image.mode == "F" or image.mode.startswith("I"):
                    image = as_rgb(image)  # 16-bit grey: scaled first, as Pillow cannot shrink it
                image.thumbnail((size, size))
                out = io.BytesIO()
                quality = PREVIEW_QUALITY if size == PREVIEW_SIZE else THUMB_QUALITY
                as_rgb(image).save(out, format="JPEG", quality=quality)
    except (*DECODE_ERRORS, Image.DecompressionBombError) as exc:
        raise RetrievalError(f"cannot make a thumbnail of image: {exc}") from None
    return out.getvalue()
