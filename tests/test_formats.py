"""What the engine reads (issue 24, items 1-3): every format Pillow decodes is indexed and every
other file counted as ignored; high-bit greyscale keeps its picture in vectors, thumbnails and
sheets; an original browsers cannot draw is served as a JPEG, the file itself one download away."""

from __future__ import annotations

import io
import json
import os
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ColorAligner
from PIL import Image, ImageDraw, features

from retrieval.ingest import pipeline as indexer
from retrieval.ingest.pipeline import IndexSettings
from retrieval.media.decode import decode
from retrieval.storage.store import IndexStore

#: A phone's HEIC photo and MP4 video open with an ISO base media "ftyp" box.
HEIC_HEAD = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(64)


def _picture(seed: int, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 256, (2, 3)).astype(np.float32)
    xs = np.linspace(0, 1, size[0])[None, :, None]
    ys = np.linspace(0, 1, size[1])[:, None, None]
    pixels = corners[0] * (1 - xs) * (1 - ys) + corners[1] * xs * ys + 40 * ys
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _pillow_formats() -> dict[str, str]:
    """Extension -> Pillow format of formats Pillow writes and reads back here (PSD it only reads)."""
    out = {".tga": "TGA", ".pcx": "PCX", ".ppm": "PPM", ".ico": "ICO", ".sgi": "SGI", ".qoi": "QOI",
           ".dds": "DDS", ".mpo": "MPO", ".xbm": "XBM", ".msp": "MSP", ".dib": "DIB"}
    if features.check("jpg_2000"):
        out[".jp2"] = "JPEG2000"
    if features.check("avif"):
        out[".avif"] = "AVIF"
    return out


def _mixed_folder(folder):
    """One picture in each format Pillow writes, plus files no decoder here reads."""
    formats = _pillow_formats()
    for i, (ext, fmt) in enumerate(formats.items()):
        picture = _picture(i)
        (folder / "pics").mkdir(parents=True, exist_ok=True)
        picture.convert("1" if fmt in ("XBM", "MSP") else "RGB").save(folder / "pics" / f"p{i}{ext}", format=fmt)
    phone = folder / "phone"
    phone.mkdir()
    for i in range(3):
        (phone / f"IMG_{i}.HEIC").write_bytes(HEIC_HEAD + bytes([i]))
    for i in range(2):
        (phone / f"VID_{i}.mp4").write_bytes(MP4_HEAD + bytes([i]))
    (phone / "IMG_9.CR2").write_bytes(b"II*\x00" + bytes(32))
    (folder / "notes.txt").write_text("not a picture")
    (folder / "README").write_text("no extension")
    (folder / ".DS_Store").write_bytes(b"hidden: passed over without a count")
    return len(formats)


def test_every_format_pillow_decodes_is_indexed_and_the_rest_is_counted(tmp_path):
    images = _mixed_folder(tmp_path / "in")
    store = IndexStore.open(tmp_path / "idx", create=True)
    try:
        summary = indexer.run(store, ColorAligner(), [tmp_path / "in"], settings=IndexSettings(workers=0))
    finally:
        store.close()
    assert summary.added == images
    # Phones' formats are read now (tests/test_photo_formats.py): these stand-ins, a header and
    # no picture, are skipped with a reason each; the videos are tests/test_video*.py's.
    reasons = {os.path.basename(s["path"]): s["reason"] for s in summary.skipped}
    assert set(reasons) == {"IMG_0.HEIC", "IMG_1.HEIC", "IMG_2.HEIC", "IMG_9.CR2", "VID_0.mp4", "VID_1.mp4"}
    assert "libheif" in reasons["IMG_0.HEIC"] and "LibRaw" in reasons["IMG_9.CR2"]
    assert summary.ignored == {"": 1, ".txt": 1}
    assert summary.line().endswith("; ignored 2: (no extension) 1, .txt 1")
    data = json.loads(json.dumps(summary.as_dict()))
    assert data["ignored"] == {"": 1, ".txt": 1} and data["ignored_count"] == 2
    assert data["ignored_hints"] == {}


