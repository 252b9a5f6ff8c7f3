"""Which files are images, and reading them safely: walking folders, hashing, refusing special files.

Plain functions over paths, so that worker processes (and a distributed engine) can run
them. A file that cannot be read never raises out of here except as :class:`SkipFile`,
whose message is the reason the indexer records.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import EpsImagePlugin, Image, ImageFile

log = logging.getLogger(__name__)

#: Formats Pillow names by extension that it still cannot draw here: MPEG's plugin reads a
#: video's frame size and no pixels (each would be indexed as a black picture).
_NO_PIXELS = frozenset({"MPEG"})
#: Formats Pillow opens through another format's plugin (an MPO is a JPEG with more frames).
_OPENED_AS = {"MPO": "JPEG"}


def image_extensions() -> frozenset[str]:
    """The extensions (lower case, with the dot) of every format Pillow can decode here.

    Asked of Pillow each time, not kept in a list: a plugin registered later (pillow-heif, say)
    counts at once. Formats Pillow only writes (PDF, Palm) are left out, and so are its stubs
    with no decoder installed (BUFR, GRIB, HDF5, WMF off Windows) and PostScript without Ghostscript.
    """
    Image.init()
    out = set()
    for ext, fmt in Image.registered_extensions().items():
        factory = Image.OPEN.get(_OPENED_AS.get(fmt, fmt), (None,))[0]
        if factory is None or fmt in _NO_PIXELS:
            continue
        if fmt == "EPS" and not EpsImagePlugin.has_ghostscript():  # Pillow draws PostScript through Ghostscript
            continue
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile) and factory._handler is None:
            continue
        out.add(ext.lower())
    return frozenset(out)


_FRAME_HINT = "index and search take still images; a frame works (ffmpeg -i FILE -frames:v 1 frame.jpg)"

#: HEIF-family photos (phones' HEIC, AVIF), decoded through pillow-heif (retrieval.media.heif).
HEIF_SUFFIXES = frozenset({".heic", ".heif", ".hif", ".avif", ".avifs"})
#: Camera RAW files LibRaw reads, decoded through rawpy (retrieval.media.raw). Ambiguous
#: extensions other programs use for other things (.data, .bay, .cap) are left out.
RAW_SUFFIXES = frozenset({
    ".3fr", ".ari", ".arw", ".cr2", ".cr3", ".crw", ".dcr", ".dng", ".erf", ".fff", ".gpr", ".iiq", ".k25",
    ".kdc", ".mef", ".mos", ".mrw", ".nef", ".nrw", ".orf", ".pef", ".raf", ".raw", ".rw2", ".rwl", ".sr2",
    ".srf", ".srw", ".x3f",
})
#: Videos the walk yields; retrieval.media.video (PyAV) samples them into timed frames.
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi"})
#: What a RAW file pairs with (the camera's own rendering of the same shot), and what a
#: Live Photo's still is (its motion file is a .mov of the same stem).
_JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
_LIVE_STILLS = frozenset({".heic", ".heif", ".hif", ".jpg", ".jpeg"})

_VIDEO = f"videos of this kind are not indexed: {_FRAME_HINT}"
IGNORED_HINTS = {
    **dict.fromkeys((".qt", ".3gp", ".3g2", ".mts", ".m2ts", ".wmv", ".mpg", ".mpeg", ".flv", ".ogv"), _VIDEO),
    ".pdf": "PDF documents are not images; export the pages to PNG to index them",
    ".svg": "SVG drawings: this version reads pixel images only; export them to PNG",
    **dict.fromkeys((".eps", ".ps"), "PostScript: read once Ghostscript is installed (gs on the PATH)"),
}


def is_video(path: str) -> bool:
    """Whether the walk yields `path` as a video (by its extension)."""
    return os.path.splitext(path)[1].lower() in VIDEO_SUFFIXES


def is_raw(path: str) -> bool:
    """Whether `path` is decoded as a camera RAW file (by its extension)."""
    return os.path.splitext(path)[1].lower() in RAW_SUFFIXES


def walk_extensions() -> frozenset[str]:
    """Every extension the walk yields: what Pillow decodes here, HEIF, RAW and videos."""
    return image_extensions() | HEIF_SUFFIXES | RAW_SUFFIXES | VIDEO_SUFFIXES


def ignored_hint(extension: str) -> str | None:
    """What would read files with `extension` (as the walk counts it), or None when nothing here knows."""
    return IGNORED_HINTS.get(extension)


#: ISO base media brands (the ftyp box that opens the file), by what the file holds.
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_VIDEO_BRANDS = {b"qt  ", b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"M4V ", b"M4VP", b"dash",
                 b"3gp4", b"3gp5", b"3gp6", b"3g2a", b"f4v "}


def unreadable_kind(data: bytes) -> str | None:
    """What a file Pillow cannot identify holds, and what would read it, in words; None when not known.

    Only the first bytes are looked at: enough to tell a phone's HEIC photos and videos, and
    documents, from damaged images, so a skip reason or a query error says which it is.
    """
    head = data[:64]
    if head[4:8] == b"ftyp":
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(len(head), 32) - 3, 4)}
        if head[8:12] in _HEIF_BRANDS or (brands & _HEIF_BRANDS and not brands & _VIDEO_BRANDS):
            return "a HEIC photo that libheif could not decode (damaged or truncated?)"
        if head[8:12] == b"crx ":
            return "a Canon CR3 raw photo under another name: name it .cr3 to have it read as RAW"
        if head[8:12] == b"qt  ":
            return f"a QuickTime video: {_FRAME_HINT}"
        return f"an MP4 video: {_FRAME_HINT}"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return f"an AVI video: {_FRAME_HINT}"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return f"a Matroska/WebM video: {_FRAME_HINT}"
    if head[:5] == b"%PDF-":
        return "a PDF document, not an image"
    if b"<svg" in data[:1024]:
        return "an SVG drawing: this version reads pixel images only; export it to PNG first"
    return None


@dataclass(frozen=True)
class FileStat:
    path: str
    size: int
    mtime: float
    #: The other files of the same photo, shown with it but not indexed: the RAW of a
    #: RAW+JPEG pair, whose JPEG (the camera's own rendering) is the one decoded.
    companions: tuple[str, ...] = ()
    #: A Live Photo's motion file (a .mov of the same stem), linked to the still, not a video.
    motion: str | None = None
    #: Not a file: a folder the walk could not list (no permission, an I/O error). What is
    #: indexed under it is kept, not taken for deleted (retrieval/storage/staging.py).
    unlisted: bool = False


class SkipFile(Exception):
    """A file that is not read: its message is the reason recorded for it."""


#: How a file that is not a regular file is named in its skip reason.
SPECIAL_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
                 stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory"}


@dataclass(frozen=True)
class WalkSettings:
    """How the walk groups a folder's files into photos."""

    #: True: a RAW and a JPEG of one stem in one folder are one photo (the JPEG indexed, the
    #: RAW listed with it); False: each is indexed on its own (``retrieval index --raw-pairs both``).
    pair_raw: bool = True


