"""Words written in an image (signs, labels, covers), read by RapidOCR (opt-in: ``default+ocr``).

RapidOCR (PyPI ``rapidocr-onnxruntime``) ships PP-OCR text detection and recognition
models that run on onnxruntime; nothing is downloaded. It reads the aligner's own 224 px
crop, which is enough for the words a caption would mention (a shop sign, a road sign,
a brand on a can). The words it is sure of become one short sentence, embedded by the
caption encoder like any caption, so a query for the words on a sign finds the sign.

Reading costs far more than the other experts (a detector and a recogniser per picture),
so it is not part of ``default`` but of its own spec, ``default+ocr``.
"""

from __future__ import annotations

import re

import numpy as np

from retrieval.errors import ModelError

TEMPLATE = "a sign that says {words}"


class OcrExpert:
    name = "ocr"

    def __init__(self, min_confidence: float = 0.8, min_letters: int = 3):
        self.min_confidence = min_confidence  # recogniser score below which a word is dropped
        self.min_letters = min_letters  # shorter reads are mostly noise ("0", "F")
        self._engine = None

    @property
    def engine(self):
        if self._engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as exc:
                raise ModelError(
                    "default+ocr needs RapidOCR: pip install 'retrieval[ocr]' "
                    "(rapidocr-onnxruntime, installed without its opencv-python dependency)"
                ) from exc
            self._engine = RapidOCR()
        return self._engine

    def words(self, image: np.ndarray) -> str:
        """The words read in one (H, W, 3) uint8 RGB image, in reading order; "" when none."""
        found, _ = self.engine(np.ascontiguousarray(image[..., ::-1]))  # it expects OpenCV's BGR
        kept = []
        for _box, text, score in found or []:
            text = split_joined(text.strip())
            if float(score) >= self.min_confidence and sum(c.isalnum() for c in text) >= self.min_letters:
                kept.append(text)
        return " ".join(kept)

    def sentences(self, images: np.ndarray) -> list[str]:
        """Per image, the sentence to embed ("" when nothing was read)."""
        out = []
        for image in images:
            words = self.words(image)
            out.append(TEMPLATE.format(words=words) if words else "")
        return out


def split_joined(text: str) -> str:
    """The recogniser often drops spaces ("SportsCentre"): split at a lower-to-upper change."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)
