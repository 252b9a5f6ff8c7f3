"""Contact sheets show a video's hit as the frame of its moment, labelled with the time.

A real WebM (VP9, written with PyAV) of three scenes of real photos; no model: the hits are
made by hand, as a search returns them.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import skimage_photo
from PIL import Image, ImageOps
from video_kit import make_video

from retrieval.search.query import Hit
from retrieval.search.sheet import GAP, LABEL, THUMB, clock, contact_sheet, labels

SCENES = ["coffee.png", "chelsea.png", "rocket.jpg"]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("sheet") / "scenes.webm", SCENES, scene_seconds=2.0, fps=5)


def cell(sheet: Image.Image, i: int) -> Image.Image:
    """The picture of the i-th hit of a one-row sheet, less the padding of a 4:3 frame."""
    x, top = GAP + i * (THUMB + GAP), GAP + LABEL + GAP
    return sheet.crop((x, top + THUMB // 8 + 2, x + THUMB, top + THUMB * 7 // 8 - 2))


def difference(picture: Image.Image, photo: str) -> float:
    def small(image: Image.Image) -> np.ndarray:
        return np.asarray(ImageOps.fit(image.convert("L"), (48, 36)), dtype=np.float32)

    with Image.open(skimage_photo(photo)) as reference:
        return float(np.abs(small(picture) - small(reference)).mean())


@pytest.mark.parametrize(("seconds", "shown"), [(0.0, "0:00"), (4.5, "0:04.5"), (75.4, "1:15.4"), (3725, "1:02:05")])
def test_clock(seconds, shown):
    assert clock(seconds) == shown


def test_a_video_hit_is_drawn_as_the_frame_of_its_moment(video, tmp_path):
    hits = [Hit(rank=1, id=1, score=0.5, path=str(video), media="video", time=3.0),  # the cat's scene (2-4 s)
            Hit(rank=2, id=1, score=0.4, path=str(video), media="video", time=0.4),  # the coffee's (0-2 s)
            Hit(rank=3, id=2, score=0.3, path=str(skimage_photo("rocket.jpg")))]
    assert labels(hits[0]) == ["#1  0.500  at 0:03", "scenes.webm"]
    assert labels(hits[2]) == ["#3  0.300", "rocket.jpg"]  # a photo's label is as it was
    sheet = Image.open(contact_sheet([("a cat", hits)], tmp_path / "sheet.png"))
    cat, coffee = cell(sheet, 0), cell(sheet, 1)
    assert difference(cat, "chelsea.png") < difference(cat, "coffee.png")
    assert difference(coffee, "coffee.png") < difference(coffee, "chelsea.png")


def test_a_damaged_video_is_a_grey_cell_not_an_error(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    out = contact_sheet([("x", [Hit(rank=1, id=1, score=0.1, path=str(broken), media="video", time=1.0)])],
                        tmp_path / "sheet.png")
    picture = np.asarray(cell(Image.open(out), 0))
    assert (picture == 0xCC).all()
