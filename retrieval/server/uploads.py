"""Query images that clients send (an upload, or clip-retrieval's base64 ``image``): checked,
decoded and preprocessed for the index's aligner in the thread pool, so that the query thread
only runs the encoder on pixels that are ready.

The encoder needs a few hundred pixels a side. A JPEG of any size up to Pillow's own limit is
cheap, as it decodes at 1/2, 1/4 or 1/8 scale (``draft``); other formats decode every pixel, and
a 10 KB 1-bit PNG can hold 88 megapixels that take seconds of CPU to decode. Those are refused
above :data:`MAX_PIXELS` from their header alone, before any pixel is decoded.

What Pillow and libtiff say about an upload goes to the log at INFO, not to stderr; a TIFF is
decoded in the server's decoding process (:mod:`retrieval.server.decoding`).
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from retrieval.errors import RetrievalError
from retrieval.media import decode as media_decode
from retrieval.media.transform import ImageTransform
from retrieval.server.decoding import UPLOAD, Decoders
from retrieval.server.library import Library, Run
from retrieval.server.security import TooLarge

#: Pixels an upload may hold when its format has no reduced decode: a 40-megapixel camera's
#: full picture; a JPEG may hold up to Pillow's MAX_IMAGE_PIXELS.
MAX_PIXELS = 40_000_000
#: Formats Pillow decodes at a fraction of their size (Image.draft).
REDUCIBLE = frozenset({"JPEG"})

log = logging.getLogger(__name__)


def pixels(data: bytes, transform: ImageTransform, decoders: Decoders) -> np.ndarray:
    """The (3, H, W) input of the aligner for an uploaded image; RetrievalError (400) or TooLarge (413) when refused."""
    notes: list[str] = []
    try:
        # The size is checked here, more strictly than Pillow's warning (which warnings_noted drops).
        with media_decode.warnings_noted(notes):
            with Image.open(io.BytesIO(data)) as probe:
                (width, height), kind = probe.size, probe.format
        limit = Image.MAX_IMAGE_PIXELS or float("inf")
        if kind not in REDUCIBLE:
            limit = min(limit, MAX_PIXELS)
        if width * height > limit:
            more = "" if kind in REDUCIBLE else " (a JPEG may hold more: it is decoded at a reduced size)"
            raise TooLarge(f"image too large: {width}x{height} pixels; an upload may hold {limit / 1e6:g} megapixels{more}")
        return decoders.pixels(data, transform)
    except Image.DecompressionBombError:
        raise TooLarge("image too large to decode (decompression bomb)") from None
    except UnidentifiedImageError:
        raise RetrievalError("the uploaded file is not an image Pillow can read") from None
    except media_decode.DECODE_ERRORS as exc:
        raise RetrievalError(f"the uploaded image is corrupt or truncated: {exc}") from None
    finally:  # what Pillow said about the header; the decoders log what they say
        for note in notes:
            log.info("%s: %s", UPLOAD, note)


async def prepared(run: Run, index: str | None, data: bytes, decoders: Decoders) -> np.ndarray:
    """:func:`pixels` for the named index's aligner: the aligner is found (and loaded, the first
    time) on the query thread, the image decoded in the thread pool."""

    def transform_of(library: Library) -> ImageTransform:
        return library.get(index).index.aligner.transform

    transform = await run(transform_of)
    return await run_in_threadpool(pixels, data, transform, decoders)
