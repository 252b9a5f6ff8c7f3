"""Shared fixtures: real photos shipped by scikit-image, generated images, and a plumbing-only aligner."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.aligners.base import Aligner, normalize
from retrieval.media.transform import ImageTransform

REAL_PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png"]


def skimage_photo(name: str) -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / name


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    """A folder of real photos (scikit-image's samples, public domain)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in REAL_PHOTOS:
        shutil.copyfile(skimage_photo(name), folder / name)
    return folder


def make_image(path: Path, seed: int, size=(64, 48), fmt: str | None = None) -> Path:
    """A distinct generated picture: a smooth random colour field, saved in the format of its suffix."""
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 256, (2, 2, 3)).astype(np.float32)
    ys, xs = np.linspace(0, 1, size[1])[:, None, None], np.linspace(0, 1, size[0])[None, :, None]
    top = corners[0, 0] * (1 - xs) + corners[0, 1] * xs
    bottom = corners[1, 0] * (1 - xs) + corners[1, 1] * xs
    pixels = (top * (1 - ys) + bottom * ys).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


@pytest.fixture
def image_dir(tmp_path) -> Path:
    folder = tmp_path / "images"
    for i in range(12):
        suffix = [".jpg", ".png", ".webp", ".bmp", ".gif", ".tiff"][i % 6]
        make_image(folder / f"sub{i % 3}" / f"img{i:02d}{suffix}", seed=i)
    return folder


class ColorAligner(Aligner):
    """Plumbing only: vectors from a coarse colour layout, texts from a hash. No model.

    Good enough to tell generated pictures apart, so indexing mechanics (ids, renames,
    resumes, generations) can be tested quickly. Behaviour that depends on a model is
    tested with the real packaged weights instead.
    """

    spec = "test/color"
    dim = 48

    def __init__(self, identity: str = "test/color"):
        self.identity = identity
        self.transform = ImageTransform(size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
        self.calls = 0

    def encode_images(self, pixels):
        self.calls += len(pixels)
        n = len(pixels)
        grid = pixels.reshape(n, 3, 4, 4, 4, 4).mean(axis=(3, 5)).reshape(n, -1)
        return normalize(grid + 1.5)

    def encode_texts(self, texts):
        out = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            out.append(np.random.default_rng(seed).normal(size=self.dim))
        return normalize(np.array(out, dtype=np.float32).reshape(len(texts), self.dim))


@pytest.fixture
def color_aligner() -> ColorAligner:
    return ColorAligner()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by playwright, for the page tests (test_page.py, test_video_page.py).

    Module scope, not session: the sync API keeps an event loop of its own for as long as
    it runs, and later test modules call asyncio.run() in this same thread."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh --test installs it with apt as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()
