"""Image preprocessing as a small picklable object, so loader worker processes can run it.

It reproduces open_clip's default eval transform (resize the shortest side with
bicubic filtering, centre crop, scale to [0, 1], normalize) with Pillow and numpy
only: workers never import torch. ``tests/test_transform.py`` checks that it matches
open_clip's own transform pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class ImageTransform:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __call__(self, image: Image.Image) -> np.ndarray:
        """PIL image -> float32 array of shape (3, size, size)."""
        image = image.convert("RGB")
        w, h = image.size
        scale = self.size / min(w, h)
        # Same rounding as torchvision's Resize(int): the short side becomes exactly size.
        if w <= h:
            new = (self.size, int(self.size * h / w))
        else:
            new = (int(self.size * w / h), self.size)
        if scale != 1 or new != (w, h):
            image = image.resize(new, _FILTERS[self.interpolation])
        w, h = image.size
        left = int(round((w - self.size) / 2.0))
        top = int(round((h - self.size) / 2.0))
        image = image.crop((left, top, left + self.size, top + self.size))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))
