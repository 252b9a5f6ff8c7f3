"""What a newcomer met (issue 24, items 5-13): faults told in one line, and habits the same across commands.

Closed pipes, a busy port, library warnings, misleading words, export/import and filter
arguments, progress with --json, the info table, contact sheets.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ColorAligner, make_image
from PIL import Image

from retrieval.cli import main
from retrieval.errors import RetrievalError
from retrieval.ingest import pipeline as indexer
from retrieval.ingest.pipeline import IndexSettings
from retrieval.storage.store import IndexStore

RETRIEVAL = str(Path(sys.executable).with_name("retrieval"))


def run_closed_stdout(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI with stdout a pipe whose reader has already gone, as `| head -1` leaves it."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([RETRIEVAL, *args], stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)


@pytest.fixture
def color_index(tmp_path, image_dir, color_aligner):
    """12 generated images indexed with the plumbing aligner, no captions."""
    store = IndexStore.open(tmp_path / "idx", create=True)
    indexer.run(store, color_aligner, [image_dir], settings=IndexSettings(workers=0))
    store.close()
    return tmp_path / "idx"


# -- 5: a closed stdout ends quietly -------------------------------------------------
def test_a_closed_stdout_ends_quietly_as_unix_tools_do():
    result = run_closed_stdout("models")
    assert "Broken pipe" not in result.stderr and "index folder" not in result.stderr
    assert result.stderr == "", result.stderr  # nothing at all: no message, no "Exception ignored"
    assert result.returncode == 141  # 128 + SIGPIPE, what a shell reports for `git log | head -1`


def test_a_broken_pipe_that_is_not_stdout_is_still_an_error(monkeypatch):
    import retrieval.aligners as aligners

    def broken(**kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(aligners, "list_aligners", broken)
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 1 and "Broken pipe" in result.output


# -- 6: a busy port ------------------------------------------------------------------
def test_serve_on_a_busy_port_says_so_in_one_line_before_claiming_to_serve(color_index):
    pytest.importorskip("uvicorn")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([RETRIEVAL, "serve", "--index", str(color_index), "--port", str(port)],
                                capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr
    assert "serving" not in result.stderr and "Errno" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- 7: library warnings go to the log, naming the file -------------------------------
def jpeg_with_corrupt_exif(path: Path) -> Path:
    """A JPEG whose EXIF block promises a tag value far beyond its end (Pillow warns about it)."""
    image = Image.new("RGB", (64, 48), "orange")
    # A little-endian TIFF header, one IFD entry: tag 0x010F (Make), ASCII, 4,000 bytes at offset 26.
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x010F, 2, 4000, 26) + struct.pack("<I", 0)
    exif = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd + b"short"
    out = io.BytesIO()
    image.save(out, format="JPEG")
    data = out.getvalue()
    segment = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    path.write_bytes(data[:2] + segment + data[2:])
    return path


def tiff_with_unconfigured_codec(path: Path) -> Path:
    """A TIFF that claims WEBP compression (50001): libtiff prints its complaint in C, on stderr."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, format="TIFF", compression="tiff_lzw")
    data = bytearray(buffer.getvalue())
    (offset,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[offset : offset + 2])
    for i in range(count):
        entry = offset + 2 + 12 * i
        if struct.unpack("<H", data[entry : entry + 2])[0] == 0x0103:
            data[entry + 8 : entry + 10] = struct.pack("<H", 50001)
    path.write_bytes(bytes(data))
    return path


def test_decoder_warnings_stay_off_stderr_and_come_back_with_the_file(tmp_path, capfd):
    from retrieval.media.decode import load

    transform = ColorAligner().transform
    exif = load(str(jpeg_with_corrupt_exif(tmp_path / "exif.jpg")), transform)
    tiff = load(str(tiff_with_unconfigured_codec(tmp_path / "webp.tif")), transform)
    err = capfd.readouterr().err
    assert err == "", err
    assert exif.error is None and exif.pixels is not None
    assert any("Skipping tag 271" in note for note in exif.notes), exif.notes
    assert tiff.error is not None and "WEBP compression support is not configured" in tiff.error


