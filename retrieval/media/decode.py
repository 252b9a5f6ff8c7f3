"""Bytes in, pixels out: hashing, EXIF and decoding one file within a time limit.

Bad files never raise: they come back as a :class:`Loaded` with a reason, and the indexer
records them as skipped. Plain functions, so that worker processes
(:mod:`retrieval.media.workers`) and Ray tasks run exactly what this process runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps, ImageStat, UnidentifiedImageError

from retrieval.errors import BadVideo
from retrieval.media import heif
from retrieval.media.deadline import DecodeTimeout, time_limit
from retrieval.media.exif import PhotoMeta, read_meta
from retrieval.media.files import SkipFile, content_hash, is_raw, read_regular, unreadable_kind
from retrieval.media.raw import decode_raw
from retrieval.media.sameness import perceptual_hash
from retrieval.media.video import VideoSettings, is_video, recorded, sample

#: What turns a decoded image into the model's input (an aligner's ImageTransform).
Transform = Callable[[Image.Image], np.ndarray]
#: What finds the faces of a decoded, upright RGB image (retrieval.aligners.faces.FaceFinder.find):
#: a list of faces with ``box`` (x, y, w, h in that image's pixels), ``score`` and ``embedding``.
FaceFn = Callable[[Image.Image], list[Any]]

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
    #: The faces found in the decoded picture, boxes in the full-size upright picture's pixels;
    #: None when faces were not looked for (or the content was known), [] when there are none.
    faces: list[Any] | None = None
    #: Why looking for faces failed on this file: it is indexed without faces.
    face_error: str | None = None
    #: A video's sampled frames: seconds into it, one per row of `pixels` (retrieval/media/video.py).
    #: None for a photo, whose `pixels` is one picture.
    times: list[float] | None = None


def load(
    path: str,
    transform: Transform | None,
    *,
    skip_hashes: Container[str] = frozenset(),
    draft: bool = True,
    time_limit_s: float | None = None,
    faces: FaceFn | None = None,
    video: VideoSettings | None = None,
) -> Loaded:
    """Read, hash and (unless the hash is already known) decode and preprocess one file.

    Within `time_limit` seconds, or the file is skipped with that reason. A video (by its
    name) is sampled into frames as `video` says (:func:`load_video`).
    """
    if is_video(path):
        return load_video(path, transform, skip_hashes=skip_hashes, settings=video, time_limit_s=time_limit_s)
    try:
        data = read_regular(path)
    except SkipFile as exc:
        return Loaded(path, error=str(exc))
    try:
        with time_limit(time_limit_s):
            return load_bytes(path, data, transform, skip_hashes=skip_hashes, draft=draft, faces=faces)
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
    faces: FaceFn | None = None,
    video: VideoSettings | None = None,
    time_limit_s: float | None = None,
) -> Loaded:
    """:func:`load` for bytes already read (by a cluster worker, through fsspec); `digest` if already hashed.

    A video (by its name) is sampled as `video` says, within its own limit (:func:`load_video_bytes`);
    `time_limit_s` applies to videos only (a caller limits a photo's decode around this call).
    """
    if is_video(path):  # before the empty check: an empty video is skipped with a video's reason, as locally
        return load_video_bytes(path, data, transform, skip_hashes=skip_hashes, settings=video,
                                time_limit_s=time_limit_s)
    if not data:
        return Loaded(path, error="empty file")
    notes: list[str] = []
    with decoder_messages(notes):
        loaded = _load_bytes(path, data, transform, skip_hashes=skip_hashes, draft=draft, digest=digest, faces=faces)
    loaded.notes = notes
    if loaded.error and notes and loaded.error.startswith(("corrupt image", "truncated image")):
        loaded.error += f" ({notes[-1]})"  # libtiff's own words say more than "decoder error -2"
    return loaded


def _load_bytes(
    path: str, data: bytes, transform: Transform | None, *, skip_hashes: Container[str], draft: bool, digest: str | None,
    faces: FaceFn | None = None,
) -> Loaded:
    digest = digest or content_hash(data)
    # Read for known content too: an index built before metadata existed gains it this way,
    # without decoding or encoding again.
    raw = is_raw(path)
    meta = read_meta(data, raw=raw)
    if digest in skip_hashes or (transform is None and faces is None):
        return Loaded(path, hash=digest, meta=meta)
    try:
        image, size = decode(data, draft_to=_draft_for(transform, faces) if draft else None, raw=raw)
        pixels = transform(image) if transform is not None else None
        sameness = perceptual_hash(image)
    except SkipFile as exc:  # a RAW file LibRaw cannot read, in its words
        return Loaded(path, hash=digest, error=str(exc))
    except Image.DecompressionBombError:
        return Loaded(path, hash=digest, error="decompression bomb (too many pixels)")
    except UnidentifiedImageError:
        return Loaded(path, hash=digest, error=unreadable_kind(data) or "not an image")
    except NotImplementedError as exc:
        return Loaded(path, hash=digest, error=f"unsupported variant of its format: {exc}")
    except DECODE_ERRORS as exc:
        # Pillow reports truncated and corrupt data as OSError / SyntaxError.
        kind = "truncated image" if "truncated" in str(exc).lower() else "corrupt image"
        return Loaded(path, hash=digest, error=f"{kind}: {str(exc).strip()}")
    found, face_error = _faces(faces, image, size, data, raw, draft) if faces is not None else (None, None)
    return Loaded(path, hash=digest, width=size[0], height=size[1], pixels=pixels, meta=meta, sameness=sameness,
                  faces=found, face_error=face_error)


def _draft_for(transform: Transform | None, faces: FaceFn | None) -> int | None:
    """The short side a draft decode keeps: the transform's, so that a picture's vector and
    perceptual hash never depend on whether faces are looked for; the face finder's without one."""
    return draft_size(transform) if transform is not None else getattr(faces, "draft_side", None)


def _faces(
    faces: FaceFn, image: Image.Image, size: tuple[int, int], data: bytes, raw: bool, draft: bool,
) -> tuple[list[Any], str | None]:
    """The faces `faces` finds in the picture, boxes scaled to the full-size picture (`size`, before
    EXIF rotation); a detector failure gives none and its reason.

    `image` is the model's decode. Only when its draft made even its long side smaller than the
    finder's ``enlarge_below`` (a 6-megapixel JPEG decoded at 1/8 scale for a 224 px model) is
    it enlarged to that for the faces alone (a resize: a second decode, the finder's
    ``redecode_below``, costs about as much as the first and found no more faces, docs/people.md),
    so a 12-megapixel photo's 1/8 decode (504 px) is looked at as it is.
    """
    try:
        shrunk = draft and min(image.size) < min(size)
        below = getattr(faces, "redecode_below", None)
        enlarge = getattr(faces, "enlarge_below", None)
        if shrunk and below and max(image.size) < below:
            image, _ = decode(data, draft_to=getattr(faces, "draft_side", None), raw=raw)
        elif shrunk and enlarge and max(image.size) < enlarge:
            factor = enlarge / max(image.size)
            image = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.BILINEAR)
        found = faces(image)
    except Exception as exc:  # noqa: BLE001 - any fault of the detector costs this file its faces, never the run
        return [], f"{type(exc).__name__}: {exc}"
    scale = max(size) / max(image.size)
    if abs(scale - 1.0) < 1e-6:
        return found, None
    return [dataclasses.replace(face, box=tuple(round(v * scale) for v in face.box)) for face in found], None


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
#: "FILE: message" (Pillow names an in-memory TIFF "tempfile.tif"; LibRaw a RAW read from bytes
#: "unknown file").
_DECODER_LINE = re.compile(rb"^(tempfile\.tif|unknown file|\w*TIFF\w*|[^:\n]*\.tiff?): ", re.IGNORECASE)


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
    faces: FaceFn | None = None,
    video: VideoSettings | None = None,
) -> list[Loaded]:
    """Load a chunk of files; the unit of work sent to a worker process."""
    return [load(p, transform, skip_hashes=skip_hashes, draft=draft, time_limit_s=time_limit_s, faces=faces, video=video)
            for p in paths]


