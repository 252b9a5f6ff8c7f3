"""Bytes in, pixels out: hashing, EXIF and decoding one file within a time limit.

Bad files never raise: they come back as a :class:`Loaded` with a reason, and the indexer
records them as skipped. Plain functions, so that worker processes
(:mod:`retrieval.media.workers`) and Ray tasks run exactly what this process runs.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, ImageStat, UnidentifiedImageError

from retrieval.media.deadline import DecodeTimeout, time_limit
from retrieval.media.exif import PhotoMeta, read_meta
from retrieval.media.files import SkipFile, content_hash, read_regular, unreadable_kind
from retrieval.media.sameness import perceptual_hash

#: What turns a decoded image into the model's input (an aligner's ImageTransform).
Transform = Callable[[Image.Image], np.ndarray]

#: What Pillow raises for a file it names but cannot decode (UnidentifiedImageError is an
#: OSError): truncated and corrupt data as OSError or SyntaxError, impossible values as
#: ValueError, and a variant its plugin does not implement (some DDS pixel formats) as
#: NotImplementedError. Every caller that decodes a file it was handed catches these.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, NotImplementedError)


@dataclass
class Loaded:
    """One file after loading: a hash and pixels, or a reason it was skipped."""

    path: str
    hash: str | None = None
    width: int = 0
    height: int = 0
    pixels: np.ndarray | None = None
    error: str | None = None
    #: EXIF date, camera, place and orientation, taken from the bytes already read.
    meta: PhotoMeta | None = None
    #: What the decoders said about this file (Pillow's warnings, libtiff's messages); the
    #: process that receives it logs them with the path (retrieval.ingest.stream), never stderr.
    notes: list[str] = field(default_factory=list)
    #: 64-bit perceptual hash of the decoded picture (retrieval.media.sameness), for
    #: near-duplicates; None when not decoded or flat.
    sameness: int | None = None


def load(
    path: str,
    transform: Transform | None,
    *,
    skip_hashes: Container[str] = frozenset(),
    draft: bool = True,
    time_limit_s: float | None = None,
) -> Loaded:
    """Read, hash and (unless the hash is already known) decode and preprocess one file.

    Within `time_limit` seconds, or the file is skipped with that reason.
    """
    try:
        data = read_regular(path)
    except SkipFile as exc:
        return Loaded(path, error=str(exc))
    try:
        with time_limit(time_limit_s):
            return load_bytes(path, data, transform, skip_hashes=skip_hashes, draft=draft)
    except DecodeTimeout:
        return Loaded(path, error=f"decoding took longer than {time_limit_s:g}s (pathological image?)")


def load_bytes(
    path: str,
    data: bytes,
    transform: Transform | None,
    *,
    skip_hashes: Container[str] = frozenset(),
    draft: bool = True,
    digest: str | None = None,
) -> Loaded:
    """:func:`load` for bytes already read (by a cluster worker, through fsspec); `digest` if already hashed."""
    if not data:
        return Loaded(path, error="empty file")
    notes: list[str] = []
    with decoder_messages(notes):
        loaded = _load_bytes(path, data, transform, skip_hashes=skip_hashes, draft=draft, digest=digest)
    loaded.notes = notes
    if loaded.error and notes and loaded.error.startswith(("corrupt image", "truncated image")):
        loaded.error += f" ({notes[-1]})"  # libtiff's own words say more than "decoder error -2"
    return loaded


def _load_bytes(
    path: str, data: bytes, transform: Transform | None, *, skip_hashes: Container[str], draft: bool, digest: str | None,
) -> Loaded:
    digest = digest or content_hash(data)
    # Read for known content too: an index built before metadata existed gains it this way,
    # without decoding or encoding again.
    meta = read_meta(data)
    if digest in skip_hashes or transform is None:
        return Loaded(path, hash=digest, meta=meta)
    try:
        image, size = decode(data, draft_to=draft_size(transform) if draft else None)
        pixels = transform(image)
        sameness = perceptual_hash(image)
    except Image.DecompressionBombError:
        return Loaded(path, hash=digest, error="decompression bomb (too many pixels)")
    except UnidentifiedImageError:
        return Loaded(path, hash=digest, error=unreadable_kind(data) or "not an image")
    except NotImplementedError as exc:
        return Loaded(path, hash=digest, error=f"unsupported variant of its format: {exc}")
    except DECODE_ERRORS as exc:
        # Pillow reports truncated and corrupt data as OSError / SyntaxError.
        kind = "truncated image" if "truncated" in str(exc).lower() else "corrupt image"
        return Loaded(path, hash=digest, error=f"{kind}: {exc}")
    return Loaded(path, hash=digest, width=size[0], height=size[1], pixels=pixels, meta=meta, sameness=sameness)


@contextmanager
def decoder_messages(notes: list[str]) -> Iterator[None]:
    """Collect into `notes` what decoders say inside the block, instead of letting it reach stderr.

    Pillow warns through Python's warnings (corrupt EXIF, odd tags); libtiff prints from C
    straight to file descriptor 2, so that descriptor points at a scratch file meanwhile, and what
    other threads print in that window is handed back to stderr afterwards. Not for two threads
    decoding at once (each would restore the other's descriptor): a decoding worker and the CLI
    decode one file at a time; the server decodes TIFFs in a worker process
    (retrieval/server/decoding.py).
    """
    said: list[str] = []
    try:
        with warnings_noted(notes), _fd2_captured() as said:
            yield
    finally:  # noted when the block fails too: libtiff's words often say why
        notes.extend(dict.fromkeys(line.removeprefix("tempfile.tif: ") for line in said))  # Pillow's made-up name


@contextmanager
def warnings_noted(notes: list[str]) -> Iterator[None]:
    """Collect into `notes` the Python warnings raised inside the block (Pillow's: corrupt EXIF,
    odd tags), each message once, instead of printing them; decompression-bomb warnings are dropped
    (callers check sizes themselves). Safe where fd 2 must stay as it is (a server's threads)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            notes.extend(dict.fromkeys(str(w.message) for w in caught if not issubclass(w.category, Image.DecompressionBombWarning)))


#: What a decoder writes to descriptor 2 from C: libtiff's handlers print "MODULE: message" or
#: "FILE: message" (Pillow names an in-memory TIFF "tempfile.tif").
_DECODER_LINE = re.compile(rb"^(tempfile\.tif|\w*TIFF\w*|[^:\n]*\.tiff?): ", re.IGNORECASE)


@contextmanager
def _fd2_captured() -> Iterator[list[str]]:
    """The decoders' lines written to file descriptor 2 inside the block, in the list it yields
    (filled at the end).

    Descriptor 2 belongs to the whole process: another thread (a progress bar, the OCR reader, a
    logger) may write to it meanwhile. Its bytes are written back to the real descriptor when the
    block ends, late by the length of one decode but not lost; only lines that look like a
    decoder's are kept.
    """
    said: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no descriptor 2 to borrow: leave it alone
        yield said
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            sink.seek(0)
            others = bytearray()
            for line in sink.read().splitlines(keepends=True):
                if _DECODER_LINE.match(line):
                    said.append(line.decode("utf-8", "replace").strip())
                else:
                    others += line
            if others:
                try:
                    os.write(saved, bytes(others))
                except OSError:
                    pass  # stderr itself is gone: nothing to hand them back to
            os.close(saved)


def load_many(
    paths: list[str],
    transform: Transform | None,
    skip_hashes: Container[str] = frozenset(),
    draft: bool = True,
    time_limit_s: float | None = None,
) -> list[Loaded]:
    """Load a chunk of files; the unit of work sent to a worker process."""
    return [load(p, transform, skip_hashes=skip_hashes, draft=draft, time_limit_s=time_limit_s) for p in paths]


def decode(data: bytes, draft_to: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode bytes to an upright RGB image; returns it and the original (width, height).

    With `draft_to`, JPEGs much larger than the model input decode at 1/2, 1/4 or 1/8
    scale (still at least `draft_to` on the short side), which is several times faster
    and changes the embedding negligibly.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
        size = image.size
        if draft_to and image.format == "JPEG":
            image.draft("RGB", _draft_box(size, draft_to))
        image.load()
    return as_rgb(ImageOps.exif_transpose(image)), size


def as_rgb(image: Image.Image) -> Image.Image:
    """`image` in RGB (itself when it is already), for the model, thumbnails and sheets alike.

    Greyscale of more than 8 bits (modes I;16*, I and F: 16-bit PNG and TIFF, scientific
    and medical images) is first scaled by the range its values span: Pillow's own
    conversion clips every value above 255, and a 12- or 16-bit picture turns solid white.
    A picture with transparency is laid on white, as a page or a viewer shows it, or on black
    when what it draws is light (white text, a pale logo) and would vanish on white: Pillow's
    conversion drops the alpha channel and shows whatever colour the transparent pixels hold,
    so a shape drawn in alpha alone (a brush, a one-colour icon) turns into one flat colour.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "F" or image.mode.startswith("I"):
        image = _scaled_to_8_bits(image)
    elif image.mode in _ALPHA_MODES or image.has_transparency_data:
        return _on_page(image)
    return image.convert("RGB")


#: Modes with an alpha channel (lower-case a: premultiplied).
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
#: Mean grey (of 255) of a transparent picture's drawn pixels above which it is laid on black:
#: within a quarter of the range from white, a drawing all but vanishes on a white page.
_LIGHT = 192
#: Alpha from which a pixel counts as drawn (its antialiased fringe does not).
_DRAWN = [0] * 128 + [255] * 128


def _on_page(image: Image.Image) -> Image.Image:
    """`image`, which has an alpha channel or a transparent colour, composited onto white (black
    if what it draws is light), in RGB."""
    rgba = image.convert("RGBA")
    alpha = rgba.getchannel("A")
    lowest, highest = alpha.getextrema()
    # Opaque throughout, nothing shows through; transparent throughout, the alpha channel is one
    # a writer left unset (many 32-bit BMPs and TGAs), and browsers show such a file opaque too.
    if lowest == 255 or highest == 0:
        return rgba.convert("RGB")
    drawn = alpha.point(_DRAWN)
    light = drawn.getbbox() is not None and ImageStat.Stat(rgba.convert("L"), drawn).mean[0] > _LIGHT
    page = (0, 0, 0, 255) if light else (255, 255, 255, 255)
    return Image.alpha_composite(Image.new("RGBA", rgba.size, page), rgba).convert("RGB")


def _scaled_to_8_bits(image: Image.Image) -> Image.Image:
    """An "L" image of high-bit greyscale: 0 (or the lowest value, when negative) to the highest
    value mapped onto 0..255. Zero stays black, so a dim picture is not brightened into another's look."""
    values = np.asarray(image)
    if values.dtype.kind == "f":
        finite = values[np.isfinite(values)]
        if not finite.size:
            return Image.new("L", image.size)
        lo, hi = min(float(finite.min()), 0.0), float(finite.max())
        values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
    else:
        lo, hi = min(int(values.min()), 0), int(values.max()) if values.size else 0
    if hi <= lo:
        return Image.new("L", image.size)
    scaled = (values.astype(np.float32) - lo) * np.float32(255.0 / (hi - lo))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def draft_size(transform: object) -> int | None:
    """The short side a draft decode must keep: what the transform resizes to before cropping."""
    return getattr(transform, "resize_to", None) or getattr(transform, "size", None)


def _draft_box(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    # draft() keeps the result at least as large as the box; scale the box so the short side
    # stays >= short_side while the long side follows the aspect ratio.
    w, h = size
    scale = short_side / min(w, h)
    return max(1, int(w * scale)), max(1, int(h * scale))
