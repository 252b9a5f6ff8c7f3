"""Which files are images, and reading them safely: walking folders, hashing, refusing special files.

Plain functions over paths, so that worker processes (and a distributed engine) can run
them. A file that cannot be read never raises out of here except as :class:`SkipFile`,
whose message is the reason the indexer records.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import EpsImagePlugin, Image, ImageFile

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

#: What would read files the walk leaves out, by extension: said beside their count.
_HEIF = "HEIC/HEIF/AVIF photos: this version does not read them (pillow-heif would); convert them to JPEG meanwhile"
_RAW = "RAW photos: not read yet (a later version may); export them to JPEG meanwhile"
_VIDEO = f"videos are not indexed yet: {_FRAME_HINT}"
IGNORED_HINTS = {
    **dict.fromkeys((".heic", ".heif", ".hif", ".avif", ".avifs"), _HEIF),
    **dict.fromkeys((".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".raf", ".orf",
                     ".rw2", ".pef", ".srw", ".x3f", ".3fr", ".erf", ".kdc", ".mrw", ".raw", ".rwl", ".iiq"), _RAW),
    **dict.fromkeys((".mp4", ".m4v", ".mov", ".qt", ".avi", ".mkv", ".webm", ".3gp", ".3g2", ".mts", ".m2ts",
                     ".wmv", ".mpg", ".mpeg", ".flv", ".ogv"), _VIDEO),
    ".pdf": "PDF documents are not images; export the pages to PNG to index them",
    ".svg": "SVG drawings: this version reads pixel images only; export them to PNG",
    **dict.fromkeys((".eps", ".ps"), "PostScript: read once Ghostscript is installed (gs on the PATH)"),
}


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
            return "a HEIC photo: this version does not read HEIC yet; convert it to JPEG first (e.g. heif-convert)"
        if head[8:12] == b"crx ":
            return "a Canon CR3 raw photo: this version does not read raw files; export it to JPEG first"
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


class SkipFile(Exception):
    """A file that is not read: its message is the reason recorded for it."""


#: How a file that is not a regular file is named in its skip reason.
SPECIAL_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
                 stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory"}


def walk(roots: Iterable[str | Path], ignored: Counter[str] | None = None) -> Iterator[FileStat]:
    """Yield every image file under `roots` (recursively), in a stable order.

    A file Pillow cannot decode is counted in `ignored` (when given) by its lower-case
    extension ("" for none), so a run can say what it left out; hidden files (a leading dot:
    .DS_Store, macOS's ._ copies) are passed over without a count. A root that is a file is
    yielded whatever its name: naming it asks for it, and its skip reason says what it is.
    """
    readable = image_extensions()
    for root in roots:
        root = Path(root).expanduser().resolve()
        if root.is_file():
            info = root.stat()
            yield FileStat(str(root), info.st_size, info.st_mtime)
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                suffix = Path(name).suffix.lower()
                if suffix not in readable:
                    if ignored is not None:
                        ignored[suffix] += 1
                    continue
                path = os.path.join(dirpath, name)
                try:
                    info = os.stat(path)
                except OSError:
                    # A dangling link or a file we may not stat: let load() report it as unreadable.
                    yield FileStat(path, -1, 0.0)
                    continue
                yield FileStat(path, info.st_size, info.st_mtime)


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
