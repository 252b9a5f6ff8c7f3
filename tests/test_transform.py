"""ImageTransform reproduces open_clip's (and timm's) eval preprocessing without torch."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import skimage_photo
from PIL import Image

from retrieval.media.transform import ImageTransform

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# (width, height): landscape, portrait, square, extreme strips, and smaller than the output (upscaled).
SIZES = [(640, 480), (300, 451), (224, 224), (1000, 120), (90, 700), (50, 37), (225, 224)]


def photo(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    return Image.open(skimage_photo("chelsea.png")).convert(mode).resize(size, Image.Resampling.BILINEAR)


@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
@pytest.mark.parametrize("size", SIZES)
def test_matches_open_clip_preprocess(size, resize_mode):
    from open_clip.transform import image_transform

    reference = image_transform(224, is_train=False, mean=MEAN, std=STD, resize_mode=resize_mode)
    ours = ImageTransform(224, MEAN, STD, resize_mode=resize_mode)
    image = photo(size)
    expected = reference(image).numpy()
    got = ours(image)
    assert got.shape == expected.shape == (3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)


# Not "P": open_clip resizes palette images before converting them (so nearest-neighbour);
# we convert first, as the loader does anyway.
@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_other_colour_modes_become_rgb_like_open_clip(mode):
    from open_clip.transform import image_transform

    reference = image_transform(64, is_train=False, mean=MEAN, std=STD)
    image = photo((120, 90), mode)
    if mode == "RGBA":
        # Pillow resizes RGBA with premultiplied alpha; open_clip converts after resizing.
        # With opaque pixels the two agree, which is what the loader feeds us (it converts first).
        image.putalpha(255)
    np.testing.assert_allclose(ImageTransform(64, MEAN, STD)(image), reference(image).numpy(), atol=1e-5)


@pytest.mark.parametrize("size", [(640, 480), (300, 451), (50, 37)])
def test_crop_pct_matches_timm_eval_transform(size):
    from timm.data import create_transform

    reference = create_transform(224, crop_pct=0.875, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
    ours = ImageTransform(224, (0.5,) * 3, (0.5,) * 3, crop_pct=0.875)
    assert ours.resize_to == 256
    np.testing.assert_allclose(ours(photo(size)), reference(photo(size)).numpy(), atol=1e-5)


def test_picklable_and_hashable():
    transform = ImageTransform(260, (0.5,) * 3, (0.5,) * 3, resize_mode="squash", crop_pct=0.9)
    assert pickle.loads(pickle.dumps(transform)) == transform
    assert len({transform, ImageTransform(260, (0.5,) * 3, (0.5,) * 3, resize_mode="squash", crop_pct=0.9)}) == 1


@pytest.mark.parametrize("kwargs", [{"resize_mode": "longest"}, {"crop_pct": 0.0}, {"crop_pct": 1.5}])
def test_rejects_unknown_settings(kwargs):
    with pytest.raises(ValueError):
        ImageTransform(224, MEAN, STD, **kwargs)


@pytest.mark.parametrize("size", [(2400, 1600), (1600, 2400), (1000, 700)])
def test_draft_decoded_jpeg_stays_within_a_grey_level_of_open_clip_on_the_full_image(size):
    """The loader's fast path (JPEG decoded at 1/2 to 1/8 scale) against open_clip on the full decode."""
    import io

    from open_clip.transform import image_transform

    from retrieval.media.decode import decode

    buffer = io.BytesIO()
    photo(size).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    reference = image_transform(224, is_train=False, mean=MEAN, std=STD)(Image.open(io.BytesIO(data))).numpy()
    ours = ImageTransform(224, MEAN, STD)
    drafted, original = decode(data, draft_to=224)
    assert original == size and min(drafted.size) < min(size)  # the fast path was taken
    one_level = 1 / 255 / max(STD)  # one 8-bit grey level after normalization
    diff = np.abs(ours(drafted) - reference)
    assert diff.mean() < one_level and diff.max() < 10 * one_level
    np.testing.assert_allclose(ours(decode(data)[0]), reference, atol=1e-5)  # the plain path: identical
