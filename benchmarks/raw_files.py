"""Real camera RAW files made from real photos, for the tests and benchmarks that need them.

No package here ships a RAW sample (rawpy's source archive carries none), so a DNG is written
with pidng from a Bayer mosaic of a photo: what a sensor behind an RGGB colour filter records.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def save_dng(picture: Image.Image, path: str | Path, date: str | None = None, make: str = "TestCam", model: str = "DNG 1",
             bits: int = 12, preview: Image.Image | None = None, orientation: int = 1) -> Path:
    """A real DNG: `picture` linearised and sampled through an RGGB Bayer mosaic, `bits` deep;
    with `preview`, that picture embedded as the camera's JPEG preview (see :func:`add_preview`).
    `orientation` is the EXIF/TIFF orientation of the sensor's picture."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, PhotometricInterpretation

    rgb = np.asarray(picture, dtype=np.float32) / 255.0
    h, w = (rgb.shape[0] // 2) * 2, (rgb.shape[1] // 2) * 2
    linear = rgb[:h, :w] ** 2.2
    mosaic = np.empty((h, w), np.float32)
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = linear[0::2, 0::2, 0], linear[0::2, 1::2, 1]
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = linear[1::2, 0::2, 1], linear[1::2, 1::2, 2]
    white = (1 << bits) - 1
    tags = DNGTags()
    for tag, value in [
        (Tag.ImageWidth, w), (Tag.ImageLength, h), (Tag.TileWidth, w), (Tag.TileLength, h), (Tag.Orientation, orientation),
        (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array), (Tag.SamplesPerPixel, 1),
        (Tag.BitsPerSample, bits), (Tag.CFARepeatPatternDim, [2, 2]), (Tag.CFAPattern, CFAPattern.RGGB),
        (Tag.BlackLevel, 0), (Tag.WhiteLevel, white),
        (Tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]]),
        (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65), (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]),
        (Tag.BaselineExposure, [[0, 1]]), (Tag.Make, make), (Tag.Model, model), (Tag.UniqueCameraModel, f"{make} {model}"),
        (Tag.DNGVersion, DNGVersion.V1_4), (Tag.DNGBackwardVersion, DNGVersion.V1_2),
    ]:
        tags.set(tag, value)
    if date:
        tags.set(Tag.DateTimeOriginal, date)  # in IFD0, where TIFF/EP (and so DNG) may keep it
    writer = RAW2DNG()
    writer.options(tags, path="", compress=False)
    stem = str(path)[: -len(".dng")]
    writer.convert(np.round(mosaic * white).astype(np.uint16), filename=stem)
    if preview is not None:
        add_preview(Path(path), preview)
    return Path(path)


def add_preview(path: Path, preview: Image.Image, quality: int = 90) -> None:
    """Chain a second image directory to a TIFF-based RAW file: `preview` as a baseline JPEG, 8-bit
    YCbCr, a reduced-resolution image (NewSubfileType 1), as cameras store theirs. pidng writes
    none, and LibRaw looks for previews in every directory of the chain."""
    jpeg = io.BytesIO()
    preview.convert("RGB").save(jpeg, format="JPEG", quality=quality)
    data = bytearray(path.read_bytes())
    if data[:4] != b"II*\x00":
        raise ValueError(f"{path}: not a little-endian TIFF")
    first = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, first)[0]
    next_at = first + 2 + 12 * count
    while struct.unpack_from("<I", data, next_at)[0]:  # to the last directory of the chain
        at = struct.unpack_from("<I", data, next_at)[0]
        next_at = at + 2 + 12 * struct.unpack_from("<H", data, at)[0]
    data += bytes(-len(data) % 4)
    bits_at = len(data)
    data += struct.pack("<HHHH", 8, 8, 8, 0)
    entries = [  # (tag, type, count, value): type 3 SHORT, 4 LONG; sorted by tag, as TIFF requires
        (254, 4, 1, 1), (256, 4, 1, preview.width), (257, 4, 1, preview.height), (258, 3, 3, bits_at),
        (259, 3, 1, 7), (262, 3, 1, 6), (273, 4, 1, 0), (277, 3, 1, 3), (278, 4, 1, preview.height),
        (279, 4, 1, len(jpeg.getvalue())),
    ]
    ifd_at = len(data)
    jpeg_at = ifd_at + 2 + 12 * len(entries) + 4
    data += struct.pack("<H", len(entries))
    for tag, kind, n, value in entries:
        value = jpeg_at if tag == 273 else value
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 and n == 1 else struct.pack("<I", value)
        data += struct.pack("<HHI", tag, kind, n) + packed
    data += struct.pack("<I", 0) + jpeg.getvalue()
    struct.pack_into("<I", data, next_at, ifd_at)
    path.write_bytes(bytes(data))
