"""Photo metadata from EXIF: when, where and with what a picture was taken.

Pure functions over bytes or an opened Pillow image, so the decoding workers take the
metadata from the bytes they have already read (no second read of the file). Opening an
image parses only its header, so this costs a fraction of a millisecond beside decoding.

Dates stay in the camera's wall-clock time (``YYYY-MM-DDTHH:MM:SS``), the time a person
means by "photos from last summer"; the offset from UTC is kept beside it where the file
records one (``OffsetTimeOriginal``). A file without an EXIF date gets its modification
time in the catalog instead, with the source recorded (see ``staging.py``).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, fields
from datetime import datetime

from PIL import ExifTags, Image

from retrieval.media import heif

_EXIF_DATE = "%Y:%m:%d %H:%M:%S"
_OFFSET = re.compile(r"^[+-](0\d|1[0-4]):[0-5]\d$")


@dataclass(frozen=True)
class PhotoMeta:
    """What EXIF says about one file; every field may be missing."""

    taken: str | None = None
    taken_offset: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    lat: float | None = None
    lon: float | None = None
    orientation: int | None = None

    def row(self) -> tuple:
        # Not dataclasses.astuple: it deep-copies every field, and this runs for every file a
        # run records, where it was the Ray driver's largest cost per commit
        # (docs/scaling.md#b-driver-ingest-how-fast-the-single-writer-commits).
        return tuple(getattr(self, name) for name in COLUMNS)


#: Column names, in the order of :meth:`PhotoMeta.row`.
COLUMNS = tuple(f.name for f in fields(PhotoMeta))
EMPTY = PhotoMeta()


def read_meta(data: bytes, *, raw: bool = False) -> PhotoMeta:
    """The metadata in an image file's bytes; EMPTY when there is none or it cannot be read.

    HEIC/HEIF is read through pillow-heif's opener (registered first) and AVIF through
    Pillow's, both of which hand out the file's EXIF block. `raw` (a camera RAW file, by its
    name) is read by :func:`raw_meta`.
    """
    if raw:
        return raw_meta(data)
    heif.register()
    try:
        with Image.open(io.BytesIO(data)) as image:
            return meta_of(image)
    except Exception:  # noqa: BLE001 - metadata is optional: a file Pillow cannot open is reported by decoding
        return EMPTY


#: RAW files laid out as TIFF under a magic number of their own (Olympus ORF, Panasonic RW2).
_TIFF_LIKE = {b"IIRO": b"II*\x00", b"IIRS": b"II*\x00", b"MMOR": b"MM\x00*", b"IIU\x00": b"II*\x00"}


def raw_meta(data: bytes) -> PhotoMeta:
    """A camera RAW file's metadata.

    Most RAW formats (DNG, CR2, NEF, ARW, PEF, SRW, and ORF and RW2 under their own magic
    numbers) are TIFF files: Pillow's EXIF reader parses their IFD0 (camera, orientation) and
    its EXIF and GPS directories from the bytes without decoding any pixels. The others (CR3,
    RAF) keep an EXIF block in their embedded JPEG preview, which LibRaw hands out.
    """
    head = data[:4]
    if head in _TIFF_LIKE:
        data = _TIFF_LIKE[head] + data[4:]
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        exif = Image.Exif()
        try:
            exif.load(data)
        except Exception:  # noqa: BLE001 - a damaged header loses the metadata only; decoding reports the file
            exif = Image.Exif()
        meta = meta_from(exif)
        if meta != EMPTY:
            return meta
    from retrieval.media.raw import preview_exif

    preview = preview_exif(data)
    return read_meta(preview) if preview else EMPTY


def meta_of(image: Image.Image) -> PhotoMeta:
    """The metadata of an opened image. Corrupt or odd tags are dropped one by one, never raised:
    an image must not be lost because its camera wrote a bad tag."""
    try:
        exif = image.getexif()
    except Exception:  # noqa: BLE001 - Pillow raises many kinds of errors on corrupt EXIF blocks
        return EMPTY
    return meta_from(exif)


def meta_from(exif: Image.Exif) -> PhotoMeta:
    """:func:`meta_of` for an EXIF block already parsed."""
    if not exif:
        return EMPTY
    details = _ifd(exif, ExifTags.IFD.Exif)
    gps = _ifd(exif, ExifTags.IFD.GPSInfo)
    taken, offset = None, None
    # TIFF/EP (the standard DNG and several RAW formats build on) puts DateTimeOriginal in IFD0
    # itself; EXIF puts it in the EXIF directory. Looked up there first, then in IFD0.
    for where in (details, exif):
        for date_tag, offset_tag in (
            (ExifTags.Base.DateTimeOriginal, ExifTags.Base.OffsetTimeOriginal),
            (ExifTags.Base.DateTimeDigitized, ExifTags.Base.OffsetTimeDigitized),
        ):
            taken = parse_exif_date(where.get(date_tag))
            if taken:
                offset = parse_offset(where.get(offset_tag))
                break
        if taken:
            break
    lat, lon = gps_position(gps)
    return PhotoMeta(
        taken=taken,
        taken_offset=offset,
        camera_make=_text(exif.get(ExifTags.Base.Make)),
        camera_model=_text(exif.get(ExifTags.Base.Model)),
        lat=lat,
        lon=lon,
        orientation=_orientation(exif.get(ExifTags.Base.Orientation)),
    )


def _ifd(exif: Image.Exif, tag: int) -> dict:
    try:
        return dict(exif.get_ifd(tag))
    except Exception:  # noqa: BLE001 - a broken sub-directory loses only its own tags
        return {}


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = " ".join(value.replace("\x00", " ").split())
    # Some cameras and editors fill unknown fields with placeholders.
    return value if value and value.strip("-?. ") else None


def parse_exif_date(value) -> str | None:
    """``2023:07:14 18:02:11`` -> ``2023-07-14T18:02:11``; None for blank or impossible dates."""
    text = _text(value)
    if not text:
        return None
    try:
        when = datetime.strptime(text[:19], _EXIF_DATE)
    except ValueError:
        return None
    # Year 0 or far-future stamps come from unset camera clocks, not from real photos.
    if not 1826 <= when.year <= 2200:
        return None
    return when.strftime("%Y-%m-%dT%H:%M:%S")


def parse_offset(value) -> str | None:
    text = _text(value)
    return text if text and _OFFSET.match(text) else None


def gps_position(gps: dict) -> tuple[float | None, float | None]:
    """Signed decimal degrees from GPSLatitude/Longitude and their N/S, E/W references."""
    lat = _degrees(gps.get(ExifTags.GPS.GPSLatitude), gps.get(ExifTags.GPS.GPSLatitudeRef), "S", 90)
    lon = _degrees(gps.get(ExifTags.GPS.GPSLongitude), gps.get(ExifTags.GPS.GPSLongitudeRef), "W", 180)
    if lat is None or lon is None:
        return None, None
    # 0,0 is what phones write when they had no fix; nobody photographs that spot of ocean.
    if lat == 0 and lon == 0:
        return None, None
    return lat, lon


def _degrees(parts, ref, negative: str, limit: float) -> float | None:
    try:
        d, m, s = (float(p) for p in parts)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    value = d + m / 60 + s / 3600
    if value != value or value > limit:  # NaN (0/0 rationals) or out of range
        return None
    direction = _text(ref)
    if direction and direction.upper().startswith(negative):
        value = -value
    return round(value, 7)


def _orientation(value) -> int | None:
    try:
        value = int(value)
    except (TypeError, ValueError):
        return None
    return value if 1 <= value <= 8 else None
