"""The server's safety promises: files only by id and only from inside indexed folders, Host
check, token, CORS, upload limits, headers, and no endpoint that changes an index.

Plumbing only (ColorAligner index); the public-bind start-up runs the real CLI in a subprocess.
"""

from __future__ import annotations

import hashlib
import io
import os
import re

import httpx
import pytest
from conftest import ColorAligner, make_image
from PIL import Image
from server_kit import ServerProcess, client, color_index

from retrieval.server import files
from retrieval.server.app import ServerSettings

SECRET = b"secret outside the indexed folder"


@pytest.fixture
def setup(tmp_path):
    index, photos = color_index(tmp_path)
    (tmp_path / "outside.jpg").write_bytes(SECRET)
    api = client(ServerSettings(indexes=[str(index)], max_upload_mb=0.5), aligner=ColorAligner())
    ids = {r["path"]: r["id"] for r in api.get("/api/search", params={"q": "x", "k": 50}).json()["results"]}
    return api, photos, ids, tmp_path


def test_path_tricks_never_reach_the_file_system(setup, monkeypatch):
    api, _, ids, _ = setup
    looked_up = []
    real = files.servable_path
    monkeypatch.setattr(files, "servable_path", lambda path, roots: looked_up.append(path) or real(path, roots))
    tricks = [
        "/api/image/..%2F..%2F..%2Fetc%2Fpasswd", "/api/image/%2Fetc%2Fpasswd", "/api/image/..", "/api/image/1%00",
        "/api/image/1%2F..%2F..%2Fcatalog.db", "/api/thumb/..%2Fcatalog.db", "/api/image/1/../../../etc/passwd",
        "/api/image/-1", "/api/image/1e3", "/api/image/0x1", "/api/image/99999999999999999999999",
        "/static/../catalog.db", "/static/..%2F..%2Fapp.py", "/static/%2Fetc%2Fpasswd", "/static/..%5C..%5Capp.py",
        "/api/image/%00", "/api/thumb/1?size=256%00", "/api/image/1?index=..%2F..%2Fetc",
    ]
    for trick in tricks:
        response = api.get(trick)
        assert response.status_code in (400, 404, 422), trick
        assert b"root:" not in response.content and b"SQLite" not in response.content, trick
    # Only the well-formed id with a bad index name got as far as a lookup, and it found no index.
    assert looked_up == []


