"""Experts: cheap extra ways for the ``default`` aligner to see an image.

The ImageNet classifier sees a photo only through its 1,000 classes; captions also say
what colour things are, whether there are people, whether it is night. Each expert reads
the image's pixels and answers with weights over a small, fixed list of phrases (its
*vocabulary*: "red", "two people", "a photo taken at night"). The aligner embeds every
phrase once with the same sentence encoder as the captions, so an expert's answer is a
vector in the caption space: ``weights @ phrase_embeddings``. ``conse.py`` adds these to
the class mixture with weights from ``CONFIG``.

Experts run on the aligner's own preprocessed input (the 224 px centre crop it already
decodes), turned back into uint8 RGB by :func:`to_uint8`, so nothing changes in the
loader or for other aligners. Each expert is a module with one class:

- ``colour.py``: basic colour terms from CIELAB statistics, black-and-white detection;
- ``people.py``: faces (OpenCV's Haar cascade) -> "a person", "two people", a portrait;
- ``scene.py``: night / dark, blue sky, sunset glow.

An expert has ``name``, ``vocabulary`` (phrases) and ``weights(images) -> (n, len(vocabulary))``,
where ``images`` is (n, H, W, 3) uint8 RGB.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Expert(Protocol):
    name: str
    vocabulary: tuple[str, ...]

    def weights(self, images: np.ndarray) -> np.ndarray: ...


def to_uint8(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Normalized (n, 3, H, W) float pixels -> (n, H, W, 3) uint8 RGB, undoing the transform's scaling."""
    mean_ = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    std_ = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    unit = np.asarray(pixels, np.float32) * std_ + mean_
    return np.ascontiguousarray((np.clip(unit, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1))


def build_experts(config: dict) -> list[Expert]:
    """The experts a recipe turns on (``config["experts"]``: name -> settings), in a fixed order."""
    from retrieval.aligners.experts.colour import ColourExpert
    from retrieval.aligners.experts.people import PeopleExpert
    from retrieval.aligners.experts.scene import SceneExpert

    kinds = {"colour": ColourExpert, "people": PeopleExpert, "scene": SceneExpert}
    chosen = config.get("experts") or {}
    return [kinds[name](**chosen[name].get("settings", {})) for name in kinds if name in chosen]
