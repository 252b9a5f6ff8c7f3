"""HTTP Range requests (RFC 9110 section 14) for originals: what lets a browser seek in a video.

A ``<video>`` element asks for ``Range: bytes=0-`` first and, when the answer is a 206 with
``Accept-Ranges: bytes``, jumps to any moment by asking for the bytes there; without ranges
Chromium cannot seek at all (``#t=`` and ``currentTime`` stay at 0 until the whole file is in).

One range is answered, the form every browser sends: ``bytes=FIRST-LAST``, ``bytes=FIRST-`` or
``bytes=-SUFFIX``. A list of ranges (``0-1,5-9``) gets the whole file with 200, as a server may
(RFC 9110 section 14.2): a multipart answer buys a client nothing a second request would not.
A range that is not of these forms is refused with 400 and one line saying the forms; one that
starts past the end of the file is refused with 416 and ``Content-Range: bytes */SIZE``. A
Range in another unit than bytes is ignored, as the RFC asks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import RetrievalError

#: Bytes read and sent at a time: a video's range can be the whole file.
CHUNK = 256 * 1024
#: A byte position has at most this many digits (a 1 EB file has 19): longer is not a position.
MAX_DIGITS = 19
_SPEC = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*")


class BadRange(RetrievalError):
    """A Range header that is not ``bytes=FIRST-LAST`` (HTTP 400)."""


class RangeNotSatisfiable(RetrievalError):
    """A byte range that starts past the end of the file (HTTP 416)."""

    def __init__(self, message: str, size: int):
        super().__init__(message)
        self.size = size


@dataclass(frozen=True)
class ByteRange:
    """Bytes first..last of a file of `size` bytes, both ends included, as Content-Range counts them."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.size}"


def requested(header: str | None, size: int) -> ByteRange | None:
    """The range a Range header asks for in a file of `size` bytes; None: send the whole file.

    Raises BadRange (400) for a header of the bytes unit that is not a range, and
    RangeNotSatisfiable (416) for one that starts at or past the end of the file.
    """
    if header is None:
        return None
    unit, sep, specs = header.partition("=")
    if not sep:
        raise BadRange(f"Range must be bytes=FIRST-LAST, bytes=FIRST- or bytes=-COUNT, not {_shown(header)}")
    if unit.strip().lower() != "bytes":
        return None  # another unit: ignored (RFC 9110 section 14.2)
    if "," in specs:
        return None  # several ranges: the whole file, see the module's docstring
    match = _SPEC.fullmatch(specs)
    first_text, last_text = (match.group(1), match.group(2)) if match else ("", "")
    if match is None or not (first_text or last_text) or max(len(first_text), len(last_text)) > MAX_DIGITS:
        raise BadRange(f"Range must be bytes=FIRST-LAST, bytes=FIRST- or bytes=-COUNT, not {_shown(header)}")
    if not first_text:  # bytes=-COUNT: the last COUNT bytes
        count = int(last_text)
        if count == 0 or size == 0:
            raise RangeNotSatisfiable(f"the range {_shown(header)} asks for no bytes of a {size}-byte file", size)
        return ByteRange(max(0, size - count), size - 1, size)
    first = int(first_text)
    last = int(last_text) if last_text else max(first, size - 1)
    if last < first:
        raise BadRange(f"the range {_shown(header)} ends before it starts")
    if first >= size:
        raise RangeNotSatisfiable(f"the range {_shown(header)} starts past the end of the {size}-byte file", size)
    return ByteRange(first, min(last, size - 1), size)


def read_range(path: Path, byte_range: ByteRange, chunk: int = CHUNK) -> Iterator[bytes]:
    """The range's bytes, a chunk at a time (a file that shrank meanwhile just ends early)."""
    left = byte_range.length
    with open(path, "rb") as file:
        file.seek(byte_range.first)
        while left > 0:
            data = file.read(min(chunk, left))
            if not data:
                return
            left -= len(data)
            yield data


def _shown(header: str) -> str:
    """The header as an error quotes it: printable and short."""
    text = "".join(c if c.isprintable() else "?" for c in header.strip())
    return repr(text if len(text) <= 60 else text[:57] + "...")
