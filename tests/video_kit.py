"""Real video files for the tests, written with PyAV: each scene a real photo (scikit-image's), slowly panned.

A caption of one scene's photo should find the video at a time inside that scene; the pan
makes every frame differ from the one before, as in a filmed shot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from conftest import skimage_photo
from PIL import Image, ImageOps

#: Codec, container suffix and encoder options: fast settings, the files are small.
CODECS = {
    "vp9": ("libvpx-vp9", ".webm", {"deadline": "realtime", "cpu-used": "8", "crf": "40", "b": "0"}),
    "h264": ("libx264", ".mp4", {"preset": "ultrafast", "crf": "28"}),
}


def make_video(path: Path, photos: Sequence[str], scene_seconds: float = 4.0, size: tuple[int, int] = (320, 240),
               fps: int = 10, codec: str = "vp9", keyframe_seconds: float = 1.0) -> Path:
    """A video of one scene per photo (scikit-image names, or paths), `scene_seconds` each, in
    `path` (whose suffix should match the codec: .webm for vp9, .mp4 for h264)."""
    import av

    name, _, options = CODECS[codec]
    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    per_scene = max(1, round(scene_seconds * fps))
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(name, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = max(1, round(keyframe_seconds * fps))
        for photo in photos:
            source = Path(photo) if "/" in str(photo) else skimage_photo(str(photo))
            with Image.open(source) as opened:
                canvas = np.asarray(ImageOps.fit(opened.convert("RGB"), (round(width * 1.1), round(height * 1.1))))
            spare_x, spare_y = canvas.shape[1] - width, canvas.shape[0] - height
            for i in range(per_scene):
                x = round(spare_x * i / max(1, per_scene - 1))
                view = np.ascontiguousarray(canvas[spare_y // 2 : spare_y // 2 + height, x : x + width])
                container.mux(stream.encode(av.VideoFrame.from_ndarray(view, format="rgb24")))
        container.mux(stream.encode())
    return path