def walk(
    roots: Iterable[str | Path], ignored: Counter[str] | None = None, settings: WalkSettings = WalkSettings(),
) -> Iterator[FileStat]:
    """Yield every image and video file under `roots` (recursively), in a stable order.

    A file nothing here decodes is counted in `ignored` (when given) by its lower-case
    extension ("" for none), so a run can say what it left out; hidden files (a leading dot:
    .DS_Store, macOS's ._ copies) are passed over without a count. A root that is a file is
    yielded whatever its name: naming it asks for it, and its skip reason says what it is.

    Files of one stem in one folder that belong to one shot are one item (see :func:`group`):
    a RAW beside its JPEG is listed as the JPEG's companion, and a Live Photo's .mov as its
    still's motion file, never as a video of its own.
    """
    readable = walk_extensions()
    for root in roots:
        root = Path(root).expanduser().resolve()
        if root.is_file():
            info = root.stat()
            yield FileStat(str(root), info.st_size, info.st_mtime)
            continue
        unlisted: list[OSError] = []
        for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted.append, followlinks=False):
            yield from _unlisted(unlisted)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            names = []
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                suffix = Path(name).suffix.lower()
                if suffix not in readable:
                    if ignored is not None:
                        ignored[suffix] += 1
                    continue
                names.append(name)
            for name, companions, motion in group(names, settings):
                path = os.path.join(dirpath, name)
                extra = tuple(os.path.join(dirpath, c) for c in companions)
                linked = os.path.join(dirpath, motion) if motion else None
                try:
                    info = os.stat(path)
                except OSError:
                    # A dangling link or a file we may not stat: let load() report it as unreadable.
                    yield FileStat(path, -1, 0.0, extra, linked)
                    continue
                yield FileStat(path, info.st_size, info.st_mtime, extra, linked)
        yield from _unlisted(unlisted)


