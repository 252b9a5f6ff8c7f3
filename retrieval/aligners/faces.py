"""Faces in a picture, offline: found and aligned with dlib (the only module importing dlib), and
embedded by dlib's ResNet model run without dlib (:mod:`retrieval.aligners.face_resnet`).

The weights are the files of PyPI's ``face-recognition-models`` (CC0, see docs/people.md):
dlib's 5-point landmark model and its ResNet face-recognition model (128-d descriptors, two
faces of one person lie within about 0.6 of each other), plus the MMOD CNN detector when
asked for. Its 68-point model is never loaded: its training data is for non-commercial use.

Every photo is looked at by dlib's HOG detector on a grey copy whose long side is ``detect_side``
(640 px), and a photo without faces costs nothing more: the landmark and descriptor models
load and run only for a face found. OpenCV's Haar cascade as a cheaper gate and dlib's MMOD
CNN were measured and not chosen (docs/people.md has the figures: the gate cost more than
HOG and missed turned faces; the CNN found nothing more at many times the cost). Each face
kept is aligned by its 5 landmarks (``dlib.get_face_chip``, on the picture given), and a photo's
chips are embedded in one batch. The ResNet does not run in dlib: the ``dlib-bin`` wheel is built
without BLAS, and its descriptor cost about 76 ms of CPU a face, most of what faces added to
indexing. The same network read from dlib's file gives the same descriptors (within float
rounding) several times faster as numpy matrix products, the default, or in torch, which a
decoding worker would first have to import (docs/people.md). dlib's own descriptor and torch's
stay settings (``FaceSettings.descriptor``) so that a benchmark compares them in one run.
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from retrieval.errors import ModelError

log = logging.getLogger(__name__)

#: Length of a face descriptor.
FACE_DIM = 128
#: Side of the aligned face chip the ResNet model takes, and the share of margin around the
#: landmarks: dlib's own values (what compute_face_descriptor uses when handed a whole image).
CHIP_SIZE = 150
CHIP_PADDING = 0.25


@dataclass(frozen=True)
class Face:
    """One face: its box (x, y, w, h) in the pixels of the picture given, the detector's score,
    and dlib's 128-d descriptor of the aligned face (float32; not normalized: dlib's distances
    are Euclidean on these as they are)."""

    box: tuple[int, int, int, int]
    score: float
    embedding: np.ndarray


#: What runs dlib's ResNet on an aligned chip for its 128-d descriptor: numpy, torch or dlib.
DESCRIPTORS = ("numpy", "torch", "dlib")


@dataclass(frozen=True)
class FaceSettings:
    """How faces are looked for; the defaults are the ones measured in docs/people.md."""

    #: "hog" (dlib's HOG + linear SVM) or "cnn" (dlib's MMOD CNN: far costlier on CPU, docs/people.md).
    detector: str = "hog"
    #: Long side of the copy the detector scans. HOG's window is 80 px, so faces under about
    #: 80/640 of the long side are not found; a larger copy finds smaller ones at a square cost.
    detect_side: int = 640
    #: Detector upsamplings (each doubles the copy's sides, four times the cost).
    upsample: int = 0
    #: HOG scans a grey copy: one gradient channel instead of three (dlib keeps the strongest of
    #: an RGB picture's), cheaper at the same recall on the labelled set (docs/people.md).
    grey: bool = True
    #: Faces smaller than this share of the picture's long side are left out: too few pixels
    #: to tell people apart.
    min_face: float = 0.04
    #: At most this many faces per photo are embedded, largest first (a crowd, a stadium).
    max_faces: int = 50
    #: While indexing, faces are looked for in the picture decoded for the image model; a JPEG
    #: draft-decoded so small that its long side is under this is enlarged to it (bilinear) for
    #: them: HOG's 80 px window then finds faces down to a sixth of the long side. It finds what
    #: a second, larger decode found on the labelled set, for a resize instead of a decode
    #: (docs/people.md). 0: never.
    enlarge_below: int = 480
    #: The same case decoded again, larger, instead (0: never; before enlarging, which it
    #: replaces when set: sharper pixels, at the cost of a second decode, docs/people.md).
    redecode_below: int = 0
    #: HOG's detection score below which a find is dropped (dlib's own cut is 0): between the
    #: false faces and the real ones, half-turned included, of the photos in docs/people.md.
    #: None: 0.15 on a grey copy, 0.3 on RGB (scores are lower on grey, false and real alike).
    min_score: float | None = None
    #: What runs dlib's ResNet: "numpy" (retrieval.aligners.face_resnet), "torch" (as cheap a face,
    #: but a decoding worker imports torch first: over a second of CPU) or "dlib" (the same
    #: descriptors at several times the CPU). Figures in docs/people.md.
    descriptor: str = "numpy"

    @property
    def score_cut(self) -> float:
        """:attr:`min_score`, or the cut measured for the picture HOG scans."""
        if self.min_score is not None:
            return self.min_score
        return 0.15 if self.grey else 0.3

    @property
    def name(self) -> str:
        """What face_scans.detector records: a change of detector is visible per scanned content
        (HOG's scores are lower on a grey copy, so which one looked is kept too)."""
        grey = "-grey" if self.grey and self.detector == "hog" else ""
        return f"{self.detector}@{self.detect_side}{grey}"


def models_folder() -> Path:
    """The folder of face-recognition-models' weight files, found without importing the package
    (its ``__init__`` imports pkg_resources, which recent setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("faces need face-recognition-models: pip install face-recognition-models dlib-bin")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class FaceFinder:
    """Finds, aligns and embeds the faces of EXIF-rotated RGB pictures.

    Picklable, so one object can be handed to worker processes like a transform: with its HOG
    detector when loaded (dlib builds it from its source in about 0.24 s of CPU, and unpickles
    it in about 2 ms: each decoding worker of each index run would pay the former), without
    its other models (a worker loads them on first use).
    """

    def __init__(self, settings: FaceSettings | None = None):
        self.settings = settings or FaceSettings()
        if self.settings.detector not in ("hog", "cnn"):
            raise ModelError(f"unknown face detector {self.settings.detector!r}: hog or cnn")
        if self.settings.descriptor not in DESCRIPTORS:
            raise ModelError(f"unknown face descriptor {self.settings.descriptor!r}: {' or '.join(DESCRIPTORS)}")
        self._models: dict[str, Any] = {}

    def __getstate__(self) -> dict:
        return {"settings": self.settings, "_models": {k: v for k, v in self._models.items() if k == "hog"}}

    def __call__(self, image: Image.Image) -> list[Face]:
        """:meth:`find`: a finder is handed to decoding workers as the function they call."""
        return self.find(image)

    @property
    def redecode_below(self) -> int:
        """See :attr:`FaceSettings.redecode_below` (retrieval.media.decode reads it)."""
        return self.settings.redecode_below

    @property
    def enlarge_below(self) -> int:
        """See :attr:`FaceSettings.enlarge_below` (retrieval.media.decode reads it)."""
        return self.settings.enlarge_below

    @property
    def draft_side(self) -> int:
        """The short side a draft JPEG decode must keep so that a 4:3 photo's long side still
        reaches ``detect_side`` (retrieval.media.decode reads it)."""
        return self.settings.detect_side * 3 // 4

    # -- models --------------------------------------------------------------
    def _model(self, name: str) -> Any:
        if name not in self._models:
            self._models[name] = self._load(name)
        return self._models[name]

    def _load(self, name: str) -> Any:
        if name == "resnet" and self.settings.descriptor != "dlib":
            return _resnet(self.settings.descriptor)
        try:
            import dlib
        except ImportError as exc:
            raise ModelError("faces need dlib: pip install dlib-bin face-recognition-models") from exc
        if name == "hog":
            return dlib.get_frontal_face_detector()
        files = {
            "cnn": "mmod_human_face_detector.dat",
            "landmarks": "shape_predictor_5_face_landmarks.dat",
            "resnet": "dlib_face_recognition_resnet_model_v1.dat",
        }
        path = models_folder() / files[name]
        if not path.is_file():
            raise ModelError(f"{path} is missing: reinstall face-recognition-models")
        loader = {"cnn": dlib.cnn_face_detection_model_v1, "landmarks": dlib.shape_predictor,
                  "resnet": dlib.face_recognition_model_v1}[name]
        return loader(str(path))

    def prepare(self) -> FaceFinder:
        """Import dlib and load the detector (milliseconds) before the first photo, so that no
        photo's decoding time limit pays for it; the face models load on the first face found."""
        self._model("cnn" if self.settings.detector == "cnn" else "hog")
        return self

    def load(self) -> FaceFinder:
        """Load every model now (else on first use), so a failure to load is seen at once."""
        for name in ("landmarks", "resnet", "cnn" if self.settings.detector == "cnn" else "hog"):
            self._model(name)
        return self

    # -- finding -------------------------------------------------------------
    def find(self, image: Image.Image) -> list[Face]:
        """The faces of `image` (already EXIF-rotated), largest first, at most ``max_faces``."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        boxes = self.detect(image)
        if not boxes:
            return []
        return self.embed(image, boxes)

    def detect(self, image: Image.Image) -> list[tuple[tuple[int, int, int, int], float]]:
        """(box, score) of each face in `image`'s pixels, largest first, small ones left out."""
        s = self.settings
        long_side = max(image.size)
        scale = min(1.0, s.detect_side / long_side)
        small = _resized(image, scale)
        pixels = np.asarray(small.convert("L") if s.grey and s.detector == "hog" else small)
        if s.detector == "cnn":
            found_cnn = self._model("cnn")(pixels, s.upsample)
            rects = [(d.rect, float(d.confidence)) for d in found_cnn]
        else:
            dets, scores, _ = self._model("hog").run(pixels, s.upsample, s.score_cut)
            rects = list(zip(dets, (float(x) for x in scores)))
        out = []
        for rect, score in rects:
            x0, y0 = max(0, rect.left()), max(0, rect.top())
            x1, y1 = min(small.width, rect.right() + 1), min(small.height, rect.bottom() + 1)
            box = (round(x0 / scale), round(y0 / scale), round((x1 - x0) / scale), round((y1 - y0) / scale))
            if min(box[2], box[3]) >= s.min_face * long_side:
                out.append((box, score))
        out.sort(key=lambda item: -item[0][2] * item[0][3])
        return out[: s.max_faces]

    def embed(self, image: Image.Image, boxes: list[tuple[tuple[int, int, int, int], float]]) -> list[Face]:
        """Align each box's face by its 5 landmarks on the full picture and embed the chips."""
        descriptors = self.describe(self.chips(image, boxes))
        return [Face(box=box, score=score, embedding=d) for (box, score), d in zip(boxes, descriptors)]

    def chips(self, image: Image.Image, boxes: list[tuple[tuple[int, int, int, int], float]]) -> list[np.ndarray]:
        """Each box's face aligned by its 5 landmarks: a CHIP_SIZE-square uint8 RGB array (dlib's)."""
        import dlib

        pixels = np.asarray(image)
        landmarks = self._model("landmarks")
        chips = []
        for (x, y, w, h), _ in boxes:
            shape = landmarks(pixels, dlib.rectangle(x, y, x + w - 1, y + h - 1))
            chips.append(dlib.get_face_chip(pixels, shape, size=CHIP_SIZE, padding=CHIP_PADDING))
        return chips

    def describe(self, chips: list[np.ndarray]) -> np.ndarray:
        """(len(chips), FACE_DIM) float32 descriptors of aligned chips, all in one batch."""
        if not chips:
            return np.zeros((0, FACE_DIM), np.float32)
        resnet = self._model("resnet")
        if self.settings.descriptor != "dlib":
            return resnet.describe(chips)
        return np.asarray([np.asarray(d) for d in resnet.compute_face_descriptor(chips)], dtype=np.float32).reshape(-1, FACE_DIM)


def _resnet(descriptor: str) -> Any:
    """dlib's ResNet read from its file, in numpy (its products on one BLAS thread) or in torch.
    torch runs on one thread in a decoding worker (a child process: the pool has one per core,
    each doing its work on one thread, as dlib did), else on the threads this process's torch
    has (the aligner's choice)."""
    path = models_folder() / "dlib_face_recognition_resnet_model_v1.dat"
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall face-recognition-models")
    if descriptor == "numpy":
        from retrieval.aligners.face_resnet import load_face_resnet

        return load_face_resnet(path)
    import torch

    from retrieval.aligners.face_resnet_torch import load_torch_face_resnet

    if multiprocessing.parent_process() is not None:
        torch.set_num_threads(1)
    return load_torch_face_resnet(path)


def _resized(image: Image.Image, scale: float) -> Image.Image:
    if scale >= 1.0:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # reducing_gap: a box reduction first, then a short resample: fast on large photos.
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
