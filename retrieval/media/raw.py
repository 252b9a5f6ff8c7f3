"""Camera RAW files (DNG, CR2, CR3, NEF, ARW, RAF, ORF, RW2, ...) through rawpy, the only
module that imports it.

rawpy's wheels carry LibRaw. A RAW file usually holds the camera's own JPEG rendering (its
preview); when that preview is large enough for what is asked, it is used as is, which takes a
few milliseconds instead of a demosaic's hundreds. Otherwise the sensor data is demosaiced at
half size (each 2x2 Bayer cell becomes one pixel: four times fewer pixels, no interpolation)
with the camera's white balance, in 8 bits per channel: a 12-, 14- or 16-bit RAW encodes as
its 8-bit rendering would. Measured in docs/formats.md.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from retrieval.media.files import SkipFile

#: Short side a preview needs when the caller names none (a full decode: thumbnails, sheets):
#: typical camera previews (1616 x 1080 and up) pass, the 160 x 120 EXIF thumbnails do not.
PREVIEW_MIN_SIDE = 1024

#: LibRaw's ``flip`` (sizes.flip) as Pillow transposes: the preview is stored as the sensor saw
#: it, and LibRaw applies the same turn to a demosaiced picture itself.
_FLIP = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


def decode_raw(data: bytes, min_side: int | None = None, *, preview: bool = True) -> tuple[Image.Image, tuple[int, int]]:
    """The upright RGB picture of a RAW file's bytes, and the photo's full (width, height).

    Its embedded JPEG (or bitmap) preview when `preview` and its short side is at least
    `min_side` (PREVIEW_MIN_SIDE when None), else a half-size demosaic. Raises SkipFile,
    whose message is the reason, for a file LibRaw cannot read (damaged, truncated, a
    camera it does not know).
    """
    import rawpy  # imported on first use: processes that never meet a RAW skip loading LibRaw

    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            sizes = raw.sizes
            full = (sizes.height, sizes.width) if sizes.flip in (5, 6) else (sizes.width, sizes.height)
            picture = _preview(raw, min_side or PREVIEW_MIN_SIDE) if preview else None
            if picture is not None:
                return picture, full
            rgb = raw.postprocess(half_size=True, output_bps=8, use_camera_wb=True)
    except rawpy.LibRawError as exc:
        raise SkipFile(f"RAW file LibRaw cannot read, {_reason(exc)}") from None
    return Image.fromarray(np.ascontiguousarray(rgb)), full


def _preview(raw: Any, min_side: int) -> Image.Image | None:
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except rawpy.LibRawError:  # no preview, or one LibRaw cannot hand out: demosaic instead
        return None
    try:
        image: Image.Image
        if thumb.format == rawpy.ThumbFormat.JPEG:
            jpeg = Image.open(io.BytesIO(thumb.data))
            if min(jpeg.size) < min_side:
                return None
            jpeg.draft("RGB", (min_side, min_side))  # a large preview decodes at 1/2..1/8 scale
            image = jpeg.convert("RGB")
        else:
            image = Image.fromarray(np.ascontiguousarray(thumb.data)).convert("RGB")
            if min(image.size) < min_side:
                return None
    except (OSError, ValueError, SyntaxError):  # a broken preview: the sensor data may still be good
        return None
    turn = _FLIP.get(raw.sizes.flip)
    if turn is not None:
        image = image.transpose(turn)
    image.info = {}  # upright now: a preview's own EXIF or XMP orientation must not turn it again
    return image


def preview_exif(data: bytes) -> bytes | None:
    """The embedded JPEG preview's bytes, whose EXIF block is the camera's (RAF, CR3 and
    others not laid out as TIFF keep their metadata there); None when there is none."""
    import rawpy

    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            thumb = raw.extract_thumb()
            return bytes(thumb.data) if thumb.format == rawpy.ThumbFormat.JPEG else None
    except rawpy.LibRawError:
        return None


#: LibRaw's errors, by class name, in a user's words.
_KINDS = {
    "LibRawIOError": "truncated or unreadable",
    "LibRawFileUnsupportedError": "not a RAW format LibRaw knows",
    "LibRawDataError": "damaged sensor data",
    "LibRawRequestForNonexistentImageError": "no picture in it",
    "LibRawTooBigError": "too large",
}


def _reason(exc: Exception) -> str:
    text = str(exc)
    if text.startswith(("b'", 'b"')):  # LibRaw's messages arrive as bytes reprs
        text = text[2:-1]
    kind = _KINDS.get(type(exc).__name__, "damaged or unsupported")
    return f"{kind}: {text}" if text else kind