def test_the_extensions_come_from_pillow_less_what_it_only_writes():
    from retrieval.media.files import image_extensions

    readable = image_extensions()
    assert {".jpg", ".png", ".tif", ".tga", ".psd", ".dds", ".mpo", ".pcx", ".qoi"} <= readable
    # Pillow writes PDF and Palm but reads neither; its MPEG plugin reads no pixels; its stubs have no decoder.
    assert not {".pdf", ".palm", ".mpg", ".h5", ".grib", ".bufr", ".mp4", ".txt"} & readable


def test_a_folder_of_unread_videos_says_what_it_ignored_and_fake_heics_why_they_were_skipped(tmp_path, monkeypatch):
    import retrieval.aligners as aligners
    from retrieval.cli import main

    monkeypatch.setattr(aligners, "load_aligner", lambda *args, **kwargs: ColorAligner())
    phone = tmp_path / "phone"
    phone.mkdir()
    for i in range(7):
        (phone / f"IMG_{i}.heic").write_bytes(HEIC_HEAD + bytes([i]))
    for i in range(2):
        (phone / f"VID_{i}.WMV").write_bytes(MP4_HEAD + bytes([i]))
    runner = CliRunner()
    plain = runner.invoke(main, ["index", str(phone), "--index", str(tmp_path / "idx")])
    assert plain.exit_code == 0, plain.output
    assert "added 0" in plain.output and "skipped 7" in plain.output and "; ignored 2: .wmv 2" in plain.output
    assert "IMG_0.heic: a HEIC photo that libheif could not decode" in plain.output
    assert "ignored 2 .wmv files: videos of this kind are not indexed" in plain.output
    as_json = runner.invoke(main, ["index", str(phone), "--index", str(tmp_path / "idx"), "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["ignored"] == {".wmv": 2}


def test_the_ray_walk_counts_what_the_local_walk_counts(tmp_path):
    pytest.importorskip("ray")
    from collections import Counter

    from retrieval.cluster.ray_index import RaySource
    from retrieval.media.files import walk

    _mixed_folder(tmp_path / "in")
    local: Counter[str] = Counter()
    files = list(walk([tmp_path / "in"], local))
    on_ray: Counter[str] = Counter()
    # A local folder and the same folder as a URL (read through fsspec); no cluster is joined to walk.
    both = list(RaySource().walk([str(tmp_path / "in"), (tmp_path / "in").as_uri()], on_ray))
    assert [f.path for f in both] == [f.path for f in files] * 2
    assert on_ray == local + local and local[".txt"] == 1


# -- high-bit greyscale (item 2) -----------------------------------------------------------------
def _grey(path, mode: str = "I;16", flip: bool = False):
    """A 12-bit gradient (0..4095) saved as 16-bit grey (or 32-bit int / float TIFF)."""
    ramp = np.linspace(0, 4095, 64 * 48).reshape(48, 64)
    if flip:
        ramp = ramp.T.reshape(48, 64)[::-1]
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    image = Image.fromarray(ramp.astype(dtype))
    assert image.mode == mode
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.mark.parametrize("name, mode", [("a.png", "I;16"), ("a.tif", "I;16"), ("a.tif", "I"), ("a.tif", "F")])
def test_high_bit_grey_is_scaled_by_its_range(tmp_path, name, mode):
    path = _grey(tmp_path / name, mode)
    with Image.open(path) as opened:
        assert opened.mode.startswith("I") or opened.mode == "F"
    image, size = decode(path.read_bytes())
    pixels = np.asarray(image)
    assert image.mode == "RGB" and size == (64, 48)
    # Clipped at 255 (Pillow's own conversion) 15 of 16 pixels would be white.
    assert pixels.min() <= 2 and pixels.max() >= 253
    assert (pixels == 255).mean() < 0.05 and 100 < pixels.mean() < 155


def test_high_bit_grey_thumbnails_and_sheets_show_the_picture(tmp_path):
    from retrieval.search.sheet import _thumbnail
    from retrieval.server.files import make_thumbnail

    path = _grey(tmp_path / "a.tif")
    thumb = np.asarray(Image.open(io.BytesIO(make_thumbnail(path, 128))))
    assert thumb.shape[2] == 3 and thumb.std() > 40 and 90 < thumb.mean() < 165
    tile = np.asarray(_thumbnail(str(path)))
    assert 90 < tile.mean() < 200 and tile.std() > 40


def test_two_different_16_bit_pictures_get_different_vectors(tmp_path):
    _grey(tmp_path / "in" / "across.png")
    _grey(tmp_path / "in" / "down.tif", flip=True)
    store = IndexStore.open(tmp_path / "idx", create=True)
    try:
        summary = indexer.run(store, ColorAligner(), [tmp_path / "in"], settings=IndexSettings(workers=0))
        assert summary.added == 2 and not summary.skipped
        ids, vectors = (np.concatenate(x) for x in zip(*store.catalog.image_vectors()))
    finally:
        store.close()
    assert len(ids) == 2 and float(vectors[0] @ vectors[1]) < 0.99


# -- originals browsers cannot draw (item 3) -------------------------------------------------------
def test_a_tiff_original_is_shown_as_a_jpeg_and_downloads_as_itself(tmp_path):
    from server_kit import client

    from retrieval.server.app import ServerSettings

    folder = tmp_path / "pics"
    folder.mkdir()
    _picture(1, size=(80, 60)).save(folder / "scan.tif")
    _picture(2).save(folder / "photo.jpg")
    _grey(folder / "deep.tif")
    store = IndexStore.open(tmp_path / "idx", create=True)
    try:
        indexer.run(store, ColorAligner(), [folder], settings=IndexSettings(workers=0))
        ids = {row["path"].rsplit("/", 1)[-1]: row["id"] for row in store.catalog.db.query("SELECT id, path FROM images")}
    finally:
        store.close()
    with client(ServerSettings(indexes=[str(tmp_path / "idx")], batch_window_ms=0), aligner=ColorAligner()) as api:
        shown = api.get(f"/api/image/{ids['scan.tif']}")
        assert shown.status_code == 200 and shown.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(shown.content)) as preview:
            assert preview.format == "JPEG" and preview.size == (80, 60)
        raw = api.get(f"/api/image/{ids['scan.tif']}", params={"download": 1})
        assert raw.status_code == 200 and raw.headers["content-type"] == "image/tiff"
        assert raw.content == (folder / "scan.tif").read_bytes()
        assert raw.headers["content-disposition"].startswith("attachment") and "scan.tif" in raw.headers["content-disposition"]
        jpeg = api.get(f"/api/image/{ids['photo.jpg']}")  # a format browsers draw: the file as it is
        assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content == (folder / "photo.jpg").read_bytes()
        deep = api.get(f"/api/image/{ids['deep.tif']}")
        assert deep.status_code == 200 and np.asarray(Image.open(io.BytesIO(deep.content))).std() > 40
        thumb = api.get(f"/api/thumb/{ids['deep.tif']}", params={"size": 128})  # was 400 "image has wrong mode"
        assert thumb.status_code == 200, thumb.text


# -- what Pillow's test corpus found (benchmarks/pillow_corpus.py) -------------------------------
def _dds_dx10(dxgi_format: int, size: int = 4) -> bytes:
    """A DDS file with a DX10 header naming `dxgi_format` (28: RGBA8, which Pillow reads; 93: one it does not)."""
    pixel_format = struct.pack("<II4s5I", 32, 0x4, b"DX10", 0, 0, 0, 0, 0)
    header = struct.pack("<7I44s", 124, 0x1007, size, size, size * 4, 0, 1, bytes(44)) + pixel_format + bytes(20)
    return b"DDS " + header + struct.pack("<5I", dxgi_format, 3, 0, 1, 0) + bytes(size * size * 4)


def test_a_format_variant_pillow_does_not_implement_is_skipped_not_fatal(tmp_path, monkeypatch):
    """Pillow raises NotImplementedError for some DDS pixel formats: that ended a whole run with a traceback."""
    import retrieval.aligners as aligners
    from retrieval.cli import main
    from retrieval.errors import RetrievalError
    from retrieval.media.decode import load
    from retrieval.search.query import image_vector_from_bytes

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "odd.dds").write_bytes(_dds_dx10(93))
    (folder / "fine.dds").write_bytes(_dds_dx10(28))
    loaded = load(str(folder / "odd.dds"), ColorAligner().transform)
    assert loaded.error == "unsupported variant of its format: Unimplemented DXGI format 93"
    with pytest.raises(RetrievalError, match="DXGI format 93"):
        image_vector_from_bytes(ColorAligner(), _dds_dx10(93))
    # Through the decoding workers, as a plain `retrieval index` runs.
    monkeypatch.setattr(aligners, "load_aligner", lambda *args, **kwargs: ColorAligner())
    done = CliRunner().invoke(main, ["index", str(folder), "--index", str(tmp_path / "idx"), "--json", "--workers", "1"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["added"] == 1
    assert [(s["path"].rsplit("/", 1)[-1], s["reason"]) for s in summary["skipped"]] == [
        ("odd.dds", "unsupported variant of its format: Unimplemented DXGI format 93")]


def _drawn_in_alpha(colour: tuple[int, int, int], behind: tuple[int, int, int] | None = None) -> Image.Image:
    """A 64 x 48 RGBA picture whose colour is `colour` wherever a disc is drawn and `behind`
    (default: the same colour) where it is transparent: the shape lies in the alpha channel alone."""
    image = Image.new("RGBA", (64, 48), (*(behind or colour), 0))
    disc = Image.new("L", image.size, 0)
    ImageDraw.Draw(disc).ellipse((12, 6, 52, 42), fill=255)
    image.paste(Image.new("RGBA", image.size, (*colour, 255)), mask=disc)
    return image


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_a_shape_drawn_in_alpha_alone_is_not_indexed_as_a_flat_colour(tmp_path, fmt):
    """Pillow's convert("RGB") drops alpha: a red disc whose transparent pixels are red too became solid red."""
    path = tmp_path / f"disc.{fmt.lower()}"
    _drawn_in_alpha((255, 0, 0)).save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    image, _ = decode(path.read_bytes())
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.std(axis=(0, 1)).max() > 40
    assert tuple(pixels[24, 32]) == (255, 0, 0) and tuple(pixels[0, 0]) == (255, 255, 255)  # laid on white


def test_light_drawings_go_on_black_and_opaque_or_unset_alpha_changes_nothing():
    from retrieval.media.decode import as_rgb

    # White text on transparent black pixels: on white it would vanish, so it goes on black.
    white = as_rgb(_drawn_in_alpha((255, 255, 255), behind=(0, 0, 0)))
    assert np.asarray(white).std() > 40 and tuple(np.asarray(white)[0, 0]) == (0, 0, 0)
    # The same on transparent white pixels (what dropping alpha would show as a white blank).
    assert np.asarray(as_rgb(_drawn_in_alpha((250, 250, 250), behind=(250, 250, 250)))).std() > 40
    # A palette picture with a transparent index, and an opaque RGBA one: as Pillow converts them.
    palette = _picture(3).convert("P")
    palette.info["transparency"] = 0
    assert np.asarray(as_rgb(palette)).std() > 10
    opaque = _picture(4).convert("RGBA")
    assert np.array_equal(np.asarray(as_rgb(opaque)), np.asarray(opaque.convert("RGB")))
    # Alpha zero throughout (a 32-bit BMP whose writer left it unset, as Pillow's rgb32bf-abgr.bmp):
    # the colours are the picture, not a white page.
    unset = _picture(5).convert("RGBA")
    unset.putalpha(0)
    assert np.array_equal(np.asarray(as_rgb(unset)), np.asarray(_picture(5).convert("RGB")))


def test_thumbnails_and_sheets_lay_transparent_pictures_on_a_page_too(tmp_path):
    from retrieval.search.sheet import _thumbnail
    from retrieval.server.files import make_thumbnail

    path = tmp_path / "disc.png"
    _drawn_in_alpha((255, 0, 0)).save(path)
    thumb = np.asarray(Image.open(io.BytesIO(make_thumbnail(path, 128))))
    assert thumb.std(axis=(0, 1)).max() > 40
    assert np.asarray(_thumbnail(str(path))).std(axis=(0, 1)).max() > 40


def test_the_corpus_accounting_sees_every_file_once(tmp_path):
    """benchmarks/pillow_corpus.py's check on a folder made here: it finds what it must find."""
    from benchmarks.pillow_corpus import account

    folder = tmp_path / "in"
    (folder / ".cache").mkdir(parents=True)
    _picture(1).save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not a picture")
    (folder / ".DS_Store").write_bytes(b"hidden")
    _picture(2).save(folder / ".cache" / "thumb.png")
    store = IndexStore.open(tmp_path / "idx", create=True)
    try:
        summary = indexer.run(store, ColorAligner(), [folder], settings=IndexSettings(workers=0)).as_dict()
        indexed = [row[0] for row in store.catalog.db.execute("SELECT path FROM images")]
    finally:
        store.close()
    accounting = account(folder, summary, indexed)
    assert accounting.clean and accounting.counts() == {"indexed": 1, "skipped": 1, "ignored": 1, "hidden": 2}
    # A count the summary leaves out, a file counted twice, and a path that is not in the folder.
    wrong = account(folder, {**summary, "ignored": {}}, [*indexed, str(folder / "bad.png"), "/elsewhere.png"])
    assert wrong.unaccounted == [str((folder / "notes.txt").resolve())]
    assert [t["outcomes"] for t in wrong.twice] == [["indexed", "skipped"]] and wrong.strangers == ["/elsewhere.png"]


def _pillow_archive():
    """Pillow's source archive where the benchmark keeps it (or $RETRIEVAL_PILLOW_SDIST); never downloaded here."""
    import os
    from pathlib import Path

    from benchmarks.pillow_corpus import cached_archive

    named = os.environ.get("RETRIEVAL_PILLOW_SDIST")
    if named:
        return Path(named) if Path(named).is_file() else None
    return cached_archive(cache=Path(__file__).resolve().parents[1] / "bench-out" / "pillow-sdist")


@pytest.mark.slow
def test_a_sample_of_pillows_test_images_leaves_no_file_unaccounted_for(tmp_path):
    """80 of Pillow's Tests/images, evenly spaced: each indexed, skipped with a reason or ignored and counted,
    and none indexed as a blank it is not. `python -m benchmarks.pillow_corpus` runs all of them."""
    from benchmarks.pillow_corpus import account, blank_check, extract

    archive = _pillow_archive()
    if archive is None:
        pytest.skip("Pillow's source archive is not here: `python -m benchmarks.pillow_corpus` fetches it")
    root = extract(archive, tmp_path / "src", limit=80)
    store = IndexStore.open(tmp_path / "idx", create=True)
    try:
        summary = indexer.run(store, ColorAligner(), [root], settings=IndexSettings(workers=0))
        indexed = [row[0] for row in store.catalog.db.execute("SELECT path FROM images")]
    finally:
        store.close()
    accounting = account(root, summary.as_dict(), indexed)
    assert accounting.clean, accounting
    counts = accounting.counts()
    assert sum(counts.values()) == 80 and counts["indexed"] > 40 and counts["skipped"] and counts["ignored"]
    checked = blank_check(indexed)
    assert checked["blanks"] == [] and checked["failed"] == [] and checked["compared"] == len(indexed)


def test_decoder_capture_keeps_decoder_lines_and_hands_the_rest_back_to_stderr(capfd):
    # Descriptor 2 is the process's: while a decode borrows it, a progress bar or another thread
    # may print. Those bytes must reach stderr after the decode, not vanish into the file's notes.
    import os

    from retrieval.media.decode import decoder_messages

    notes: list[str] = []
    with decoder_messages(notes):
        os.write(2, b"TIFFFetchNormalTag: custom tag 65001 is not read\n")
        os.write(2, b"\rprogress 3/10\n")
        os.write(2, b"tempfile.tif: WEBP compression support is not configured.\n")
    # Pillow's made-up name for an in-memory TIFF is dropped from the note.
    assert notes == ["TIFFFetchNormalTag: custom tag 65001 is not read", "WEBP compression support is not configured."]
    assert capfd.readouterr().err == "\rprogress 3/10\n"
