"""The server against a hostile client: body caps per route, pixel bombs, folder names, cross-site
files, slow and odd connections, and the protocol details a schema fuzzer finds.

Plumbing only (ColorAligner index); the connection timeouts run a real uvicorn in this process.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import socket
import threading
import time

import pytest
from conftest import ColorAligner
from PIL import Image
from server_kit import client, color_index, serving

from retrieval.server import clip_compat
from retrieval.server.app import ServerSettings


@pytest.fixture
def setup(tmp_path):
    index, photos = color_index(tmp_path)
    api = client(ServerSettings(indexes=[str(index)]), aligner=ColorAligner())
    ids = {r["path"]: r["id"] for r in api.get("/api/search", params={"q": "x", "k": 50}).json()["results"]}
    return api, photos, ids, tmp_path


def _upload(api, data: bytes, name: str = "q.png", **fields):
    return api.post("/api/search/upload", files={"file": (name, data)}, data={"k": "2", **fields})


def _png(size: tuple[int, int], mode: str = "1") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


# -- 19: each route takes the body it needs ----------------------------------------------------
def test_login_and_json_routes_take_kilobytes_and_uploads_megabytes(setup):
    api = setup[0]  # the default 20 MB upload limit
    padding = " " * 200_000
    for path in ("/api/login", "/api/logout", "/api/search", "/metadata"):
        response = api.post(path, content=b'{"token": "x"' + padding.encode() + b"}", headers={"content-type": "application/json"})
        assert response.status_code == 413 and "KB" in response.json()["error"], path
        declared = api.post(path, content=b"{}", headers={"content-type": "application/json", "content-length": str(2**20)})
        assert declared.status_code == 413, path
    # The largest legitimate bodies still pass: a 4,096-number embedding, a search with every field full.
    embedding = api.post("/knn-service", json={"embedding_input": [0.123456789] * 4096})
    assert embedding.status_code == 400 and "48" in embedding.json()["error"]  # read whole: the index is 48-d
    full = {"q": "ü" * 1000, "not": ["€" * 1000] * 10, "like": [1] * 50, "like_weights": [0.5] * 50, "k": 5}
    assert len(json.dumps(full, ensure_ascii=False).encode()) > 30_000
    assert api.post("/api/search", content=json.dumps(full, ensure_ascii=False).encode(),
                    headers={"content-type": "application/json"}).status_code == 200
    noise = io.BytesIO()
    Image.frombytes("RGB", (300, 300), os.urandom(300 * 300 * 3)).save(noise, format="PNG")
    assert len(noise.getvalue()) > 64 * 1024  # only the upload routes take that
    assert _upload(api, noise.getvalue()).status_code == 200


def test_large_json_bodies_are_parsed_off_the_event_loop(setup, monkeypatch):
    api, photos, _, _ = setup
    seen = []
    real = clip_compat._validate

    def spy(model, body):
        try:
            asyncio.get_running_loop()
            seen.append("event loop")
        except RuntimeError:
            seen.append("worker")
        return real(model, body)

    monkeypatch.setattr(clip_compat, "_validate", spy)
    import base64

    image = base64.b64encode((photos / "p1.jpg").read_bytes() + b"\0" * 200_000).decode()
    assert api.post("/knn-service", json={"image": image, "num_images": 2}).status_code == 200
    assert api.post("/knn-service", json={"text": "x", "num_images": 2}).status_code == 200
    assert seen == ["worker", "event loop"]  # a small body is parsed where it is


# -- 20: pixel bombs ---------------------------------------------------------------------------
def test_a_small_pixel_bomb_is_refused_before_it_is_decoded(setup):
    api = setup[0]
    bomb = _png((9400, 9400))  # 88 megapixels of 1-bit PNG, under Pillow's own limit
    assert len(bomb) < 20_000
    started = time.monotonic()
    response = _upload(api, bomb, "bomb.png")
    assert response.status_code == 413 and "megapixels" in response.json()["error"], response.text
    assert time.monotonic() - started < 1.0  # not decoded (that takes about 1.5 s)


def test_uploads_are_decoded_off_the_query_thread_and_big_jpegs_reduced(setup, monkeypatch):
    api, _, _, tmp_path = setup
    from retrieval.media import decode
    from retrieval.server import uploads

    threads = []
    real = decode.decode
    monkeypatch.setattr(decode, "decode", lambda data, draft_to=None: threads.append(threading.current_thread().name)
                        or real(data, draft_to))
    monkeypatch.setattr(uploads, "MAX_PIXELS", 1_000_000)
    jpeg = io.BytesIO()
    Image.new("RGB", (2000, 1000), "red").save(jpeg, format="JPEG")
    assert _upload(api, jpeg.getvalue(), "big.jpg").status_code == 200  # reduced while decoding (draft)
    assert threads and "retrieval-query" not in threads
    response = _upload(api, _png((2000, 1000), "RGB"), "big.png")  # PNG has no cheap reduced decode
    assert response.status_code == 413 and "1 megapixels" in response.json()["error"]
    import base64

    knn = api.post("/knn-service", json={"image": base64.b64encode(jpeg.getvalue()).decode(), "num_images": 1})
    assert knn.status_code == 200 and len(threads) == 2 and "retrieval-query" not in threads


# -- 21: folder names --------------------------------------------------------------------------
@pytest.mark.parametrize("folder", ["/proc/self/exe", "/proc/self/root/root", "/etc", "/proc/self/cwd"])
def test_the_folder_filter_names_no_server_path(setup, folder):
    api = setup[0]
    resolved = os.path.realpath(folder)
    for response in (api.get("/api/search", params={"q": "x", "folder": folder}),
                     api.post("/api/search", json={"q": "x", "folder": [folder]})):
        text = response.text
        assert response.status_code in (200, 400), text
        assert folder in text  # the client's own words
        assert resolved == folder or not re.search(rf"(^|[\s'\"]){re.escape(resolved)}($|[\s'\"/.,])", text), text


def test_a_folder_linked_out_of_the_indexed_folders_is_not_followed(setup):
    api, photos, _, tmp_path = setup
    outside = tmp_path / "elsewhere" / "private"
    outside.mkdir(parents=True)
    (photos / "link").symlink_to(outside)
    for folder in ("link", str(photos / "link")):
        response = api.get("/api/search", params={"q": "x", "folder": folder})
        # The folder as the client gave it (relative to the indexed folder, as paths are shown).
        assert response.status_code == 400 and "'link'" in response.text and "elsewhere" not in response.text, response.text
    inside = api.get("/api/search", params={"q": "x", "folder": str(photos)})
    assert inside.status_code == 200 and len(inside.json()["results"]) == 8
    assert inside.json()["query"]["folder"] == [str(photos)]


# -- 22: files are not for other sites --------------------------------------------------------
def test_files_are_same_origin_resources_and_cross_site_fetches_refused(setup):
    api, _, ids, _ = setup
    one = ids["p0.jpg"]
    for path in (f"/api/thumb/{one}", f"/api/image/{one}", f"/api/image/{one}/meta"):
        for site in (None, "same-origin", "none"):
            response = api.get(path, headers={"sec-fetch-site": site} if site else {})
            assert response.status_code == 200, (path, site)
            assert response.headers["cross-origin-resource-policy"] == "same-origin"
        for site in ("cross-site", "same-site"):
            refused = api.get(path, headers={"sec-fetch-site": site})
            assert refused.status_code == 403 and "error" in refused.json(), (path, site)
    assert api.get("/api/health", headers={"sec-fetch-site": "cross-site"}).headers["cross-origin-resource-policy"] == "same-origin"


# -- 23: odd hosts and slow connections ---------------------------------------------------------
@pytest.mark.parametrize("host", ["[::1]evil.com", "localhost:8000@evil.com", "localhost:P@evil.com", "[::1]:80x",
                                  "127.0.0.1:80:80", "localhost.:80 x", "[::1"])
def test_malformed_hosts_are_refused(setup, host):
    response = setup[0].get("/api/health", headers={"host": host})
    assert response.status_code == 400 and "Host" in response.json()["error"]


def test_two_host_headers_are_refused(setup):
    api = setup[0]
    for hosts in (["127.0.0.1", "evil.com"], ["evil.com", "127.0.0.1"], ["127.0.0.1", "127.0.0.1"]):
        response = api.get("/api/health", headers=[("host", h) for h in hosts])
        assert response.status_code == 400 and "Host" in response.json()["error"], hosts


@pytest.fixture
def live(tmp_path):
    """A real uvicorn in this process with 1-second header and keep-alive timeouts."""
    index, _ = color_index(tmp_path)
    app = client(ServerSettings(indexes=[str(index)]), aligner=ColorAligner()).app
    with serving(app, header_timeout_s=1.0, keep_alive_s=1) as port:
        yield port


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed the connection (reading whatever it sent), or None."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_slow_headers_and_idle_connections_are_closed(live):
    request = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", live)) as silent:
        assert _closed_within(silent, 5) is not None  # connected, sent nothing
    with socket.create_connection(("127.0.0.1", live)) as slow:
        started, closed = time.monotonic(), False
        for byte in request[:30]:  # a byte every 0.2 s: the headers would take 6 s
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.2)
            if _readable(slow):
                closed = slow.recv(65536) == b""
                break
        assert closed and time.monotonic() - started < 4
    with socket.create_connection(("127.0.0.1", live)) as idle:
        idle.sendall(request)
        reply = idle.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200")
        assert _closed_within(idle, 5) is not None  # keep-alive ends


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


# -- 24: protocol details ----------------------------------------------------------------------
def test_head_works_on_every_get_route(setup):
    api, _, ids, _ = setup
    one = ids["p0.jpg"]
    paths = ["/", "/api/health", "/api/indexes", "/api/info", "/api/search?q=x", f"/api/thumb/{one}",
             f"/api/image/{one}", f"/api/image/{one}/meta", "/indices-list", "/openapi.json", "/static/app.js"]
    routed = {route.path for route in api.app.routes if "GET" in getattr(route, "methods", ())}
    assert {p.split("?")[0].replace(str(one), "{image_id}") for p in paths if not p.startswith("/static")} >= routed
    for path in paths:
        got, head = api.get(path), api.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"], path


def test_options_and_405_list_every_method_of_the_path(setup):
    api = setup[0]
    options = api.options("/api/search")
    assert options.status_code == 204
    assert set(options.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "POST", "OPTIONS"}
    wrong = api.put("/api/search")
    assert wrong.status_code == 405 and {"GET", "POST"} <= set(wrong.headers["allow"].replace(" ", "").split(","))
    assert api.options("/knn-service").headers["allow"].replace(" ", "") == "POST,OPTIONS"


def test_thumbnail_sizes_are_in_the_schema(setup):
    api, _, ids, _ = setup
    operation = api.get("/openapi.json").json()["paths"]["/api/thumb/{image_id}"]["get"]
    [size] = [p for p in operation["parameters"] if p["name"] == "size"]
    assert size["schema"].get("enum") == [128, 256, 512] and size["schema"].get("default") == 256
    assert api.get(f"/api/thumb/{ids['p0.jpg']}", params={"size": 100}).status_code == 422
    assert api.get(f"/api/thumb/{ids['p0.jpg']}", params={"size": "512"}).status_code == 200


def test_ids_are_integers_not_booleans(setup):
    api = setup[0]
    for ids in ([False], [True], [1.5], ["1"]):
        response = api.post("/metadata", json={"ids": ids})
        assert response.status_code == 422 and "ids" in response.json()["error"], ids
    assert api.post("/api/search", json={"like": [False]}).status_code == 422
    assert api.post("/metadata", json={"ids": [1]}).status_code == 200
    assert api.post("/metadata", json={"ids": [1.0]}).status_code == 200  # JSON Schema's integer: no fraction


@pytest.mark.parametrize("bad", [[1e300], [-1e39], [0.0]])
def test_an_embedding_float32_cannot_hold_is_refused(setup, bad):
    response = setup[0].post("/knn-service", json={"embedding_input": bad + [0.0] * 47})
    assert response.status_code == 400 and "embedding" in response.json()["error"], response.text


def test_an_embedding_with_nan_or_infinity_is_refused(setup):
    for token in ("NaN", "Infinity", "-Infinity"):
        body = '{"embedding_input": [' + token + ', ' + ", ".join(["0.5"] * 47) + "]}"
        response = setup[0].post("/knn-service", content=body.encode())
        assert response.status_code == 400 and "embedding_input" in response.json()["error"], token


def test_k_out_of_range_is_422_on_every_route(setup):
    api, photos, _, _ = setup
    picture = (photos / "p0.jpg").read_bytes()
    for k in (0, 201):
        answers = {
            "GET /api/search": api.get("/api/search", params={"q": "x", "k": k}),
            "POST /api/search": api.post("/api/search", json={"q": "x", "k": k}),
            "POST /api/search/upload": api.post("/api/search/upload", files={"file": ("q.jpg", picture)}, data={"k": str(k)}),
        }
        for route, response in answers.items():
            assert response.status_code == 422 and "k" in response.json()["error"], (route, k)
    for body in ({"text": "x", "num_images": 0}, {"text": "x", "num_images": 5000}, {"text": "x", "num_result_ids": 0}):
        response = api.post("/knn-service", json=body)
        assert response.status_code == 422 and "num_" in response.json()["error"], body
