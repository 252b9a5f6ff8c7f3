"""HTTP Range requests for originals (what lets a browser seek in a video), over a real socket.

The parser is checked on a table of headers; the route through a real uvicorn in this process
and httpx, on a plumbing-only (ColorAligner) index, so the bytes, statuses and headers are what
a browser gets. Playing a video from its moment in Chromium is tests/test_video_page.py.
"""

from __future__ import annotations

import os

import httpx
import pytest
from conftest import ColorAligner
from server_kit import client, color_index, serving

from retrieval.server import ranges
from retrieval.server.app import ServerSettings


@pytest.mark.parametrize(("header", "size", "expected"), [
    ("bytes=0-9", 100, (0, 9)),
    ("bytes=90-", 100, (90, 99)),
    ("bytes=-10", 100, (90, 99)),
    ("bytes=-1000", 100, (0, 99)),  # a suffix longer than the file: all of it
    ("bytes=50-1000", 100, (50, 99)),  # an end past the file: up to its end
    ("BYTES = 3 - 4", 100, (3, 4)),
    ("bytes=99-99", 100, (99, 99)),
])
def test_one_range_is_understood(header, size, expected):
    got = ranges.requested(header, size)
    assert got is not None and (got.first, got.last) == expected
    assert got.content_range() == f"bytes {expected[0]}-{expected[1]}/{size}"


@pytest.mark.parametrize("header", [None, "items=0-9", "bytes=0-1,5-9"])
def test_no_range_other_units_and_range_lists_get_the_whole_file(header):
    assert ranges.requested(header, 100) is None


@pytest.mark.parametrize("header", [
    "bytes", "bytes=", "bytes=-", "bytes=a-b", "bytes=1-2-3", "bytes=--5", "bytes=9-3", "bytes=0x10-",
    "bytes=" + "9" * 40 + "-", "bytes=1.5-2", "0-9",
])
def test_malformed_ranges_are_bad_requests(header):
    with pytest.raises(ranges.BadRange, match="Range|range"):
        ranges.requested(header, 100)


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=500-600", 100), ("bytes=-0", 100),
                                              ("bytes=0-", 0), ("bytes=-5", 0)])
def test_ranges_past_the_end_are_not_satisfiable(header, size):
    with pytest.raises(ranges.RangeNotSatisfiable) as raised:
        ranges.requested(header, size)
    assert raised.value.size == size


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(base URL, photo folder, id of p0.jpg): a real uvicorn in this process over a ColorAligner index."""
    root = tmp_path_factory.mktemp("ranges")
    index, photos = color_index(root, count=3)
    api = client(ServerSettings(indexes=[str(index)]), aligner=ColorAligner())
    results = api.get("/api/search", params={"q": "x", "k": 10}).json()["results"]
    image_id = next(r["id"] for r in results if r["path"] == "p0.jpg")
    app = api.app
    with serving(app, header_timeout_s=5.0, keep_alive_s=5) as port:
        yield f"http://127.0.0.1:{port}", photos, image_id


def test_an_original_is_sent_whole_or_in_the_range_asked_for(live):
    url, photos, image_id = live
    data = (photos / "p0.jpg").read_bytes()
    size = len(data)
    with httpx.Client(base_url=url) as http:
        whole = http.get(f"/api/image/{image_id}")
        assert whole.status_code == 200 and whole.content == data and whole.headers["accept-ranges"] == "bytes"
        etag = whole.headers["etag"]
        for header, first, last in [("bytes=0-9", 0, 9), ("bytes=10-", 10, size - 1), ("bytes=-7", size - 7, size - 1),
                                    (f"bytes=5-{size * 2}", 5, size - 1)]:
            part = http.get(f"/api/image/{image_id}", headers={"range": header})
            assert part.status_code == 206, header
            assert part.headers["content-range"] == f"bytes {first}-{last}/{size}", header
            assert part.content == data[first : last + 1] and int(part.headers["content-length"]) == last - first + 1
            assert part.headers["content-type"] == "image/jpeg" and part.headers["etag"] == etag
        # If-Range: the range only while the file is still the version the client has.
        assert http.get(f"/api/image/{image_id}", headers={"range": "bytes=0-9", "if-range": etag}).status_code == 206
        stale = http.get(f"/api/image/{image_id}", headers={"range": "bytes=0-9", "if-range": '"other"'})
        assert stale.status_code == 200 and stale.content == data
        # Several ranges: the whole file (a server may), never a multipart body.
        listed = http.get(f"/api/image/{image_id}", headers={"range": "bytes=0-1,4-5"})
        assert listed.status_code == 200 and listed.content == data
        # A download in ranges keeps its name.
        named = http.get(f"/api/image/{image_id}", params={"download": 1}, headers={"range": "bytes=0-3"})
        assert named.status_code == 206 and "p0.jpg" in named.headers["content-disposition"]
        assert http.head(f"/api/image/{image_id}", headers={"range": "bytes=0-3"}).status_code == 206


def test_bad_and_unsatisfiable_ranges_are_one_clear_line(live):
    url, photos, image_id = live
    size = (photos / "p0.jpg").stat().st_size
    with httpx.Client(base_url=url) as http:
        past = http.get(f"/api/image/{image_id}", headers={"range": f"bytes={size}-"})
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
        assert "past the end" in past.json()["error"]
        for header in ("bytes=abc", "bytes=9-3", "bytes=-", "bytes=" + "1" * 30 + "-", "bytes 0-9"):
            bad = http.get(f"/api/image/{image_id}", headers={"range": header})
            assert bad.status_code == 400, header
            error = bad.json()["error"]
            assert "\n" not in error and ("bytes=FIRST-LAST" in error or "ends before it starts" in error), header


def test_a_range_never_reaches_a_file_outside_the_indexed_folders(live, tmp_path):
    url, photos, image_id = live
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"secret bytes outside the indexed folder")
    original = photos / "p0.jpg"
    moved = tmp_path / "p0.jpg"
    os.replace(original, moved)
    os.symlink(secret, original)
    try:
        response = httpx.get(f"{url}/api/image/{image_id}", headers={"range": "bytes=0-5"})
        assert response.status_code == 404 and b"secret" not in response.content
    finally:
        original.unlink()
        os.replace(moved, original)
