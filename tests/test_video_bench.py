"""The video benchmarks' ground truth: the scenes benchmarks/moments.py scores against are where
the generated video really shows each photo, and each photo is one scene of one video."""

from __future__ import annotations

import numpy as np
from conftest import skimage_photo
from PIL import Image, ImageOps

from benchmarks import moments, videos
from retrieval.media.video import frame_at, probe

PHOTOS = [str(skimage_photo(name)) for name in ("coffee.png", "chelsea.png", "rocket.jpg", "astronaut.png")]


def test_plan_uses_each_photo_once_in_videos_of_three_to_five_scenes():
    names = [f"/photos/{i:03d}.jpg" for i in range(40)]
    recipes = moments.plan(names, None, seed=3)
    used = [p for r in recipes for p in r.photos]
    assert len(used) == len(set(used)) and len(used) > 35
    assert all(3 <= len(r.photos) <= 5 for r in recipes)
    assert all(moments.SECONDS[0] <= d <= moments.SECONDS[1] for r in recipes for d in r.durations or ())
    assert moments.plan(names, None, seed=3) == recipes  # the same seed, the same videos (and cache names)
    assert moments.plan(names, 2, seed=3) == recipes[:2]


def test_the_scenes_scored_are_where_the_video_shows_each_photo(tmp_path):
    recipe = videos.Recipe(photos=tuple(PHOTOS), width=160, height=90, fps=10, gop=10,
                           options=(("preset", "ultrafast"), ("crf", "23")), durations=(1.3, 2.0, 1.7, 1.0))
    path = videos.cached(recipe, "test", folder=tmp_path)
    assert videos.cached(recipe, "test", folder=tmp_path) == path  # written once
    assert abs(probe(str(path))["duration"] - recipe.seconds) < 0.15
    scenes = recipe.scenes()
    assert scenes[0][0] == 0 and all(a[1] == b[0] for a, b in zip(scenes, scenes[1:]))
    for (start, end), photo in zip(scenes, PHOTOS):
        shown = frame_at(str(path), (start + end) / 2)
        distances = [_difference(shown, other) for other in PHOTOS]
        assert int(np.argmin(distances)) == PHOTOS.index(photo), (start, end, distances)
    assert moments.inside(1.3, scenes[1]) and not moments.inside(1.29, scenes[1]) and not moments.inside(None, scenes[1])


def _difference(picture: Image.Image, photo: str) -> float:
    def small(image: Image.Image) -> np.ndarray:
        return np.asarray(ImageOps.fit(image.convert("L"), (32, 18)), dtype=np.float32)

    with Image.open(photo) as reference:
        return float(np.abs(small(picture) - small(reference)).mean())
