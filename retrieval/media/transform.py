"""Image preprocessing as a small picklable object, so loader worker processes can run it.

It reproduces open_clip's eval transform (resize, centre crop, scale to [0, 1],
normalize) with Pillow and numpy only: workers never import torch.
``tests/test_transform.py`` checks that it matches open_clip's own transform.

Two resize modes, named as open_clip names them: ``shortest`` (the short side becomes
``size / crop_pct``, then a centre crop of ``size``; crop_pct < 1 is timm's classifier
convention, 0.875 for ImageNet models) and ``squash`` (the whole image resized to a
square, aspect ratio not kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
RESIZE_MODES = ("shortest", "squash")


@dataclass(frozen=True)
class ImageTransform:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    crop_pct: float = 1.0

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, not {self.resize_mode!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], not {self.crop_pct}")

    @property
    def resize_to(self) -> int:
        """The short side before cropping; what JPEG draft decoding must keep at least."""
        return self.size if self.crop_pct == 1 else math.floor(self.size / self.crop_pct)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """PIL image -> float32 array of shape (3, size, size)."""
        image = image.convert("RGB")
        if self.resize_mode == "squash":
            image = self._resize(image, (self.size, self.size))
        else:
            image = self._centre_crop(self._resize(image, self._shortest(image.size)))
        scaled = np.asarray(image, dtype=np.float32) / np.float32(255.0)
        pixels = (scaled - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def _shortest(self, size: tuple[int, int]) -> tuple[int, int]:
        # Same rounding as torchvision's Resize(int): the short side becomes exactly resize_to.
        w, h, short = size[0], size[1], self.resize_to
        return (short, int(short * h / w)) if w <= h else (int(short * w / h), short)

    def _resize(self, image: Image.Image, new: tuple[int, int]) -> Image.Image:
        return image if image.size == new else image.resize(new, _FILTERS[self.interpolation])

    def _centre_crop(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        left = int(round((w - self.size) / 2.0))
        top = int(round((h - self.size) / 2.0))
        return image.crop((left, top, left + self.size, top + self.size))
