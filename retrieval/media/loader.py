"""Files in, pixels out: walking folders, hashing, and decoding images safely.

Everything here is plain functions over paths so that worker processes (and later a
distributed engine) can run them. Bad files never raise: they come back with a
reason, and the indexer records them as skipped.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import multiprocessing
import os
import signal
import stat
import sys
import warnings
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from retrieval.media.deadline import DecodeTimeout, time_limit
from retrieval.media.exif import PhotoMeta, read_meta

#: prctl(2) option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)


@dataclass(frozen=True)
class FileStat:
    path: str
    size: int
    mtime: float


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


def walk(roots: Iterable[str | Path]) -> Iterator[FileStat]:
    """Yield every image file under `roots` (recursively), in a stable order."""
    for root in roots:
        root = Path(root).expanduser().resolve()
        if root.is_file():
            stat = root.stat()
            yield FileStat(str(root), stat.st_size, stat.st_mtime)
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                path = os.path.join(dirpath, name)
                try:
                    stat = os.stat(path)
                except OSError:
                    # A dangling link or a file we may not stat: let load() report it as unreadable.
                    yield FileStat(path, -1, 0.0)
                    continue
                yield FileStat(path, stat.st_size, stat.st_mtime)


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def load(
    path: str,
    transform: Callable[[Image.Image], np.ndarray] | None,
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


class SkipFile(Exception):
    """A file that is not read: its message is the reason recorded for it."""


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory"}


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
            raise SkipFile(f"not a regular file ({_KINDS.get(stat.S_IFMT(before.st_mode), 'special file')})")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SkipFile(f"unreadable: {exc.strerror or exc}") from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise SkipFile(f"not a regular file ({_KINDS.get(stat.S_IFMT(opened.st_mode), 'special file')})")
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


def load_bytes(
    path: str,
    data: bytes,
    transform: Callable[[Image.Image], np.ndarray] | None,
    *,
    skip_hashes: Container[str] = frozenset(),
    draft: bool = True,
    digest: str | None = None,
) -> Loaded:
    """:func:`load` for bytes already read (by a cluster worker, through fsspec); `digest` if already hashed."""
    if not data:
        return Loaded(path, error="empty file")
    digest = digest or content_hash(data)
    # Read for known content too: an index built before metadata existed gains it this way,
    # without decoding or encoding again.
    meta = read_meta(data)
    if digest in skip_hashes or transform is None:
        return Loaded(path, hash=digest, meta=meta)
    try:
        image, size = decode(data, draft_to=draft_size(transform) if draft else None)
        pixels = transform(image)
    except Image.DecompressionBombError:
        return Loaded(path, hash=digest, error="decompression bomb (too many pixels)")
    except UnidentifiedImageError:
        return Loaded(path, hash=digest, error="not an image")
    except (OSError, ValueError, SyntaxError) as exc:
        # Pillow reports truncated and corrupt data as OSError / SyntaxError.
        kind = "truncated image" if "truncated" in str(exc).lower() else "corrupt image"
        return Loaded(path, hash=digest, error=f"{kind}: {exc}")
    return Loaded(path, hash=digest, width=size[0], height=size[1], pixels=pixels, meta=meta)


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
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image, size


def draft_size(transform) -> int | None:
    """The short side a draft decode must keep: what the transform resizes to before cropping."""
    return getattr(transform, "resize_to", None) or getattr(transform, "size", None)


def _draft_box(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    # draft() keeps the result at least as large as the box; scale the box so the short side
    # stays >= short_side while the long side follows the aspect ratio.
    w, h = size
    scale = short_side / min(w, h)
    return max(1, int(w * scale)), max(1, int(h * scale))


def load_many(
    paths: list[str],
    transform,
    skip_hashes: Container[str] = frozenset(),
    draft: bool = True,
    time_limit_s: float | None = None,
) -> list[Loaded]:
    """Load a chunk of files; the unit of work sent to a worker process."""
    return [load(p, transform, skip_hashes=skip_hashes, draft=draft, time_limit_s=time_limit_s) for p in paths]


# -- worker processes -------------------------------------------------------------
# The functions a loader process runs live here, not in the indexer, so that a spawned
# worker imports only this module (numpy, Pillow) and starts in a fraction of a second.
_WORKER: dict = {}


def init_worker(transform, skip_hashes: Container[str], draft: bool, time_limit_s: float | None = None) -> None:
    """Process-pool initializer: the settings arrive once per worker, not with every chunk."""
    # Ctrl-C reaches the whole process group; the parent alone decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    _WORKER.update(transform=transform, skip_hashes=skip_hashes, draft=draft, time_limit_s=time_limit_s)


def _die_with_parent() -> None:
    """End this worker when its parent dies, even by SIGKILL (Linux).

    A spawned pool worker holds both ends of its task pipe, so it never sees end-of-file
    when the parent is killed: without this it would wait on the pipe forever.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(0)  # the parent died before the line above took effect


def load_chunk(paths: list[str]) -> list[Loaded]:
    """:func:`load_many` with the settings :func:`init_worker` stored."""
    return load_many(paths, _WORKER["transform"], _WORKER["skip_hashes"], _WORKER["draft"], _WORKER.get("time_limit_s"))
