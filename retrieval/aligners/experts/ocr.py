"""Words written in an image (signs, labels, covers), read by RapidOCR.

RapidOCR 3 (PyPI ``rapidocr``) ships PP-OCRv6's small text detector and recogniser inside its
wheel and runs them on onnxruntime; nothing is downloaded (the model files are named
explicitly below, so a missing file is an error here rather than a download attempt). It
reads the aligner's own 224 px crop *at that size*: RapidOCR's default first scales the
short side up to 736 px, which made reading an order of magnitude slower and found words in
only a few more dev-set photos (docs/default-aligner.md#words-join-default-2026-12-02-afternoon).
The angle classifier is off: words in
photos are upright, and it changed nothing on the dev set. The words it is sure of become
one short sentence, embedded by the caption encoder like any caption, so a query for the
words on a sign finds the sign.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

import numpy as np

from retrieval.errors import ModelError

log = logging.getLogger(__name__)

TEMPLATE = "a sign that says {words}"
# The reader a recipe names; another reader (or another model file) is another recipe.
READER = "rapidocr-3/PP-OCRv6-small"
_MODEL_FILES = {"Det": "PP-OCRv6_det_small.onnx", "Rec": "PP-OCRv6_rec_small.onnx"}


class OcrExpert:
    name = "ocr"

    def __init__(self, reader: str = READER, side: int = 224, line_width: int = 320, max_length: float | None = None,
                 min_confidence: float = 0.8, min_letters: int = 3):
        if reader != READER:
            raise ModelError(f"this recipe reads words with {reader!r}; this version of retrieval has {READER!r}")
        self.side = side  # longest side the detector sees; larger pictures are scaled down to it
        # The recogniser pads every line to at least this width (at 48 px high). RapidOCR's 320
        # makes a short word cost as much as a long line; 96 read the same words on the dev set
        # (a few punctuation marks differ) in about two thirds of the time.
        self.line_width = line_width
        # The recogniser's cost grows with the length of the lines it reads (their width over
        # their height). Lines are read largest first until their lengths add up to `max_length`:
        # a sign's five short lines (about 15) are all read, a page of small print stops after
        # two or three of its longest lines instead of costing a pass a line.
        self.max_length = max_length
        self.min_confidence = min_confidence  # recogniser score below which a word is dropped
        self.min_letters = min_letters  # shorter reads are mostly noise ("0", "F")
        self._engine = None

    @property
    def engine(self):
        if self._engine is None:
            self._engine = _load_engine(self.side, self.line_width)
        return self._engine

    def words(self, image: np.ndarray) -> str:
        """The words read in one (H, W, 3) uint8 RGB image, in reading order; "" when none."""
        engine, bgr = self.engine, np.ascontiguousarray(image[..., ::-1])  # it expects OpenCV's BGR
        try:
            return self._read(engine, bgr)
        except Exception as exc:  # noqa: BLE001 - a picture the reader chokes on has no words it can give
            log.warning("could not read the words in a picture (%s: %s); it is indexed without them",
                        type(exc).__name__, exc)
            return ""

    def _read(self, engine, bgr: np.ndarray) -> str:
        # The steps are called one by one (RapidOCR's own pipeline would read every line found).
        found = engine(bgr, use_det=True, use_cls=False, use_rec=False)
        if found.boxes is None or not len(found.boxes):
            return ""
        boxes = np.asarray(found.boxes, np.float32)  # (lines, 4 corners, xy), in reading order
        if self.max_length is not None:
            width = np.linalg.norm(boxes[:, 0] - boxes[:, 1], axis=1)
            height = np.maximum(np.linalg.norm(boxes[:, 0] - boxes[:, 3], axis=1), 1.0)
            order = np.argsort(-(width * height), kind="stable")
            used = np.cumsum((width / height)[order])
            chosen = order[: max(1, int(np.searchsorted(used, self.max_length, side="right")))]
            boxes = boxes[np.sort(chosen)]  # back in reading order
        read = engine.recognize_txt(engine.crop_text_regions(bgr, boxes))
        kept = []
        for text, score in zip(read.txts or (), read.scores or ()):
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


def _load_engine(side: int, line_width: int):
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or spec.origin is None or importlib.util.find_spec("onnxruntime") is None:
        raise ModelError("the default aligner reads words with RapidOCR: pip install 'rapidocr>=3.10,<3.11' onnxruntime "
                         "(bash scripts/setup.sh installs both)")
    models = Path(spec.origin).parent / "models"
    paths = {part: models / name for part, name in _MODEL_FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise ModelError(f"RapidOCR's wheel lacks {', '.join(missing)} (the default aligner needs rapidocr 3.10's "
                         "packaged PP-OCRv6 models): pip install 'rapidocr>=3.10,<3.11'")
    from rapidocr import RapidOCR

    engine = RapidOCR(params={
        "Global.use_cls": False,
        "Global.log_level": "error",  # it warns on every picture without text
        "Det.limit_type": "max",
        "Det.limit_side_len": side,
        "Det.model_path": str(paths["Det"]),
        "Rec.model_path": str(paths["Rec"]),
        "Rec.rec_img_shape": [3, 48, line_width],
        # One thread: on pictures this small a second one saves no time and doubles the CPU
        # taken from the classifier, which runs beside the reader (conse.encode_images).
        "EngineConfig.onnxruntime.intra_op_num_threads": 1,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
    })
    return engine


def split_joined(text: str) -> str:
    """The recogniser often drops spaces ("SportsCentre"): split at a lower-to-upper change."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)