def load_video(
    path: str, transform: Transform | None, *, skip_hashes: Container[str] = frozenset(),
    settings: VideoSettings | None = None, time_limit_s: float | None = None,
) -> Loaded:
    """Hash a video (read in blocks, never whole) and, unless its content is known, sample it
    into frames (retrieval/media/video.py), each preprocessed by `transform`.

    Pixels travel as float16 (half the bytes from a worker; the model's input is far coarser
    than that precision). A video that cannot be sampled is a skipped file with the reason.
    """
    settings = settings or VideoSettings()
    try:
        digest = hash_streamed(path)
    except SkipFile as exc:
        return Loaded(path, error=str(exc))
    meta = recorded(path)  # for known content too, as a photo's EXIF: an older index gains it
    if digest in skip_hashes or transform is None:
        return Loaded(path, hash=digest, meta=meta)
    notes: list[str] = []
    times: list[float] = []
    pixels: list[np.ndarray] = []
    first: Image.Image | None = None
    # Sampling stops itself within settings.longest_s; this is the backstop for a decoder that does not return.
    limit = max(time_limit_s or 0.0, settings.longest_s + 10.0)
    try:
        with time_limit(limit), warnings_noted(notes):
            for frame in sample(path, settings, notes):
                times.append(frame.time)
                pixels.append(transform(frame.image).astype(np.float16))
                first = first or frame.image
    except BadVideo as exc:
        return Loaded(path, hash=digest, error=str(exc), notes=notes)
    except DecodeTimeout:
        return Loaded(path, hash=digest, error=f"sampling took longer than {limit:g}s", notes=notes)
    assert first is not None  # sample() raises EmptyVideo when it keeps no frame
    return Loaded(path, hash=digest, width=first.width, height=first.height, pixels=np.stack(pixels),
                  notes=notes, sameness=perceptual_hash(first), times=times, meta=meta)