def _unlisted(errors: list[OSError]) -> Iterator[FileStat]:
    """The folders os.walk could not list since last asked, as markers, each with one warning."""
    while errors:
        exc = errors.pop(0)
        folder = str(exc.filename)
        log.warning("folder %s could not be read (%s): the photos indexed under it are kept as they are",
                    folder, exc.strerror or exc)
        yield FileStat(folder, -1, 0.0, unlisted=True)


def group(names: Iterable[str], settings: WalkSettings = WalkSettings()) -> Iterator[tuple[str, tuple[str, ...], str | None]]:
    """One folder's file names (sorted) as (name, companion names, motion name), in name order.

    Same stem (the name before its last dot, as cameras and phones write it) marks one shot:
    a RAW with a JPEG is the JPEG with the RAW as companion (the JPEG is the camera's own
    rendering, and decodes in a fraction of the RAW's time); a .mov beside a HEIC or JPEG
    still is that Live Photo's motion file. Anything else stays a file of its own.
    """
    by_stem: dict[str, list[str]] = {}
    for name in names:
        by_stem.setdefault(os.path.splitext(name)[0], []).append(name)
    out: list[tuple[str, tuple[str, ...], str | None]] = []
    for members in by_stem.values():
        suffix = {name: os.path.splitext(name)[1].lower() for name in members}
        jpegs = [n for n in members if suffix[n] in _JPEG_SUFFIXES]
        raws = [n for n in members if suffix[n] in RAW_SUFFIXES]
        stills = [n for n in members if suffix[n] in _LIVE_STILLS]
        movs = [n for n in members if suffix[n] == ".mov"]
        taken: set[str] = set()
        companions: dict[str, tuple[str, ...]] = {}
        motion: dict[str, str] = {}
        if settings.pair_raw and len(jpegs) == 1 and raws:
            companions[jpegs[0]] = tuple(raws)
            taken.update(raws)
        if len(movs) == 1 and stills:
            # The still the phone wrote with it: HEIC before an exported JPEG.
            still = min(stills, key=lambda n: (suffix[n] not in HEIF_SUFFIXES, n))
            motion[still] = movs[0]
            taken.add(movs[0])
        out.extend((n, companions.get(n, ()), motion.get(n)) for n in members if n not in taken)
    out.sort(key=lambda item: item[0])
    return iter(out)


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _not_regular(mode: int) -> SkipFile:
    return SkipFile(f"not a regular file ({SPECIAL_KINDS.get(stat.S_IFMT(mode), 'special file')})")


def read_regular(path: str) -> bytes:
    """The bytes of a regular file, read so that nothing can block and nothing changes unseen.

    Special files (a FIFO named photo.jpg would block ``open`` forever) are refused after a
    ``stat``, without being opened; O_NONBLOCK covers one swapped in between. A file whose
    size or mtime moves while it is read is refused too: the next run reads it again, so no
    content is ever stored that the file did not hold at one moment.
    """
    try:
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise _not_regular(before.st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SkipFile(f"unreadable: {exc.strerror or exc}") from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise _not_regular(opened.st_mode)
        with open(fd, "rb", closefd=False) as fh:
            data = fh.read()
        after = os.fstat(fd)
    except OSError as exc:
        raise SkipFile(f"unreadable: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if (opened.st_ino, opened.st_size, opened.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns) \
            or (after.st_size, after.st_mtime_ns) != (len(data), opened.st_mtime_ns):
        raise SkipFile("changed while being read (it is read again on the next run)")
    return data