def test_index_logs_decoder_warnings_at_info_with_the_path(tmp_path, capfd, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        make_image(folder / f"ok{i}.jpg", seed=i)
    bad = jpeg_with_corrupt_exif(folder / "exif.jpg")
    store = IndexStore.open(tmp_path / "idx", create=True)
    with caplog.at_level(logging.INFO, logger="retrieval"):
        indexer.run(store, ColorAligner(), [folder], settings=IndexSettings(workers=0))
    store.close()
    assert capfd.readouterr().err == ""
    said = [r for r in caplog.records if str(bad) in r.getMessage()]
    assert said and said[0].levelno == logging.INFO and "Skipping tag 271" in said[0].getMessage()


# -- 8: words that say what happened ----------------------------------------------------
def iso_media(path: Path, brands: bytes) -> Path:
    """The first box of an ISO base media file (HEIC, MP4, MOV) as phones write it: what a sniffer sees."""
    major, compatible = brands[:4], brands[4:]
    box = b"ftyp" + major + b"\x00\x00\x00\x00" + compatible
    path.write_bytes(struct.pack(">I", len(box) + 4) + box + b"\x00\x00\x00\x08free" + b"\x00" * 64)
    return path


@pytest.mark.parametrize("name, brands, words", [
    ("x.heic", b"heicmif1heic", "HEIC"),
    # A video is a query image too (the mean of its frames, docs/video.md): a broken one is named as a video.
    ("x.mp4", b"isomisomiso2avc1mp41", "MP4 video FFmpeg cannot read"),
    ("x.mov", b"qt  qt  ", "QuickTime video FFmpeg cannot read"),
])
def test_a_query_image_we_cannot_read_is_named(tmp_path, name, brands, words):
    from retrieval.search.query import encode_image_file

    with pytest.raises(RetrievalError) as caught:
        encode_image_file(ColorAligner(), str(iso_media(tmp_path / name, brands)))
    message = str(caught.value)
    assert words in message and "not an image" not in message, message
    assert "\n" not in message


def test_the_captions_hint_names_the_index(color_index):
    from retrieval.search.query import search_vectors

    store = IndexStore.open(color_index)
    try:
        with pytest.raises(RetrievalError) as caught:
            search_vectors(store, np.ones((1, 48), np.float32), 3, target="texts")
    finally:
        store.close()
    assert f"retrieval index --captions FILE --index {color_index}" in str(caught.value)


def test_the_empty_index_page_does_not_suggest_a_name_for_an_index_served_by_path(tmp_path):
    pytest.importorskip("fastapi")
    from retrieval.server.library import Library

    store = IndexStore.open(tmp_path / "empty", create=True)
    store.catalog.set_meta(model="test/color")
    store.close()
    library = Library([str(tmp_path / "empty")])
    try:
        assert library.get("empty").summary()["by_path"] is True
    finally:
        library.close()
    page = (Path(__file__).parent.parent / "retrieval" / "server" / "static" / "app.js").read_text()
    assert "index.by_path" in page


# -- 9: arguments the same way in every command ----------------------------------------
def test_export_takes_index_as_an_option_too_and_import_reads_the_model_it_recorded(color_index, tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    import retrieval.aligners as aligners

    runner = CliRunner()
    positional = runner.invoke(main, ["export", str(color_index), str(tmp_path / "a"), "--json"])
    assert positional.exit_code == 0, positional.output
    by_option = runner.invoke(main, ["export", "--index", str(color_index), str(tmp_path / "b"), "--json"])
    assert by_option.exit_code == 0, by_option.output
    assert json.loads(by_option.output)["images"] == 12
    recorded = json.loads((tmp_path / "b" / "retrieval.json").read_text())
    assert recorded["model"] == "test/color" and recorded["dim"] == 48

    monkeypatch.setattr(aligners, "load_aligner", lambda spec, *a, **kw: ColorAligner())
    imported = runner.invoke(main, ["import", str(tmp_path / "b"), "--index", str(tmp_path / "copy"), "--json"])
    assert imported.exit_code == 0, imported.output
    assert IndexStore.open(tmp_path / "copy").catalog.get_meta("model") == "test/color"
    other = runner.invoke(main, ["import", str(tmp_path / "b"), "--index", str(tmp_path / "c2"), "--model", "default"])
    assert other.exit_code == 1 and "test/color" in other.output and not (tmp_path / "c2").exists()
    both = runner.invoke(main, ["export", str(color_index), "--index", str(color_index), str(tmp_path / "d")])
    assert both.exit_code == 2


@pytest.mark.parametrize("flag, value", [("--after", "last summer"), ("--before", "2023-13-45"), ("--near", "nowhere"),
                                         ("--near", "95,2.3,5")])
def test_a_bad_filter_value_is_a_usage_error(tmp_path, flag, value):
    result = CliRunner().invoke(main, ["search", "x", "--index", str(tmp_path / "nope"), flag, value])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{flag}'" in result.output and "Usage:" in result.output


# -- 10: --json keeps the progress bars on a terminal ------------------------------------
def test_index_json_keeps_progress_on_stderr(monkeypatch, tmp_path):
    import retrieval.api as api
    from retrieval.progress import TqdmProgress

    seen = {}

    class Summary:
        def as_dict(self):
            return {"added": 0}

    def fake_build(folders, **kwargs):
        seen["progress"] = kwargs["progress"]
        return Summary()

    monkeypatch.setattr(api, "build_index", fake_build)
    result = CliRunner().invoke(main, ["index", str(tmp_path), "--index", str(tmp_path / "i"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"added": 0}
    # tqdm draws only when stderr is a terminal, so the bars never reach a pipe or a file.
    assert isinstance(seen["progress"], TqdmProgress) and seen["progress"].disable is None


# -- 11: info is a table ----------------------------------------------------------------
def test_info_text_is_a_table_a_person_reads(color_index, monkeypatch):
    import retrieval.aligners as aligners

    monkeypatch.setattr(aligners, "load_aligner", lambda *a, **kw: ColorAligner())
    runner = CliRunner()
    text = runner.invoke(main, ["info", "--index", str(color_index)])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert "None" not in text.output
    assert not any("_" in line.split("  ")[0] for line in lines), text.output  # no internal keys
    columns = {len(line) - len(line[line.index("  ") :].lstrip()) for line in lines if line.strip()}
    assert len(columns) == 1, text.output  # every value starts in the same column
    assert any(line.startswith("images") and line.split()[-1] == "12" for line in lines)
    data = json.loads(runner.invoke(main, ["info", "--index", str(color_index), "--json"]).output)
    assert data["images"] == 12 and "recall_at_10_vs_exact" in data and data["nprobe"] is None  # JSON unchanged


# -- 12: contact sheets wrap, stay narrow and name the files -----------------------------
class _Hit:
    def __init__(self, rank, path, score=0.5):
        self.rank, self.path, self.score = rank, path, score


def test_a_search_sheet_wraps_rows_caps_its_width_and_names_files(tmp_path):
    from retrieval.search import sheet

    hits = [_Hit(i + 1, str(make_image(tmp_path / f"photo_{i:02d}.jpg", seed=i))) for i in range(12)]
    out = sheet.contact_sheet([('"a cat"', hits)], tmp_path / "sheet.png")
    width, height = Image.open(out).size
    assert width <= sheet.MAX_WIDTH and height > 2 * sheet.THUMB
    assert sheet.columns_for(12) <= 6
    assert sheet.labels(hits[3]) == ["#4  0.500", "photo_03.jpg"]


def test_the_duplicates_sheet_is_capped_and_named(tmp_path):
    from retrieval.search import sheet
    from retrieval.search.duplicates import Member, sheet_rows

    group = [Member(id=i, path=str(make_image(tmp_path / f"copy_{i:02d}.jpg", seed=1)), score=0.99) for i in range(41)]
    out = sheet.contact_sheet(sheet_rows([group, group[:2]]), tmp_path / "dupes.png")
    width, height = Image.open(out).size
    assert width <= sheet.MAX_WIDTH
    assert height < 6 * (sheet.THUMB + 3 * sheet.LABEL)  # a long group is cut, with a count of the rest
    assert sheet.labels(group[5])[-1] == "copy_05.jpg"


# -- 13: memory is stated, and holds ------------------------------------------------------
def test_the_memory_a_run_needs_is_stated_with_the_models_loaded():
    root = Path(__file__).parent.parent
    readme, indexing = (root / "README.md").read_text(), (root / "docs" / "indexing.md").read_text()
    assert "memory with the `default` aligner loaded" in readme
    assert "the per-file bookkeeping alone" in readme  # the 67 MB line says what it is
    assert "## Memory with the models loaded" in indexing
    assert "Plan on 1.5 GB for indexing" in indexing and "benchmarks.bench_peak_memory" in indexing


MEASURE = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); " \
          "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode, file=sys.stderr)"


@pytest.mark.slow
def test_the_real_cli_keeps_warnings_and_pipes_quiet_and_fits_the_stated_memory(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        make_image(folder / f"img{i}.jpg", seed=i, size=(96, 80))
    jpeg_with_corrupt_exif(folder / "exif.jpg")
    tiff_with_unconfigured_codec(folder / "webp.tif")

    # The main process's peak, measured by a parent that runs nothing else (docs/indexing.md: plan on 2 GB).
    plain = subprocess.run([sys.executable, "-c", MEASURE, RETRIEVAL, "index", str(folder), "--index", str(tmp_path / "a"),
                            "--json"], capture_output=True, text=True, timeout=600)
    *said, last = plain.stderr.strip().splitlines()
    peak_kb, status = map(int, last.split())
    assert status == 0, plain.stderr
    assert said == [], said  # no Pillow or libtiff words, no site-packages paths
    assert peak_kb < 2 * 2**20, peak_kb
    summary = json.loads(plain.stdout)
    assert summary["added"] == 5
    [skipped] = summary["skipped"]
    assert skipped["path"].endswith("webp.tif") and "WEBP compression support is not configured" in skipped["reason"]

    verbose = subprocess.run([RETRIEVAL, "-v", "index", str(folder), "--index", str(tmp_path / "b")],
                             capture_output=True, text=True, timeout=600)
    assert verbose.returncode == 0, verbose.stderr
    assert any(line.startswith("INFO") and str(folder / "exif.jpg") in line and "Skipping tag 271" in line
               for line in verbose.stderr.splitlines()), verbose.stderr

    piped = run_closed_stdout("search", "flower", "--index", str(tmp_path / "a"), "-k", "300")
    assert piped.returncode == 141 and piped.stderr == "", piped.stderr
