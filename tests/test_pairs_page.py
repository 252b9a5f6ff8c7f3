"""RAW+JPEG pairs and Live Photos as the user sees them (issue 21, "Pairs"): the search hit's
`companions` and `motion` over HTTP, the motion file served by the photo's id only from inside
the indexed folders, the page's badges and viewer in Debian's Chromium (playwright), and the
short form in `retrieval search`'s plain text.

Real files made here: a JPEG with its DNG (pidng, as the photo-format tests make them), a HEIC
(pillow-heif) with its .mov (H.264 in a QuickTime container, written with PyAV), a lone JPEG.
Plumbing only: the ColorAligner indexes and searches, a real uvicorn serves in this process.
"""

from __future__ import annotations

import shutil

import httpx
import pytest
from click.testing import CliRunner
from conftest import ColorAligner, skimage_photo
from PIL import Image
from server_kit import client, serving
from video_kit import make_video

from benchmarks.raw_files import save_dng
from retrieval.ingest import pipeline as indexer
from retrieval.ingest.pipeline import IndexSettings
from retrieval.media import heif
from retrieval.server.app import ServerSettings
from retrieval.storage.store import IndexStore

TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """(photo folder, index folder): a RAW+JPEG pair, a Live Photo and a plain photo, indexed."""
    root = tmp_path_factory.mktemp("pairs")
    photos = root / "photos"
    (photos / "camera").mkdir(parents=True)
    (photos / "live").mkdir()
    motorcycle = Image.open(skimage_photo("motorcycle_left.png")).convert("RGB").resize((320, 240))
    motorcycle.save(photos / "camera" / "DSC_0042.JPG", quality=90)
    save_dng(motorcycle, photos / "camera" / "DSC_0042.dng")
    heif.register()
    astronaut = Image.open(skimage_photo("astronaut.png")).convert("RGB").resize((256, 256))
    astronaut.save(photos / "live" / "IMG_0007.HEIC", format="HEIF", quality=90)
    make_video(photos / "live" / "IMG_0007.MOV", ["astronaut.png"], scene_seconds=2.0, size=(160, 120), codec="h264")
    shutil.copyfile(skimage_photo("coffee.png"), photos / "coffee.png")
    store = IndexStore.open(str(root / "idx"), create=True)
    try:
        indexer.run(store, ColorAligner(), [photos], settings=IndexSettings(workers=0))
    finally:
        store.close()
    return photos, root / "idx"


@pytest.fixture(scope="module")
def served(library):
    """(base URL, {shown path: hit}, in-process client): a real uvicorn in this process."""
    _, index = library
    api = client(ServerSettings(indexes=[str(index)]), aligner=ColorAligner())
    hits = {h["path"]: h for h in api.get("/api/search", params={"q": "anything", "k": 10}).json()["results"]}
    with serving(api.app, header_timeout_s=5.0, keep_alive_s=5) as port:
        yield f"http://127.0.0.1:{port}", hits, api


def test_a_hit_lists_its_raw_or_its_motion_file_and_a_plain_photo_gains_no_keys(served):
    _, hits, _ = served
    assert set(hits) == {"camera/DSC_0042.JPG", "live/IMG_0007.HEIC", "coffee.png"}  # one hit per shot
    assert hits["camera/DSC_0042.JPG"]["companions"] == ["camera/DSC_0042.dng"]
    assert "motion" not in hits["camera/DSC_0042.JPG"]
    assert hits["live/IMG_0007.HEIC"]["motion"] == "live/IMG_0007.MOV"
    assert "companions" not in hits["live/IMG_0007.HEIC"]
    assert not {"companions", "motion"} & set(hits["coffee.png"])


