"""Lighting and scene cues from simple pixel statistics: night, blue sky, sunset glow.

- Night or a dark room: most of the picture is dark (CIELAB lightness), scaled so a
  picture gets more of the phrase the darker it is.
- Blue sky: the top band of the picture is mostly light, smooth and blue; a strong
  outdoor cue that ImageNet's classes rarely carry.
- Sunset: the top half glows orange, red or pink over darker ground.
"""

from __future__ import annotations

import numpy as np

from retrieval.aligners.experts.colour import srgb_to_lab

PHRASES = ("a dark photo taken at night", "outdoors under a blue sky", "a sunset sky")


class SceneExpert:
    name = "scene"
    vocabulary = PHRASES

    def __init__(self, dark_lightness: float = 30.0, sky_share: float = 0.4, glow_share: float = 0.3):
        self.dark_lightness = dark_lightness  # mean lightness under which a picture counts as dark
        self.sky_share = sky_share  # share of the top band that must look like sky
        self.glow_share = glow_share  # share of the top half that must be warm and lit

    def weights(self, images: np.ndarray) -> np.ndarray:
        out = np.zeros((len(images), len(PHRASES)), np.float32)
        for i, image in enumerate(images):
            lab = srgb_to_lab(image[::2, ::2])
            lightness, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
            hue = np.degrees(np.arctan2(b, a)) % 360
            chroma = np.hypot(a, b)
            mean_l = float(np.median(lightness))
            if mean_l < self.dark_lightness:
                out[i, 0] = min(1.0, (self.dark_lightness - mean_l) / (self.dark_lightness / 2))
            top = slice(0, lightness.shape[0] // 4)
            smooth = np.abs(np.diff(lightness[top], axis=1, append=lightness[top][:, -1:])) < 2.5
            sky = (hue[top] > 200) & (hue[top] < 290) & (chroma[top] > 12) & (lightness[top] > 45) & smooth
            if sky.mean() > self.sky_share:
                out[i, 1] = float(sky.mean())
            upper = slice(0, lightness.shape[0] // 2)
            warm = ((hue[upper] < 75) | (hue[upper] > 330)) & (chroma[upper] > 25) & (lightness[upper] > 35)
            lower_l = float(np.median(lightness[lightness.shape[0] // 2 :]))
            if warm.mean() > self.glow_share and lower_l < np.median(lightness[upper]):
                out[i, 2] = float(warm.mean())
        return out
