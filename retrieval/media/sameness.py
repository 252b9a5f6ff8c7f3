"""A sameness descriptor: a 64-bit perceptual hash of a decoded picture, for near-duplicates.

An aligner's vector describes what a picture shows (two photos of one beach sit close), so it
cannot tell a copy from a second shot. This hash describes the picture itself: the signs of
the lowest 8 x 8 frequencies of a 32 x 32 grey thumbnail's cosine transform, each against
their median (the DCT "pHash"). Resizing, re-encoding, a re-save as PNG and a uniform change
of brightness leave those frequencies' order nearly as it was; a crop of a few percent moves
a few bits; a different picture, even of the same scene, differs in about half. Computed in
the decoding worker from the image it decoded anyway (retrieval/media/decode.py), so it costs
a 32 x 32 resize and two 32 x 32 matrix products per file, whatever the aligner.

Written here with numpy rather than taken from the ``imagehash`` package: the transform is
two matrix products, and imagehash would bring scipy and PyWavelets into the decoding
workers for it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Side of the grey thumbnail the transform runs on, and of the block of lowest frequencies kept.
THUMB = 32
BLOCK = 8
#: Pictures whose kept frequencies (other than the mean) are all this weak are flat (a blank
#: page, a black frame): their bits are noise, so they get no hash and never pair by it.
FLAT = 1.0


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


#: The orthonormal DCT-II basis (a constant, computed once at import).
_DCT = _dct_matrix(THUMB)[:BLOCK]


def perceptual_hash(image: Image.Image) -> int | None:
    """The picture's 64-bit hash as a signed integer (what SQLite's INTEGER holds), or None when flat."""
    grey = np.asarray(image.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX), np.float64)
    low = _DCT @ grey @ _DCT.T
    coefficients = low.ravel()
    ac = coefficients[1:]
    if np.abs(ac).max() < FLAT:
        return None
    bits = coefficients > np.median(ac)
    bits[0] = False  # the mean says only how bright the picture is
    value = int(np.packbits(bits).view(">u8")[0])
    return value - (1 << 64) if value >= 1 << 63 else value


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits differing between two arrays of hashes (int64, as stored)."""
    return np.bitwise_count(np.bitwise_xor(a.astype(np.int64), b.astype(np.int64)).view(np.uint64)).astype(np.int64)