def load_video_bytes(
    path: str, data: bytes, transform: Transform | None, *, skip_hashes: Container[str] = frozenset(),
    settings: VideoSettings | None = None, time_limit_s: float | None = None,
) -> Loaded:
    """:func:`load_video` for a video's bytes already read (a cluster worker's, from a URL).

    FFmpeg reads a path: sampling opens the file twice (keyframes, then the frames between
    them) and seeks in both, so the bytes are written to a temporary file of the same
    extension (FFmpeg's "cannot read" message names the kind by it), sampled as a local file
    is, and the file is gone when this returns. The bytes are held once in memory, as a
    photo's are, and once on disk while sampled.
    """
    suffix = os.path.splitext(path)[1].lower()
    with tempfile.NamedTemporaryFile(prefix="retrieval-video-", suffix=suffix) as file:
        try:
            file.write(data)
            file.flush()
        except OSError as exc:
            return Loaded(path, error=f"no room to sample it (writing a temporary copy: {exc.strerror or exc})")
        loaded = load_video(file.name, transform, skip_hashes=skip_hashes, settings=settings, time_limit_s=time_limit_s)
    return dataclasses.replace(loaded, path=path)


def hash_streamed(path: str, block: int = 1 << 20) -> str:
    """:func:`content_hash` of a file read `block` bytes at a time (a video may not fit in memory),
    refused like :func:`read_regular` refuses: a special file, or one that changes while read."""
    try:
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise SkipFile("not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SkipFile(f"unreadable: {exc.strerror or exc}") from None
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(fd, "rb", closefd=False) as fh:
            while chunk := fh.read(block):
                digest.update(chunk)
        after = os.fstat(fd)
    except OSError as exc:
        raise SkipFile(f"unreadable: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise SkipFile("changed while being read (it is read again on the next run)")
    return digest.hexdigest()


def decode(data: bytes, draft_to: int | None = None, *, raw: bool = False) -> tuple[Image.Image, tuple[int, int]]:
    """Decode bytes to an upright RGB image; returns it and the original (width, height).

    With `draft_to`, JPEGs much larger than the model input decode at 1/2, 1/4 or 1/8
    scale (still at least `draft_to` on the short side), which is several times faster
    and changes the embedding negligibly. `raw` (the file's name says camera RAW) decodes
    through LibRaw (retrieval.media.raw): its preview when large enough, else a half-size
    demosaic; the size returned is the sensor's. HEIC/HEIF is read once pillow-heif's
    opener is registered, which this does first.
    """
    if raw:
        return decode_raw(data, draft_to)
    heif.register()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
        size = image.size
        if draft_to and image.format == "JPEG":
            image.draft("RGB", _draft_box(size, draft_to))
        image.load()
    return as_rgb(ImageOps.exif_transpose(image)), size


def open_still(path: str | os.PathLike[str], min_side: int | None = None) -> Image.Image:
    """``Image.open`` for a file of any still format the indexer reads, for thumbnails and sheets.

    HEIC/HEIF opens lazily like any format (the opener is registered first); a RAW file (by
    its name) comes back decoded and upright (its preview when its short side reaches
    `min_side`, else a half-size demosaic), so ``exif_transpose`` leaves it as it is. Raises
    one of DECODE_ERRORS for a file it cannot read, a RAW one included (as ValueError).
    """
    if is_raw(os.fspath(path)):
        with open(path, "rb") as file:
            data = file.read()
        try:
            return decode_raw(data, min_side)[0]
        except SkipFile as exc:
            raise ValueError(str(exc)) from None
    heif.register()
    return Image.open(path)


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
