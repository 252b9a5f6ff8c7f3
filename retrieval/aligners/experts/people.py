"""People in an image, from OpenCV's Haar face cascade (shipped in opencv-python-headless 4.x).

Captions mention people first ("a woman", "two men", "a portrait"), and ImageNet has no
person class, so the classifier alone cannot say so. A frontal-face cascade is cheap
and ships with the OpenCV wheel (``cv2/data``); its count of faces and the size of the
largest one give a phrase: one small face is "a person", two are "two people", more are
"a group of people", and a face filling a good part of the picture is a portrait.
A face cascade misses people seen from behind or far away: it is a cue, not a census.
"""

from __future__ import annotations

import numpy as np

from retrieval.errors import ModelError

PHRASES = ("a person", "two people", "a group of people", "a close-up portrait of a person's face")


class PeopleExpert:
    name = "people"
    vocabulary = PHRASES

    def __init__(self, scale: float = 1.2, neighbours: int = 6, min_face: int = 20, portrait_area: float = 0.06):
        self.scale = scale
        self.neighbours = neighbours  # more: fewer false faces in foliage and textures
        self.min_face = min_face  # pixels, on the 224 px crop
        self.portrait_area = portrait_area  # share of the picture the largest face must cover
        self._cascade = None

    @property
    def cascade(self):
        if self._cascade is None:
            self._cascade = load_cascade("haarcascade_frontalface_default.xml")
        return self._cascade

    def faces(self, image: np.ndarray) -> np.ndarray:
        """(k, 4) x, y, w, h boxes of the faces in an (H, W, 3) uint8 RGB image."""
        import cv2

        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        found = self.cascade.detectMultiScale(
            grey, scaleFactor=self.scale, minNeighbors=self.neighbours, minSize=(self.min_face, self.min_face)
        )
        return np.asarray(found, np.int64).reshape(-1, 4)

    def weights(self, images: np.ndarray) -> np.ndarray:
        out = np.zeros((len(images), len(PHRASES)), np.float32)
        for i, image in enumerate(images):
            boxes = self.faces(image)
            if len(boxes) == 0:
                continue
            out[i, min(len(boxes), 3) - 1] = 1.0
            largest = float((boxes[:, 2] * boxes[:, 3]).max()) / (image.shape[0] * image.shape[1])
            if len(boxes) <= 2 and largest >= self.portrait_area:
                out[i, 3] = 1.0
        return out


def load_cascade(name: str):
    """One of the Haar cascades in the OpenCV wheel's data folder."""
    try:
        import cv2
    except ImportError as exc:
        raise ModelError("the default aligner needs OpenCV: pip install 'opencv-python-headless<5'") from exc
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    cascade = cv2.CascadeClassifier(str(folder) + name) if folder else None
    if cascade is None or cascade.empty():
        raise ModelError(
            f"OpenCV {cv2.__version__} has no {name} (the 5.x wheels dropped the Haar cascades): "
            "pip install 'opencv-python-headless<5'"
        )
    return cascade
