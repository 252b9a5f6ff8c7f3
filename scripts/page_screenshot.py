"""Screenshot of the search page after a real search, for the docs (docs/serve.png).

Serves INDEX on a free loopback port in this process (the same app `retrieval serve` runs),
types the query into the page in Debian's Chromium, waits for the thumbnails, and saves a
PNG with a 256-colour dithered palette so a photo grid stays a few hundred KB.

    retrieval demo
    .venv/bin/python scripts/page_screenshot.py --index demo --query "mountains and a lake" --out docs/serve.png
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import threading
import time

import uvicorn
from PIL import Image
from playwright.sync_api import sync_playwright

from retrieval.server.app import ServerSettings, create_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(index: str) -> tuple[uvicorn.Server, str]:
    port = free_port()
    app = create_app(ServerSettings(indexes=[index], port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise SystemExit("the server did not start within 60 s")
        time.sleep(0.05)
    return server, f"http://localhost:{port}"


def screenshot(url: str, query: str, width: int, height: int, dark: bool) -> bytes:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian's chromium is needed: apt-get install chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height}, color_scheme="dark" if dark else "light")
        page.set_default_timeout(120_000)
        page.goto(url + "/")
        page.locator(".message").wait_for()
        page.fill("#q", query)
        page.keyboard.press("Enter")
        page.locator('#results[aria-busy="false"] .card').first.wait_for()
        shown = page.locator("#results .card").count()
        page.locator("#results .card img.loaded").nth(min(shown, 12) - 1).wait_for()
        page.locator("#q").blur()
        page.mouse.move(width - 5, height - 5)  # no hover effect in the picture
        page.wait_for_timeout(800)  # the cards' fade-in
        png = page.screenshot()
        browser.close()
    return png


def small_png(png: bytes, out: str) -> None:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    palette = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, kmeans=3)
    image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default="demo")
    parser.add_argument("--query", default="mountains and a lake")
    parser.add_argument("--out", default="docs/serve.png")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=760)
    parser.add_argument("--dark", action="store_true", help="The dark colour scheme.")
    args = parser.parse_args()
    server, url = serve(args.index)
    try:
        small_png(screenshot(url, args.query, args.width, args.height, args.dark), args.out)
    finally:
        server.should_exit = True
    print(args.out)


if __name__ == "__main__":
    main()
