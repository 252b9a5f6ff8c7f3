"""The aligner interface the rest of the engine sees.

An aligner turns images and texts into L2-normalized float32 vectors in one space.
Only numpy arrays cross this boundary; tensors stay inside the aligner modules.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

from retrieval.media.transform import ImageTransform


class Aligner(Protocol):
    """What the rest of the engine needs from an aligner: who it is and how it embeds.

    A protocol rather than a base class so that anything with these members (a test double,
    a wrapper) can stand in; the aligners of this package share :class:`AlignerBase`'s helpers.
    """

    #: How to load this aligner again (``default``, ``open_clip:ARCH/TAG``, a checkpoint path).
    spec: str
    #: What the aligner *is*: equal identities produce equal vectors. Indexes store it and
    #: refuse to mix vectors from different identities.
    identity: str
    dim: int
    #: Picklable image preprocessing, run in loader workers (PIL image -> (3, H, W) float32).
    transform: ImageTransform

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) preprocessed pixels -> (n, dim) normalized float32."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """n texts -> (n, dim) normalized float32."""
        ...


class AlignerBase(ABC):
    """The helpers this package's aligners share; each one satisfies :class:`Aligner`."""

    spec: str
    identity: str
    dim: int
    transform: ImageTransform

    @abstractmethod
    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) preprocessed pixels -> (n, dim) normalized float32."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """n texts -> (n, dim) normalized float32."""

    def encode_pil(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Convenience: preprocess and encode PIL images."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_images(np.stack([self.transform(im) for im in images]))

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "identity": self.identity, "dim": self.dim}


def normalize(vectors: np.ndarray) -> np.ndarray:
    """The one place vectors are L2-normalized outside the torch code."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
