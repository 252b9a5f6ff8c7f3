"""Shared, built-once pieces for the server tests: a real index, in-process clients, a real uvicorn process.

Indexes are built once per test process (functools.cache) and reused by every server test
file; tests that change an index build their own small one.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from conftest import REAL_PHOTOS, ColorAligner, make_image, skimage_photo
from fastapi.testclient import TestClient

from retrieval.aligners.base import Aligner
from retrieval.server.app import ServerSettings, create_app

CAPTIONS = [
    "a tabby cat lying down",
    "a cup of coffee on a saucer",
    "a rocket on the launch pad",
    "an astronaut in a white spacesuit with a flag",
    "a red motorcycle parked on the street",
    "a man with a camera on a tripod",
]
GENERATED = 14
LOOPBACK = "http://127.0.0.1"


def _scratch(name: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f"retrieval-{name}-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


@functools.cache
def photo_index() -> tuple[Path, Path]:
    """(index folder, photo folder): 6 real photos and 14 generated pictures, plus a caption corpus,
    indexed with the real packaged `default` aligner."""
    from retrieval.api import build_index
    from retrieval.ingest.pipeline import IndexSettings

    root = _scratch("photos")
    photos = root / "photos"
    photos.mkdir()
    for name in REAL_PHOTOS:
        shutil.copyfile(skimage_photo(name), photos / name)
    for i in range(GENERATED):
        make_image(photos / "generated" / f"gen{i:02d}.jpg", seed=100 + i, size=(96, 64))
    (root / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    build_index([photos], index=str(root / "idx"), captions=root / "captions.txt", settings=IndexSettings(workers=0))
    return root / "idx", photos


def color_index(root: Path, count: int = 8) -> tuple[Path, Path]:
    """A small index built with the plumbing-only ColorAligner (for file and security tests)."""
    from retrieval.ingest import pipeline as indexer
    from retrieval.ingest.pipeline import IndexSettings
    from retrieval.storage.store import IndexStore

    photos = root / "pics"
    for i in range(count):
        make_image(photos / f"p{i}.jpg", seed=i)
    store = IndexStore.open(str(root / "cidx"), create=True)
    try:
        indexer.run(store, ColorAligner(), [photos], settings=IndexSettings(workers=0))
    finally:
        store.close()
    return root / "cidx", photos


def client(settings: ServerSettings, base_url: str = LOOPBACK, aligner: Aligner | None = None) -> TestClient:
    """An in-process client; `aligner` replaces every served index's own (plumbing tests)."""
    app = create_app(settings)
    if aligner is not None:
        for served in app.state.library.indexes.values():
            served.index._aligner = aligner
    return TestClient(app, base_url=base_url)


def served(app, name: str | None = None):
    library = app.state.library
    return library.get(name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(app, header_timeout_s: float = 5.0, keep_alive_s: int = 5) -> Iterator[int]:
    """`app` on a real uvicorn in a thread of this process, on 127.0.0.1; yields its port."""
    from retrieval.server.listen import listener

    port = free_port()
    server = listener(app, "127.0.0.1", port, header_timeout_s=header_timeout_s, keep_alive_s=keep_alive_s)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


class ServerProcess:
    """`retrieval serve` in a subprocess on a free port; its output (uvicorn's logs) is kept in a file."""

    def __init__(self, *args: str, host: str = "127.0.0.1", options: tuple[str, ...] = ()):
        """`args` follow ``serve``; `options` (``-v``) come before it."""
        self.port = free_port()
        self.log = Path(tempfile.mkstemp(prefix="retrieval-serve-", suffix=".log")[1])
        atexit.register(self.log.unlink, True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "retrieval", *options, "serve", "--host", host, "--port", str(self.port), *args],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env=env,  # uvicorn's access log goes to stdout
        )
        atexit.register(self.stop)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/api/health", timeout=2).status_code in (200, 401):
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"server did not start: {self.log.read_text()}")

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@functools.cache
def photo_server() -> ServerProcess:
    """One real uvicorn process serving the photo index (no token, loopback)."""
    index, _ = photo_index()
    return ServerProcess("--index", str(index))
