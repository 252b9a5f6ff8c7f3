"""Colour names for an image, from pixel statistics in CIELAB (a perceptual space).

RGB thresholds name colours badly (a dark orange is brown, a light red is pink, and
greys have every hue). Each pixel goes to CIELAB and then to lightness, chroma and hue
(LCh); a pixel with little chroma is black, grey or white by its lightness, otherwise
its hue angle picks a basic colour term (Berlin and Kay's eleven), with lightness
splitting orange from brown and red from pink. The expert's weights are the share of
pixels of each colour over the whole image and over its centre (where the subject
usually is), keeping only colours that cover a fair part of it. A picture with almost
no chroma anywhere is called black and white.
"""

from __future__ import annotations

import numpy as np

COLOURS = ("black", "grey", "white", "red", "orange", "brown", "yellow", "green", "blue", "purple", "pink")
BLACK_AND_WHITE = "a black and white photo"

# Hue angles (degrees, CIELAB) where each chromatic term starts; sRGB's primaries sit
# at about red 40, yellow 103, green 136, blue 306, magenta 328; blue runs up to 312.
_HUE_STARTS = ((0, "pink"), (15, "red"), (50, "orange"), (80, "yellow"), (108, "green"), (195, "blue"), (312, "purple"), (345, "pink"))


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> (..., 3) float32 CIELAB (D65 white)."""
    c = rgb.astype(np.float32) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
        np.float32,
    )
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883], np.float32)
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def colour_indices(lab: np.ndarray, grey_chroma: float = 10.0) -> np.ndarray:
    """CIELAB pixels -> index into COLOURS for each pixel."""
    lightness, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    chroma = np.hypot(a, b)
    hue = np.degrees(np.arctan2(b, a)) % 360
    names = np.empty(lightness.shape, dtype=np.int64)
    starts = np.array([s for s, _ in _HUE_STARTS], np.float32)
    hue_terms = np.array([COLOURS.index(t) for _, t in _HUE_STARTS])
    names[:] = hue_terms[np.searchsorted(starts, hue, side="right") - 1]
    # Dark orange and dark yellow are brown; so is a dull dark red (not a deep crimson).
    orange_yellow = np.isin(names, [COLOURS.index("orange"), COLOURS.index("yellow")])
    dull_red = (names == COLOURS.index("red")) & (chroma < 35) & (lightness < 40)
    names[(orange_yellow & (lightness < 50)) | dull_red] = COLOURS.index("brown")
    reddish = names == COLOURS.index("red")
    names[reddish & (lightness > 70) & (chroma < 45)] = COLOURS.index("pink")
    pinkish = names == COLOURS.index("pink")
    names[pinkish & (lightness < 40)] = COLOURS.index("purple")
    achromatic = chroma < grey_chroma
    grey_level = np.where(lightness < 22, 0, np.where(lightness > 85, 2, 1))
    names[achromatic] = grey_level[achromatic]
    return names


class ColourExpert:
    name = "colour"
    vocabulary = (*COLOURS, BLACK_AND_WHITE)

    def __init__(self, min_share: float = 0.1, centre_share: float = 0.5, achromatic: float = 0.5, bw_chroma: float = 4.0):
        self.min_share = min_share  # a colour covering less than this is not named
        self.centre_share = centre_share  # how much the centre counts against the whole
        self.achromatic = achromatic  # black/grey/white are named less often than hues
        self.bw_chroma = bw_chroma  # mean chroma below this: a black and white picture

    def weights(self, images: np.ndarray) -> np.ndarray:
        out = np.zeros((len(images), len(self.vocabulary)), np.float32)
        for i, image in enumerate(images):
            small = image[::2, ::2]  # 112 px is plenty for colour statistics
            lab = srgb_to_lab(small)
            names = colour_indices(lab)
            h, w = names.shape
            centre = names[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
            share = (1 - self.centre_share) * _shares(names) + self.centre_share * _shares(centre)
            share[:3] *= self.achromatic
            share[share < self.min_share] = 0
            out[i, : len(COLOURS)] = share
            if float(np.hypot(lab[..., 1], lab[..., 2]).mean()) < self.bw_chroma:
                out[i, : len(COLOURS)] = 0  # the grey levels of a monochrome picture say little
                out[i, -1] = 1.0
        return out


def _shares(names: np.ndarray) -> np.ndarray:
    return np.bincount(names.ravel(), minlength=len(COLOURS)).astype(np.float32) / names.size
