"""A video found by its moment, over HTTP and in the page: a real WebM (VP9, written with PyAV) of
three scenes made of real photos, indexed with the packaged `default` aligner, served by a real
`retrieval serve` process and played in Debian's Chromium (playwright).

A caption of the second scene (the cat) finds the video at a time inside that scene; its card
shows the frame of that moment; opened, the video plays from there, and Chromium can seek in
it because the server answers its Range requests (206).
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import skimage_photo
from PIL import Image, ImageOps
from server_kit import ServerProcess
from video_kit import make_video

pytestmark = pytest.mark.slow  # the real default aligner, a browser and a server process

SCENES = ["coffee.png", "chelsea.png", "rocket.jpg"]
SCENE_SECONDS = 4.0
CAT = (SCENE_SECONDS, 2 * SCENE_SECONDS)  # the second scene
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def served():
    """(server, the video's bytes): one video of three scenes and one photo, indexed and served."""
    from retrieval.api import build_index
    from retrieval.ingest.pipeline import IndexSettings

    root = Path(tempfile.mkdtemp(prefix="retrieval-video-page-"))
    library = root / "library"
    video = make_video(library / "scenes.webm", SCENES, scene_seconds=SCENE_SECONDS)
    shutil.copyfile(skimage_photo("astronaut.png"), library / "astronaut.png")
    build_index([library], index=str(root / "idx"), settings=IndexSettings(workers=0))
    server = ServerProcess("--index", str(root / "idx"))
    yield server, video.read_bytes()
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def cat_hit(server: ServerProcess) -> dict:
    body = httpx.get(server.url + "/api/search", params={"q": "a tabby cat", "k": 2}, timeout=120).json()
    return body["results"][0]


def likeness(jpeg: bytes, photo: str) -> float:
    """Mean absolute difference (0-255) between a thumbnail and a photo, both at 64 x 48 grey."""
    def small(image: Image.Image) -> np.ndarray:
        return np.asarray(ImageOps.fit(image.convert("L"), (64, 48)), dtype=np.float32)

    with Image.open(skimage_photo(photo)) as reference:
        return float(np.abs(small(Image.open(io.BytesIO(jpeg))) - small(reference)).mean())


def test_a_video_hit_is_its_moment_with_that_frame_as_thumbnail(served):
    server, _ = served
    hit = cat_hit(server)
    assert hit["path"] == "scenes.webm" and hit["media"] == "video"
    assert CAT[0] <= hit["time"] < CAT[1], hit
    assert f"t={hit['time']:g}" in hit["thumb"]
    thumb = httpx.get(server.url + hit["thumb"], timeout=60)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size[0] == 256
    # The frame of the moment is the cat's scene, not the video's first frame (the coffee).
    assert likeness(thumb.content, "chelsea.png") < likeness(thumb.content, "coffee.png")
    first = httpx.get(server.url + f"/api/thumb/{hit['id']}", params={"size": 128, "t": 0}, timeout=60)
    assert likeness(first.content, "coffee.png") < likeness(first.content, "chelsea.png")
    assert httpx.get(server.url + f"/api/thumb/{hit['id']}", params={"t": -1}).status_code == 422
    # Past the end: the last frame, cached once however many numbers a client sends.
    far = [httpx.get(server.url + f"/api/thumb/{hit['id']}", params={"t": t}, timeout=60) for t in (1e5, 5e5)]
    assert far[0].status_code == far[1].status_code == 200 and far[0].headers["etag"] == far[1].headers["etag"]
    # A photo's hit stays as it was: no media, no time.
    photo = httpx.get(server.url + "/api/search", params={"q": "an astronaut", "k": 1}).json()["results"][0]
    assert photo["path"] == "astronaut.png" and "media" not in photo and "time" not in photo


def test_the_video_is_sent_as_video_in_byte_ranges(served):
    server, data = served
    url = server.url + f"/api/image/{cat_hit(server)['id']}"
    whole = httpx.get(url, timeout=60)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "video/webm" and whole.headers["accept-ranges"] == "bytes"
    part = httpx.get(url, headers={"range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    bad = httpx.get(url, headers={"range": "bytes=x-y"})
    assert bad.status_code == 400 and "bytes=FIRST-LAST" in bad.json()["error"]
    past = httpx.get(url, headers={"range": f"bytes={len(data)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"


def test_the_page_plays_the_video_from_its_moment(browser, served):
    server, data = served
    hit = cat_hit(server)
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=server.url)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    page.on("console", lambda msg: msg.type == "error" and problems.append(f"console: {msg.text}"))
    answers: list[tuple[int, str | None]] = []
    page.on("response", lambda r: "/api/image/" in r.url and answers.append((r.status, r.request.headers.get("range"))))
    try:
        # The heading counts the video apart from the photo (the index's "videos" in /api/indexes).
        (served_index,) = httpx.get(server.url + "/api/indexes", timeout=30).json()["indexes"]
        assert (served_index["images"], served_index["videos"]) == (2, 1)
        page.goto("/")
        assert page.locator("#message h2").inner_text() == f"Search 1 photo and 1 video in “{served_index['name']}”"
        page.goto("/?q=a+tabby+cat")
        card = page.locator("#results .card").first
        card.wait_for()
        assert card.get_attribute("data-id") == str(hit["id"])
        # The results line counts the video apart too, not among "2 photos".
        assert page.locator("#status").text_content().startswith("1 photo and 1 video for")
        assert card.locator(".moment").inner_text().endswith(f"0:{int(hit['time']):02d}")
        page.wait_for_function("() => document.querySelector('#results .card img').naturalWidth > 0")
        card.click()
        video = page.locator("#viewer-video")
        video.wait_for(state="visible")
        assert page.locator("#viewer-img").is_hidden()
        # Playing from the moment: past the metadata, not seeking, and the clock near the hit's time.
        page.wait_for_function("() => { const v = document.querySelector('#viewer-video');"
                               " return v.readyState >= 2 && !v.seeking && v.currentTime > 0; }")
        state = video.evaluate("v => ({t: v.currentTime, paused: v.paused, duration: v.duration,"
                               " seekable: v.seekable.length ? v.seekable.end(0) : 0})")
        assert abs(state["t"] - hit["time"]) < 1.0, state
        assert state["seekable"] >= state["duration"] - 0.5 > 10, state  # seekable to the end: the Range path
        page.wait_for_function(f"() => document.querySelector('#viewer-video').currentTime > {hit['time'] + 0.3}")
        assert not video.evaluate("v => v.paused")
        assert any(status == 206 and asked for status, asked in answers), answers
        assert page.locator("#viewer-time").inner_text() == f"0:{int(hit['time']):02d}"
        # Closing stops it; a photo's viewer shows the picture, not a player.
        page.keyboard.press("Escape")  # the viewer closes through the history (popstate): wait for it
        page.wait_for_function("() => { const v = document.querySelector('#viewer-video');"
                               " return v.paused && !v.getAttribute('src'); }", timeout=10_000)
        assert not problems, problems
    finally:
        context.close()