def test_the_motion_file_is_served_by_the_photos_id_in_byte_ranges(served, library):
    url, hits, _ = served
    photos, _ = library
    data = (photos / "live" / "IMG_0007.MOV").read_bytes()
    live = hits["live/IMG_0007.HEIC"]["id"]
    with httpx.Client(base_url=url) as http:
        whole = http.get(f"/api/image/{live}/motion")
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["content-type"] == "video/quicktime" and whole.headers["accept-ranges"] == "bytes"
        head = http.head(f"/api/image/{live}/motion")
        assert head.status_code == 200 and head.content == b"" and head.headers["content-type"] == "video/quicktime"
        part = http.get(f"/api/image/{live}/motion", headers={"range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == data[100:200]
        # The still's own route still sends the still (a JPEG of the HEIC), not the motion file.
        assert http.get(f"/api/image/{live}").headers["content-type"] == "image/jpeg"
        for plain in ("camera/DSC_0042.JPG", "coffee.png"):  # no motion file: 404, not some other file
            missing = http.get(f"/api/image/{hits[plain]['id']}/motion")
            assert missing.status_code == 404 and "no motion file" in missing.json()["error"]
        assert http.get("/api/image/999999/motion").status_code == 404


def test_a_motion_file_outside_the_indexed_folders_is_refused(library, tmp_path):
    """A catalog row whose motion file lies outside the roots, directly or through a symlink, gets 404."""
    photos, index = library
    copy = tmp_path / "idx"
    shutil.copytree(index, copy)
    outside = tmp_path / "secret.mov"
    outside.write_bytes(b"not yours")
    link = photos / "live" / "link.MOV"
    link.symlink_to(outside)
    try:
        store = IndexStore.open(str(copy))
        try:
            live = store.catalog.db.execute("SELECT id FROM images WHERE motion IS NOT NULL").fetchone()[0]
        finally:
            store.close()
        api = client(ServerSettings(indexes=[str(copy)]), aligner=ColorAligner())
        assert api.get(f"/api/image/{live}/motion").status_code == 200  # the copy serves its own motion file
        for motion in (str(outside), str(link), "live/IMG_0007.MOV"):  # outside, a way out, not absolute
            store = IndexStore.open(str(copy))
            try:
                with store.catalog.db.conn:
                    store.catalog.db.conn.execute("UPDATE images SET motion = ? WHERE id = ?", (motion, live))
            finally:
                store.close()
            api = client(ServerSettings(indexes=[str(copy)]), aligner=ColorAligner())
            refused = api.get(f"/api/image/{live}/motion")
            assert refused.status_code == 404 and b"not yours" not in refused.content, motion
    finally:
        link.unlink()


def test_the_page_shows_badges_lists_the_raw_and_plays_the_live_photo(browser, served):
    url, hits, _ = served
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=url)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    page.on("console", lambda msg: msg.type == "error" and problems.append(f"console: {msg.text}"))
    try:
        page.goto("/?q=anything")
        page.locator("#results .card").nth(2).wait_for()

        def card(path: str):
            return page.locator(f'#results .card[data-id="{hits[path]["id"]}"]')

        assert card("camera/DSC_0042.JPG").locator(".badge").inner_text() == "RAW+JPEG"
        assert card("live/IMG_0007.HEIC").locator(".badge").inner_text() == "LIVE"
        assert card("coffee.png").locator(".badge").count() == 0

        card("camera/DSC_0042.JPG").click()
        page.locator("#viewer-companions li").first.wait_for()
        assert page.locator("#viewer-companions li").all_inner_texts() == ["DSC_0042.dng"]
        assert page.locator("dd.viewer-live").is_hidden()
        page.keyboard.press("Escape")

        card("live/IMG_0007.HEIC").click()
        motion = page.locator("#viewer-motion")
        motion.wait_for()
        assert page.locator("dd.viewer-pair").is_hidden()
        assert f"api/image/{hits['live/IMG_0007.HEIC']['id']}/motion?index=" in motion.get_attribute("src")
        assert motion.evaluate("v => v.muted") is True
        # Chromium decodes the H.264 .mov and plays it: time moves on and a frame has its size.
        page.wait_for_function("() => { const v = document.getElementById('viewer-motion');"
                               " return v.readyState >= 2 && v.currentTime > 0.2 && v.videoWidth === 160; }")
        assert page.locator("#viewer-motion-link").inner_text() == "IMG_0007.MOV"
        page.keyboard.press("Escape")
        # Closing the viewer stops the motion file and drops its connection.
        page.wait_for_function("() => !document.getElementById('viewer').open"
                               " && !document.getElementById('viewer-motion').hasAttribute('src')")
        assert problems == []
    finally:
        context.close()


def test_plain_search_text_names_the_other_files_briefly(library, monkeypatch):
    import retrieval.aligners as aligners
    from retrieval.cli import main

    photos, index = library
    monkeypatch.setattr(aligners, "load_aligner", lambda *args, **kwargs: ColorAligner())
    runner = CliRunner()
    text = runner.invoke(main, ["search", "anything", "--index", str(index), "-k", "10"])
    assert text.exit_code == 0, text.output
    lines = {line.split()[2]: line for line in text.stdout.splitlines()}
    assert lines[str(photos / "camera" / "DSC_0042.JPG")].endswith("DSC_0042.JPG  (+ DSC_0042.dng)")
    assert lines[str(photos / "live" / "IMG_0007.HEIC")].endswith("IMG_0007.HEIC  (live)")
    assert lines[str(photos / "coffee.png")].endswith("coffee.png")
    bare = runner.invoke(main, ["search", "anything", "--index", str(index), "-k", "10", "--paths"])
    assert sorted(bare.stdout.split("\n")[:-1]) == sorted(
        str(photos / p) for p in ("camera/DSC_0042.JPG", "live/IMG_0007.HEIC", "coffee.png"))