def test_a_symlink_out_of_the_folder_is_not_served(setup):
    api, photos, ids, root = setup
    inside = api.get(f"/api/image/{ids['p0.jpg']}")
    assert inside.status_code == 200 and inside.content == (photos / "p0.jpg").read_bytes()
    os.unlink(photos / "p0.jpg")
    os.symlink(root / "outside.jpg", photos / "p0.jpg")
    for path in (f"/api/image/{ids['p0.jpg']}", f"/api/thumb/{ids['p0.jpg']}", f"/api/image/{ids['p0.jpg']}?size=128"):
        response = api.get(path)
        assert response.status_code == 404 and SECRET not in response.content, path
    # A symlink to another file inside the indexed folder is fine.
    os.unlink(photos / "p1.jpg")
    os.symlink(photos / "p2.jpg", photos / "p1.jpg")
    assert api.get(f"/api/image/{ids['p1.jpg']}").content == (photos / "p2.jpg").read_bytes()
    # An absolute link to a system file is outside too.
    os.unlink(photos / "p3.jpg")
    (photos / "p3.jpg").symlink_to("/etc/passwd")
    assert api.get(f"/api/image/{ids['p3.jpg']}").status_code == 404
    (photos / "p4.jpg").unlink()
    assert api.get(f"/api/image/{ids['p4.jpg']}").status_code == 404


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:9", "[::1]:8000", "[::1]"])
def test_loopback_hosts_are_answered(setup, host):
    api = setup[0]
    assert api.get("/api/health", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil", "", "[::2]"])
def test_other_hosts_are_refused_on_loopback(setup, host):
    api = setup[0]
    response = api.get("/api/search", params={"q": "x"}, headers={"host": host})
    assert response.status_code == 421 and "error" in response.json()


@pytest.fixture
def public(tmp_path):
    index, _ = color_index(tmp_path)
    settings = ServerSettings(indexes=[str(index)], host="0.0.0.0", token="s3cret-token")
    return client(settings, base_url="http://photos.example.org", aligner=ColorAligner())


def test_public_bind_needs_the_token(public):
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret-token"}, {"cookie": "retrieval_token=nope"}):
        response = public.get("/api/search", params={"q": "x"}, headers=headers)
        assert response.status_code == 401 and "error" in response.json(), headers
    for path in ("/api/indexes", "/api/image/1", "/api/thumb/1", "/indices-list", "/openapi.json"):
        assert public.get(path).status_code == 401, path
    assert public.post("/knn-service", json={"text": "x"}).status_code == 401
    ok = public.get("/api/search", params={"q": "x"}, headers={"authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200
    # The page shell, its assets, the login and the health check carry no data.
    assert public.get("/").status_code == 200 and public.get("/api/health").status_code == 200


def test_the_token_cookie_is_found_among_others_and_only_by_its_whole_name(public):
    mixed = {"cookie": "theme=dark; retrieval_token=s3cret-token; lang=en"}
    assert public.get("/api/indexes", headers=mixed).status_code == 200
    for cookie in ("xretrieval_token=s3cret-token", "retrieval_token_old=s3cret-token", "retrieval_token=s3cret-tokenx",
                   "retrieval_token=", "retrieval_token"):
        assert public.get("/api/indexes", headers={"cookie": cookie}).status_code == 401, cookie


def test_token_url_sets_an_httponly_strict_cookie_and_drops_the_token(public):
    wrong = public.get("/?token=nope&q=cat", follow_redirects=False)
    assert wrong.status_code == 303 and "set-cookie" not in wrong.headers
    response = public.get("/?token=s3cret-token&q=cat", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/?q=cat"
    cookie = response.headers["set-cookie"]
    assert "retrieval_token=s3cret-token" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert public.get("/api/indexes").status_code == 200  # the client keeps the cookie
    public.post("/api/logout")
    public.cookies.clear()
    assert public.post("/api/login", json={"token": "nope"}).status_code == 401
    assert public.get("/api/indexes").status_code == 401
    assert public.post("/api/login", json={"token": "s3cret-token"}).status_code == 204
    assert public.get("/api/indexes").status_code == 200


def test_public_bind_from_the_cli_generates_a_token_and_keeps_it_out_of_the_log(tmp_path):
    index, _ = color_index(tmp_path)
    server = ServerProcess("--index", str(index), host="0.0.0.0")
    url = re.search(r"open this URL to sign in: (\S+)\?token=(\S+)", server.output())
    assert url, server.output()
    token = url.group(2)
    base = server.url
    assert httpx.get(base + "/api/indexes").status_code == 401
    assert httpx.get(base + "/api/indexes", headers={"authorization": f"Bearer {token}"}).status_code == 200
    assert httpx.get(base + "/api/indexes", headers={"host": "anything.example", "authorization": f"Bearer {token}"}).status_code == 200
    redirect = httpx.get(base + f"/?token={token}", follow_redirects=False)
    assert redirect.status_code == 303 and "retrieval_token" in redirect.headers["set-cookie"]
    httpx.get(base + "/api/health?token=" + token)
    server.stop()
    log = server.output()
    assert "GET /?token=[redacted]" in log, log
    assert log.count(token) == 1  # only in the sign-in line printed at start-up, never in the access log


def test_no_cors_unless_an_origin_is_named(tmp_path):
    index, _ = color_index(tmp_path)
    origin = {"origin": "http://evil.example"}
    closed = client(ServerSettings(indexes=[str(index)]))
    assert "access-control-allow-origin" not in closed.get("/api/health", headers=origin).headers
    preflight = closed.options("/api/search", headers={**origin, "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    opened = client(ServerSettings(indexes=[str(index)], cors_origins=["http://front.example"]))
    allowed = opened.get("/api/health", headers={"origin": "http://front.example"})
    assert allowed.headers["access-control-allow-origin"] == "http://front.example"
    assert "access-control-allow-origin" not in opened.get("/api/health", headers=origin).headers


def _upload(api, data: bytes, name: str = "q.jpg"):
    return api.post("/api/search/upload", files={"file": (name, data, "image/jpeg")}, data={"k": "2"})


def test_uploads_are_capped_checked_and_bombs_refused(setup):
    api, photos, _, tmp_path = setup
    good = _upload(api, (photos / "p5.jpg").read_bytes())
    assert good.status_code == 200 and good.json()["results"]
    big = make_image(tmp_path / "big.bmp", seed=1, size=(800, 600))  # 1.4 MB of BMP, over the 0.5 MB cap
    response = _upload(api, big.read_bytes(), "big.bmp")
    assert response.status_code == 413 and "limit" in response.json()["error"]
    not_image = _upload(api, b"%PDF-1.4 this is not a picture" * 10, "q.pdf")
    assert not_image.status_code == 400 and "not an image" in not_image.json()["error"]
    truncated = _upload(api, (photos / "p5.jpg").read_bytes()[:300])
    assert truncated.status_code == 400
    # A decompression bomb: 144 megapixels that compress to a few kilobytes.
    buffer = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 100_000
    bomb = _upload(api, buffer.getvalue(), "bomb.png")
    assert bomb.status_code == 413 and "too large" in bomb.json()["error"]
    assert api.post("/api/search/upload", data={"q": "x"}).status_code == 400  # no file
    assert api.post("/api/search/upload", json={"q": "x"}).status_code == 400  # not multipart
    assert api.post("/api/search/upload", files={"file": ("e.jpg", b"")}).status_code == 400


def test_oversized_declared_upload_is_refused_before_reading(setup):
    api = setup[0]
    response = api.post(
        "/api/search/upload", content=b"x" * 10, headers={"content-type": "multipart/form-data; boundary=b", "content-length": str(50 * 2**20)}
    )
    assert response.status_code == 413


def test_caps_on_k_offset_and_lists(setup):
    api, _, ids, _ = setup
    assert api.get("/api/search", params={"q": "x", "k": 201}).status_code == 422
    assert api.get("/api/search", params={"q": "x", "k": 200}).status_code == 200
    assert api.get("/api/search", params={"q": "x", "offset": 1001}).status_code == 422
    assert api.get("/api/search", params={"like": list(ids.values()) * 10}).status_code == 422
    assert api.post("/knn-service", json={"text": "x", "num_images": 5000}).status_code == 422
    response = api.get("/api/search", params={"q": "x", "weight": "nan", "like": 1})
    assert response.status_code == 422 and "error" in response.json()


def test_security_headers_everywhere(setup):
    api, _, ids, _ = setup
    for path in ("/", "/api/health", f"/api/thumb/{ids['p0.jpg']}", f"/api/image/{ids['p0.jpg']}", "/nope"):
        headers = api.get(path).headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert "script-src 'self'" in headers["content-security-policy"] and "unsafe-inline" not in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
    thumb = api.get(f"/api/thumb/{ids['p0.jpg']}")
    assert thumb.headers["content-type"] == "image/jpeg" and thumb.content[:3] == b"\xff\xd8\xff"


def test_no_endpoint_changes_the_index(setup):
    api, _, ids, _ = setup
    folder = api.app.state.library.get(None).folder

    def fingerprint():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file() and p.suffix in (".db", ".faiss")}

    before = fingerprint()
    one = ids["p0.jpg"]
    for method, path, kwargs in [
        ("GET", "/api/search", {"params": {"q": "x", "like": one}}), ("POST", "/api/search", {"json": {"q": "y"}}),
        ("GET", f"/api/thumb/{one}", {}), ("GET", f"/api/image/{one}", {}), ("GET", f"/api/image/{one}/meta", {}),
        ("GET", "/api/info", {}), ("POST", "/knn-service", {"json": {"text": "x"}}), ("POST", "/metadata", {"json": {"ids": [one]}}),
    ]:
        assert api.request(method, path, **kwargs).status_code == 200, path
    assert fingerprint() == before
    methods = {m for route in api.app.routes for m in getattr(route, "methods", ())}
    assert methods <= {"GET", "HEAD", "POST"}
    for method in ("PUT", "DELETE", "PATCH"):
        response = api.request(method, "/api/search")
        assert response.status_code == 405 and "error" in response.json()


def test_serve_mistakes_are_one_line_messages(tmp_path):
    from click.testing import CliRunner

    from retrieval.cli import main

    index, _ = color_index(tmp_path)
    for args, message in [
        (["--index", str(tmp_path / "nope")], "no index at"),
        (["--index", str(index), "--index", str(index)], "two indexes would be served as 'cidx'"),
        (["--index", str(index), "--port", "70000"], "70000"),
        (["--index", str(index), "--token", "short"], "at least 8"),
        (["--index", str(index), "--token", "has a space; and=more"], "at least 8"),
    ]:
        result = CliRunner().invoke(main, ["serve", *args])
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output


def test_only_the_server_package_imports_the_web_stack():
    import ast
    from pathlib import Path

    import retrieval

    package = Path(retrieval.__file__).parent
    web = {"fastapi", "starlette", "uvicorn", "multipart", "python_multipart"}
    offenders = []
    for path in package.rglob("*.py"):
        relative = path.relative_to(package).as_posix()
        if relative.startswith("server/") or relative == "cli/serve.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{relative}: {n}" for n in names if n.split(".")[0] in web]
    assert offenders == []


def test_cors_with_a_token_lets_the_preflight_through_but_not_the_request(tmp_path):
    index, _ = color_index(tmp_path)
    settings = ServerSettings(indexes=[str(index)], host="0.0.0.0", token="t0ken", cors_origins=["http://front.example"])
    api = client(settings, base_url="http://photos.example.org", aligner=ColorAligner())
    origin = {"origin": "http://front.example"}
    preflight = api.options("/api/search", headers={**origin, "access-control-request-method": "GET",
                                                     "access-control-request-headers": "authorization"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "http://front.example"
    assert api.get("/api/search", params={"q": "x"}, headers=origin).status_code == 401
    ok = api.get("/api/search", params={"q": "x"}, headers={**origin, "authorization": "Bearer t0ken"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://front.example"


def test_every_request_body_is_capped_even_without_a_length(setup):
    api = setup[0]  # max_upload_mb=0.5: bodies stop at about 0.73 MB

    def chunks():
        for _ in range(40):
            yield b" " * 50_000

    for path in ("/api/search", "/knn-service", "/metadata", "/api/login", "/api/search/upload"):
        kind = "multipart/form-data; boundary=b" if path.endswith("upload") else "application/json"
        response = api.post(path, content=chunks(), headers={"content-type": kind})
        assert response.status_code == 413 and "error" in response.json(), path
    declared = api.post("/api/search", content=b"{}", headers={"content-type": "application/json", "content-length": str(2**30)})
    assert declared.status_code == 413
