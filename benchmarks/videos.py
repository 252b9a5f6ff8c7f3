"""Videos made of real photos, for the video benchmarks: each photo a scene, slowly panned.

No package these machines can install carries a long 1080p phone video, so the benchmarks
write their own with PyAV (whose wheels carry libx264 and libvpx): every scene is one real
photo (the dev set's, retrieval/evaluation/devset.py) scaled to cover the frame with some
margin, and the camera pans across that margin for the length of the scene, so every frame
differs from the one before and the encoder does real motion work, as on a hand-held shot.
Keyframes come every ``gop`` frames, as a phone writes them (every second or two), and no
more often: no keyframe is added at a cut, so a sampler cannot count on finding cuts there.

A video is written once and reused while its recipe is the same: the recipe is hashed into
the file name under ``bench-out/videos/``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

CACHE = Path("bench-out") / "videos"


@dataclass(frozen=True)
class Recipe:
    """What a generated video is: its scenes (photo paths) and how it is encoded."""

    photos: tuple[str, ...]
    scene_seconds: float = 10.0
    width: int = 1920
    height: int = 1080
    fps: int = 30
    #: Frames between keyframes.
    gop: int = 30
    codec: str = "libx264"
    #: Encoder options (x264's preset and constant-quality factor, or libvpx's).
    options: tuple[tuple[str, str], ...] = (("preset", "superfast"), ("crf", "14"))
    #: Share of the frame the camera travels across a scene (the photo is scaled this much larger).
    pan: float = 0.12
    #: Seconds of each scene, when they differ (else `scene_seconds` each).
    durations: tuple[float, ...] | None = None

    @property
    def suffix(self) -> str:
        return ".webm" if "vpx" in self.codec else ".mp4"

    def key(self) -> str:
        given = {k: v for k, v in asdict(self).items() if v is not None}  # a new field, unset, keeps old names
        return hashlib.blake2b(json.dumps(given, sort_keys=True).encode(), digest_size=6).hexdigest()

    def frames(self) -> list[int]:
        """Frames of each scene."""
        seconds = self.durations or (self.scene_seconds,) * len(self.photos)
        return [max(1, round(s * self.fps)) for s in seconds]

    def scenes(self) -> list[tuple[float, float]]:
        """(start, end) seconds of each scene, as the frames fall."""
        bounds = [0, *np.cumsum(self.frames()).tolist()]  # frame numbers: a scene ends where the next starts
        return [(bounds[i] / self.fps, bounds[i + 1] / self.fps) for i in range(len(bounds) - 1)]

    @property
    def seconds(self) -> float:
        return sum(self.frames()) / self.fps


def cached(recipe: Recipe, name: str, folder: Path = CACHE) -> Path:
    """The video of `recipe`, written now unless an earlier run wrote it (under `folder`)."""
    path = folder / f"{name}-{recipe.key()}{recipe.suffix}"
    if not path.is_file():
        write(recipe, path)
    return path


def write(recipe: Recipe, path: Path) -> Path:
    """Encode `recipe` into `path` (written under a temporary name, then moved into place)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial{recipe.suffix}")
    with av.open(str(partial), mode="w") as container:
        stream = container.add_stream(recipe.codec, rate=recipe.fps, options=dict(recipe.options))
        stream.width, stream.height = recipe.width, recipe.height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = recipe.gop
        if recipe.codec == "libx264":  # no keyframe added at a cut: only the fixed interval
            stream.codec_context.options = {**dict(recipe.options), "sc_threshold": "0"}
        for number, (photo, per_scene) in enumerate(zip(recipe.photos, recipe.frames())):
            canvas = _canvas(photo, recipe)
            for i in range(per_scene):
                frame = av.VideoFrame.from_ndarray(_view(canvas, recipe, i / max(1, per_scene - 1), number), format="rgb24")
                container.mux(stream.encode(frame))
        container.mux(stream.encode())
    os.replace(partial, path)
    return path


def _canvas(photo: str, recipe: Recipe) -> np.ndarray:
    """The photo, upright, scaled to cover the frame plus the pan margin, cropped to that."""
    with Image.open(photo) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    size = (round(recipe.width * (1 + recipe.pan)), round(recipe.height * (1 + recipe.pan)))
    return np.asarray(ImageOps.fit(image, size, Image.Resampling.BILINEAR))


#: Where the camera starts and ends in a scene, as shares of the margin: (x from, x to, y from, y to).
_PANS = ((0.0, 1.0, 0.5, 0.5), (1.0, 0.0, 0.0, 1.0), (0.5, 0.5, 1.0, 0.0), (0.0, 1.0, 0.0, 1.0))


def _view(canvas: np.ndarray, recipe: Recipe, progress: float, scene: int) -> np.ndarray:
    """The frame `progress` (0 to 1) through a scene: a window moving across the canvas, in a
    direction that changes from scene to scene."""
    spare_y, spare_x = canvas.shape[0] - recipe.height, canvas.shape[1] - recipe.width
    x0, x1, y0, y1 = _PANS[scene % len(_PANS)]
    x = round(spare_x * (x0 + (x1 - x0) * progress))
    y = round(spare_y * (y0 + (y1 - y0) * progress))
    return np.ascontiguousarray(canvas[y : y + recipe.height, x : x + recipe.width])


def dev_photos(split: str = "all", largest: int | None = None, min_side: int = 0) -> list[str]:
    """The dev set's photos (v2), each once, in the set's order; `largest`: only the N with most pixels."""
    from retrieval.evaluation import devset

    pairs, _ = devset.load_pairs(captions=devset.SETS["v2"], split=split)
    photos = list(dict.fromkeys(image for image, _ in pairs))
    if min_side or largest:
        sizes = {p: Image.open(p).size for p in photos}
        photos = [p for p in photos if min(sizes[p]) >= min_side]
        if largest:
            photos = sorted(photos, key=lambda p: -sizes[p][0] * sizes[p][1])[:largest]
    return photos


def describe(path: Path, recipe: Recipe) -> dict:
    """What a reader needs to know about a generated video: size, length, bit rate, encoding."""
    seconds = recipe.seconds
    size = path.stat().st_size
    return {"path": str(path), "bytes": size, "seconds": seconds, "mbit_s": round(size * 8 / seconds / 1e6, 2),
            "width": recipe.width, "height": recipe.height, "fps": recipe.fps, "keyframe_every_s": recipe.gop / recipe.fps,
            "codec": recipe.codec, "options": dict(recipe.options), "scenes": len(recipe.photos)}


def scene_photos(photos: Sequence[str], count: int) -> tuple[str, ...]:
    """`count` photos, cycling through `photos` when there are fewer."""
    return tuple(photos[i % len(photos)] for i in range(count))
