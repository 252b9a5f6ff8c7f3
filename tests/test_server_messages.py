"""Errors and notes the server passes on from the engine name no folder of the server's machine.

The engine words its messages for the CLI's user (``index /home/.../idx holds no captions``);
over HTTP each index folder shows as the served name, and a path in an indexed folder relative
to it, as result paths are, unless the server runs with ``--absolute-paths``. Plumbing only:
a small ColorAligner index.

What the decoders say about a file (Pillow's warnings, libtiff's messages printed in C) goes to
the log at -v with the file's name, never raw to the server's stderr (issue 24, item 7).
"""

from __future__ import annotations

import io
import os
import struct
import time

import httpx
import pytest
from conftest import ColorAligner, make_image
from PIL import Image
from server_kit import ServerProcess, client, color_index

from retrieval.ingest import pipeline as indexer
from retrieval.ingest.pipeline import IndexSettings
from retrieval.server.app import ServerSettings
from retrieval.server.library import hide_folders
from retrieval.storage.store import IndexStore

#: What libtiff prints about the tag of :func:`tiff_libtiff_complains_about`.
LIBTIFF_SAYS = "custom tag 65001"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("messages")
    index, photos = color_index(root)
    return root, index, photos


def api(index, absolute_paths: bool = False):
    return client(ServerSettings(indexes=[str(index)], absolute_paths=absolute_paths), aligner=ColorAligner())


def test_searching_captions_of_an_index_without_any_names_it_by_its_served_name(built):
    root, index, _ = built
    response = api(index).get("/api/search", params={"q": "a cat", "target": "texts"})
    assert response.status_code == 400
    assert str(root) not in response.text
    assert response.json()["error"].startswith(f"index {index.name} holds no captions")


def test_a_filter_that_matches_nothing_notes_the_folder_as_the_client_gave_it(built):
    root, index, photos = built
    response = api(index).get("/api/search", params={"q": "red", "folder": "nowhere/deeper"})
    body = response.json()
    assert response.status_code == 200 and body["results"] == []
    assert str(root) not in response.text
    assert body["query"]["index"] == index.name
    assert body["note"] == "no image passes --folder nowhere/deeper"


def test_absolute_paths_keep_the_folders_in_messages(built):
    _, index, photos = built
    server = api(index, absolute_paths=True)
    error = server.get("/api/search", params={"q": "a cat", "target": "texts"}).json()["error"]
    assert f"index {index} holds no captions" in error
    note = server.get("/api/search", params={"q": "red", "folder": "nowhere"}).json()["note"]
    assert str(photos / "nowhere") in note


def test_the_deepest_folder_wins_and_a_longer_name_is_left_alone():
    places = {"/srv/pics": ("pics", ""), "/srv/pics/2023": ("2023", ""), "/srv/idx": ("idx", "idx/")}
    text = "/srv/pics/2023/a.jpg, /srv/pics/b.jpg, /srv/pics2/c.jpg, /srv/idx/faiss.1, /srv/idx."
    assert hide_folders(text, places) == "a.jpg, b.jpg, /srv/pics2/c.jpg, idx/faiss.1, idx."


# -- item 7: decoders' words go to the log, naming the file ---------------------------------------
def tiff_libtiff_complains_about(path):
    """An LZW TIFF (so libtiff decodes it) with a private tag of an undefined type (99): libtiff
    prints "TIFFFetchNormalTag: ... custom tag 65001 ..." in C, straight to stderr, and decodes the picture."""
    from PIL import TiffImagePlugin

    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[65001] = 1
    tags.tagtype[65001] = 3
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(buffer, format="TIFF", compression="tiff_lzw", tiffinfo=tags)
    data = bytearray(buffer.getvalue())
    (offset,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[offset : offset + 2])
    for entry in range(offset + 2, offset + 2 + 12 * count, 12):
        if struct.unpack("<H", data[entry : entry + 2])[0] == 65001:
            data[entry + 2 : entry + 4] = struct.pack("<H", 99)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def with_tiff(tmp_path_factory):
    """(index, {file name: id}): two JPEGs and the TIFF libtiff complains about."""
    root = tmp_path_factory.mktemp("tiff")
    photos = root / "pics"
    for i in range(2):
        make_image(photos / f"p{i}.jpg", seed=i)
    tiff_libtiff_complains_about(photos / "odd.tif")
    store = IndexStore.open(str(root / "idx"), create=True)
    try:
        summary = indexer.run(store, ColorAligner(), [photos], settings=IndexSettings(workers=0))
        assert summary.added == 3 and not summary.skipped
        ids = [int(i) for chunk, _ in store.catalog.image_vectors() for i in chunk]
        rows = store.catalog.rows_by_id("images", ids)
    finally:
        store.close()
    return root / "idx", {os.path.basename(row["path"]): id_ for id_, row in rows.items()}


