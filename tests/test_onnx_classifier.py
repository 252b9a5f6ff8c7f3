"""The default aligner's classifier on ONNX Runtime gives torch's logits, and falls back to torch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import skimage_photo
from PIL import Image

from retrieval.aligners import conse, onnx_classifier
from retrieval.aligners.conse import ConseAligner


@pytest.mark.slow
def test_exported_classifier_matches_torch_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path))
    fast, torch_only = ConseAligner(device="cpu"), ConseAligner(device="cpu", onnx=False)  # torch: as on a GPU
    pixels = np.stack([fast.transform(Image.open(skimage_photo(n))) for n in ("chelsea.png", "rocket.jpg", "coffee.png")])
    assert fast.onnx is not None and list(tmp_path.glob("classifier-efficientnet-lite0-*.onnx"))
    np.testing.assert_allclose(fast.logits(pixels), torch_only.logits(pixels), atol=1e-4)
    np.testing.assert_allclose(fast.encode_images(pixels), torch_only.encode_images(pixels), atol=1e-5)
    # A second aligner reuses the exported file rather than exporting again.
    monkeypatch.setattr(onnx_classifier, "_export", lambda *a: pytest.fail("exported twice"))
    assert ConseAligner(device="cpu").onnx is not None


def test_an_export_that_fails_falls_back_to_torch(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path))

    def broken(*args):
        raise RuntimeError("no exporter here")

    monkeypatch.setattr(onnx_classifier, "_export", broken)
    aligner = ConseAligner(device="cpu", config=conse.RECIPE_2026_11)
    with caplog.at_level("INFO", logger="retrieval.aligners.onnx_classifier"):
        assert aligner.onnx is None
    assert "classifying with torch" in caplog.text and "no exporter here" in caplog.text
    assert aligner.logits(np.zeros((1, 3, 224, 224), np.float32)).shape == (1, 1000)
