"""EXIF metadata: generated files with known tags, every orientation, real camera files, and the catalog."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import skimage_photo
from PIL import ExifTags, Image

from retrieval.media.decode import decode, load
from retrieval.media.exif import EMPTY, gps_position, parse_exif_date, read_meta


def tagged(pixels: Image.Image, *, make=None, model=None, taken=None, offset=None, lat=None, lon=None,
           orientation=None, fmt="JPEG") -> bytes:
    """Bytes of `pixels` saved with the given EXIF tags (written by Pillow, read back by our code)."""
    exif = Image.Exif()
    if make:
        exif[ExifTags.Base.Make] = make
    if model:
        exif[ExifTags.Base.Model] = model
    if orientation:
        exif[ExifTags.Base.Orientation] = orientation
    details = exif.get_ifd(ExifTags.IFD.Exif)
    if taken:
        details[ExifTags.Base.DateTimeOriginal] = taken
    if offset:
        details[ExifTags.Base.OffsetTimeOriginal] = offset
    if lat is not None:
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        gps[ExifTags.GPS.GPSLatitudeRef] = "N" if lat >= 0 else "S"
        gps[ExifTags.GPS.GPSLatitude] = _dms(abs(lat))
        gps[ExifTags.GPS.GPSLongitudeRef] = "E" if lon >= 0 else "W"
        gps[ExifTags.GPS.GPSLongitude] = _dms(abs(lon))
    out = io.BytesIO()
    pixels.save(out, format=fmt, exif=exif)
    return out.getvalue()


def _dms(value: float) -> tuple[float, float, float]:
    d = int(value)
    m = int((value - d) * 60)
    return (float(d), float(m), round((value - d - m / 60) * 3600, 4))


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(skimage_photo("chelsea.png")) as im:
        return im.convert("RGB")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_known_tags_read_back(photo, fmt):
    data = tagged(photo, make="Canon", model="Canon EOS R5", taken="2023:07:14 18:02:11", offset="+02:00",
                  lat=-33.8568, lon=151.2153, orientation=1, fmt=fmt)
    meta = read_meta(data)
    assert meta.taken == "2023-07-14T18:02:11"
    assert meta.taken_offset == "+02:00"
    assert (meta.camera_make, meta.camera_model) == ("Canon", "Canon EOS R5")
    assert meta.lat == pytest.approx(-33.8568, abs=1e-4) and meta.lon == pytest.approx(151.2153, abs=1e-4)
    assert meta.orientation == 1


def test_west_and_north_signs(photo):
    meta = read_meta(tagged(photo, lat=40.6892, lon=-74.0445))
    assert meta.lat == pytest.approx(40.6892, abs=1e-4) and meta.lon == pytest.approx(-74.0445, abs=1e-4)


def test_missing_and_bad_tags_are_dropped_not_raised(photo):
    assert read_meta(tagged(photo)) == EMPTY
    assert read_meta(tagged(photo, taken="0000:00:00 00:00:00", make="    ")).taken is None
    assert read_meta(tagged(photo, taken="2023:07:14 18:02:11", offset="garbage")).taken_offset is None
    # A phone without a fix writes 0,0.
    assert read_meta(tagged(photo, lat=0.0, lon=0.0)).lat is None
    assert read_meta(b"not an image at all") == EMPTY
    assert parse_exif_date("2023:02:30 10:00:00") is None
    assert gps_position({}) == (None, None)


# Each EXIF orientation, as the transform a camera's stored pixels need to be shown upright.
_TO_STORED = {
    1: lambda im: im,
    2: lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    3: lambda im: im.transpose(Image.Transpose.ROTATE_180),
    4: lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    5: lambda im: im.transpose(Image.Transpose.TRANSPOSE),
    6: lambda im: im.transpose(Image.Transpose.ROTATE_90),
    7: lambda im: im.transpose(Image.Transpose.TRANSVERSE),
    8: lambda im: im.transpose(Image.Transpose.ROTATE_270),
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_orientation_is_read_and_decoded_upright(photo, orientation):
    upright = photo.resize((96, 64))
    stored = _TO_STORED[orientation](upright)
    data = tagged(stored, orientation=orientation, fmt="PNG")  # lossless: pixels compare exactly
    assert read_meta(data).orientation == orientation
    shown, size = decode(data)
    assert size == stored.size
    assert shown.size == (96, 64)
    assert np.array_equal(np.asarray(shown), np.asarray(upright))


LXQT = Path("/usr/share/lxqt/wallpapers")


@pytest.mark.skipif(not (LXQT / "fog.jpg").exists(), reason="needs Debian's lxqt-themes (scripts/setup.sh installs it)")
def test_real_camera_files():
    # Photos as cameras wrote them (lxqt-themes' wallpapers keep their EXIF).
    fog = read_meta((LXQT / "fog.jpg").read_bytes())
    assert (fog.camera_make, fog.camera_model, fog.taken) == ("Hewlett-Packard", "hp photosmart 735", "2004-09-15T08:10:55")
    rain = read_meta((LXQT / "after-the-rain.jpg").read_bytes())
    assert (rain.camera_make, rain.camera_model, rain.taken) == ("PENTAX", "PENTAX K-7", "2014-11-18T17:43:55")


def test_real_photos_without_exif_fall_back_to_mtime(tmp_path, color_aligner):
    """End to end through an index run: EXIF where present, the file time otherwise, and the source recorded."""
    from retrieval.ingest import pipeline as indexer
    from retrieval.storage.store import IndexStore

    folder = tmp_path / "photos"
    folder.mkdir()
    with Image.open(skimage_photo("coffee.png")) as im:
        (folder / "tagged.jpg").write_bytes(tagged(im.convert("RGB"), make="FUJIFILM", model="X100V",
                                                   taken="2022:12:24 19:30:00", offset="-05:00", lat=45.5, lon=-73.56))
        im.convert("RGB").save(folder / "plain.jpg")
    os.utime(folder / "plain.jpg", (1_600_000_000, 1_600_000_000))
    store = IndexStore.open(tmp_path / "idx", create=True)
    indexer.run(store, color_aligner, [folder])
    rows = {Path(r["path"]).name: r for r in store.catalog.db.query("SELECT * FROM images")}
    assert rows["tagged.jpg"]["taken"] == "2022-12-24T19:30:00"
    assert rows["tagged.jpg"]["taken_source"] == "exif"
    assert rows["tagged.jpg"]["taken_offset"] == "-05:00"
    assert rows["tagged.jpg"]["camera_model"] == "X100V"
    assert rows["tagged.jpg"]["lat"] == pytest.approx(45.5, abs=1e-4)
    from datetime import datetime

    assert rows["plain.jpg"]["taken"] == datetime.fromtimestamp(1_600_000_000).strftime("%Y-%m-%dT%H:%M:%S")
    assert rows["plain.jpg"]["taken_source"] == "mtime"
    assert rows["plain.jpg"]["camera_make"] is None
    assert load(str(folder / "tagged.jpg"), None).meta.camera_make == "FUJIFILM"
    store.close()