def test_libtiff_words_reach_the_log_at_v_naming_the_file_never_raw_stderr(with_tiff):
    index, ids = with_tiff
    server = ServerProcess("--index", str(index), options=("-v",))
    try:
        thumb = httpx.get(f"{server.url}/api/thumb/{ids['odd.tif']}?size=128", timeout=60)
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg", thumb.text
        assert Image.open(io.BytesIO(thumb.content)).getpixel((10, 10))[0] > 150  # the picture, red
        preview = httpx.get(f"{server.url}/api/image/{ids['odd.tif']}", timeout=60)  # TIFF: a JPEG preview
        assert preview.status_code == 200 and preview.headers["content-type"] == "image/jpeg", preview.text
        assert httpx.get(f"{server.url}/api/thumb/{ids['p0.jpg']}?size=128", timeout=60).status_code == 200
    finally:
        server.stop()
    said = [line for line in server.output().splitlines() if LIBTIFF_SAYS in line]
    assert said, server.output()  # logged at -v ...
    assert all(line.startswith("INFO ") and "odd.tif: " in line for line in said), said  # ... and never raw


def test_an_uploaded_tiff_keeps_libtiff_off_stderr(with_tiff, tmp_path, capfd, caplog):
    index, _ = with_tiff
    api = client(ServerSettings(indexes=[str(index)]), aligner=ColorAligner())
    data = tiff_libtiff_complains_about(tmp_path / "q.tif").read_bytes()
    with caplog.at_level("INFO", logger="retrieval"):
        response = api.post("/api/search/upload", files={"file": ("q.tif", data)}, data={"k": "2"})
    api.app.state.decoders.close()
    assert response.status_code == 200, response.text
    assert LIBTIFF_SAYS not in capfd.readouterr().err
    assert any(LIBTIFF_SAYS in r.getMessage() and "uploaded image" in r.getMessage() for r in caplog.records)


def test_a_decoder_that_hangs_or_crashes_costs_one_file_and_is_replaced(with_tiff):
    from retrieval.server.decoding import DecoderFailed

    index, ids = with_tiff
    api = client(ServerSettings(indexes=[str(index)]), aligner=ColorAligner())
    decoders = api.app.state.decoders
    tiff = f"/api/thumb/{ids['odd.tif']}"
    decoders.timeout_s = 0.01  # not even the start of the process fits: taken for a hang
    started = time.monotonic()
    hung = api.get(tiff, params={"size": 512})
    assert hung.status_code == 422 and time.monotonic() - started < 10
    error = hung.json()["error"]
    assert "odd.tif" in error and "longer than" in error and "\n" not in error, error
    decoders.timeout_s = 60
    assert api.get(tiff, params={"size": 512}).status_code == 200  # a new process
    decoders.timeout_s = 0.5
    started = time.monotonic()
    with pytest.raises(DecoderFailed, match="longer than 0.5 s"):
        decoders.call("a/test.tif", time.sleep, 30)
    assert time.monotonic() - started < 10
    decoders.timeout_s = 60
    with pytest.raises(DecoderFailed, match=r"test.tif: its decoder crashed \(exit code 3\)"):
        decoders.call("a/test.tif", os._exit, 3)
    assert api.get(tiff, params={"size": 256}).status_code == 200  # and another
    decoders.close()
