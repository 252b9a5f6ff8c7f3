"""The default aligner's experts (colour, people, scene) and the recipe change they bring.

Colour and scene checks use generated pictures whose answer is known by construction;
the people check uses real photos (scikit-image's astronaut portrait, its coffee cup) and
the Haar cascade that ships in the OpenCV wheel. The recipe tests load the real packaged
`default` models.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import skimage_photo
from PIL import Image

from retrieval.aligners.experts import colour, ocr, people, scene, to_uint8


def solid(rgb, size=224) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.uint8), (size, size, 3)).copy()


def named(expert, image: np.ndarray) -> list[str]:
    """The phrases an expert gives an image, strongest first."""
    w = expert.weights(image[None])[0]
    return [expert.vocabulary[i] for i in np.argsort(-w) if w[i] > 0]


def test_lab_conversion_matches_scikit_image():
    from skimage.color import rgb2lab

    rgb = np.random.default_rng(0).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    np.testing.assert_allclose(colour.srgb_to_lab(rgb), rgb2lab(rgb), atol=0.05)


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        ((220, 20, 30), "red"), ((255, 140, 0), "orange"), ((250, 230, 30), "yellow"), ((30, 160, 40), "green"),
        ((20, 60, 220), "blue"), ((130, 30, 150), "purple"), ((255, 170, 200), "pink"), ((110, 65, 25), "brown"),
        ((245, 245, 245), "white"), ((12, 12, 12), "black"),
    ],
)
def test_a_plain_colour_is_named(rgb, name):
    # A plain white or black picture is also a black-and-white one: that test is off here
    # (bw_chroma=0) so the colour term itself is checked.
    assert named(colour.ColourExpert(bw_chroma=0.0), solid(rgb))[0] == name


def test_two_colour_picture_names_both_and_the_centre_counts_more():
    image = solid((20, 60, 220))  # blue all around
    image[56:168, 56:168] = (220, 20, 30)  # a red square in the middle, a quarter of the picture
    names = named(colour.ColourExpert(), image)
    assert names[:2] == ["red", "blue"]


def test_grey_photo_is_black_and_white_and_colour_photo_is_not():
    photo = np.asarray(Image.open(skimage_photo("chelsea.png")).convert("RGB").resize((224, 224)))
    grey = np.repeat(np.asarray(Image.fromarray(photo).convert("L"))[..., None], 3, axis=2)
    expert = colour.ColourExpert()
    assert named(expert, grey) == [colour.BLACK_AND_WHITE]
    assert colour.BLACK_AND_WHITE not in named(expert, photo)


def test_dark_picture_is_night_and_blue_top_is_sky():
    expert = scene.SceneExpert()
    dark = solid((15, 15, 25))
    assert named(expert, dark)[0] == "a dark photo taken at night"
    outdoor = solid((60, 120, 40))  # green ground
    outdoor[:100] = (90, 150, 230)  # an even blue sky above it
    assert "outdoors under a blue sky" in named(expert, outdoor)
    assert named(expert, solid((200, 200, 200))) == []


def test_to_uint8_undoes_the_transform():
    from retrieval.aligners.conse import CONFIG, image_transform

    transform = image_transform(CONFIG)
    photo = Image.open(skimage_photo("coffee.png")).convert("RGB")
    back = to_uint8(transform(photo)[None], transform.mean, transform.std)[0]
    expected = np.asarray(photo.resize((transform.size * photo.width // photo.height, transform.size), Image.BICUBIC))
    left = (expected.shape[1] - transform.size) // 2
    assert np.abs(back.astype(int) - expected[:, left : left + transform.size].astype(int)).max() <= 1


@pytest.mark.slow
def test_face_cascade_finds_the_astronaut_and_not_the_coffee():
    expert = people.PeopleExpert()
    portrait = np.asarray(Image.open(skimage_photo("astronaut.png")).convert("RGB").resize((224, 224)))
    cup = np.asarray(Image.open(skimage_photo("coffee.png")).convert("RGB").resize((224, 224)))
    assert named(expert, portrait) == ["a person"]  # one face, a small part of the picture
    assert named(expert, cup) == []
    # Cropped to her head and shoulders, the same face is a close-up portrait.
    x, y, w, h = expert.faces(portrait)[0]
    close = Image.fromarray(portrait[max(0, y - h // 2) : y + 2 * h, max(0, x - w // 2) : x + w + w // 2])
    names = named(expert, np.asarray(close.resize((224, 224))))
    assert sorted(names) == sorted(["a person", "a close-up portrait of a person's face"])


def test_missing_cascades_are_a_clear_error(monkeypatch):
    import cv2

    from retrieval.errors import ModelError

    monkeypatch.setattr(cv2.data, "haarcascades", "/nonexistent/")
    with pytest.raises(ModelError, match="opencv-python-headless<5"):
        people.load_cascade("haarcascade_frontalface_default.xml")


# -- the recipe, with the real packaged models ------------------------------------------
@pytest.fixture(scope="module")
def default():
    from retrieval.aligners import load_aligner

    return load_aligner("default")


@pytest.mark.slow
def test_default_puts_a_red_picture_nearer_red_than_blue(default):
    red, blue = Image.fromarray(solid((210, 25, 35))), Image.fromarray(solid((25, 60, 210)))
    images = default.encode_pil([red, blue])
    texts = default.encode_texts(["a red photo", "a blue photo"])
    scores = images @ texts.T
    assert scores[0, 0] > scores[0, 1] and scores[1, 1] > scores[1, 0]


@pytest.mark.slow
def test_demo_person_query_finds_the_portrait(default):
    # The demo's "a woman": ImageNet has no person class, so only the people expert can find her.
    from retrieval.evaluation.demo import DEMO_QUERIES, SKIMAGE_PHOTOS

    assert "a woman" in DEMO_QUERIES
    images = default.encode_pil([Image.open(skimage_photo(n)) for n in SKIMAGE_PHOTOS])
    query = default.encode_texts(["a woman"])
    assert SKIMAGE_PHOTOS[int(np.argmax(images @ query[0]))] == "astronaut.png"


@pytest.mark.slow
def test_demo_colour_query_finds_the_red_bowl(default):
    # The demo's "a red bowl": the fig's bowl in lomiri-wallpapers-16.04 (installed by setup.sh).
    from pathlib import Path

    from retrieval.evaluation.demo import DEMO_QUERIES, demo_sources

    assert "a red bowl" in DEMO_QUERIES
    sources = demo_sources()
    if not any(p.name == "Picture_0B_by_freespace.jpg" for p in sources):
        pytest.skip("lomiri-wallpapers-16.04 is not installed")
    images = default.encode_pil([Image.open(p) for p in sources])
    query = default.encode_texts(["a red bowl"])
    assert Path(sources[int(np.argmax(images @ query[0]))]).name == "Picture_0B_by_freespace.jpg"


@pytest.mark.slow
def test_demo_word_query_finds_the_sign_by_its_words(default):
    # The demo's "a sign that says no parking": of its two street signs (opencv-doc, installed by
    # setup.sh) only the words tell which one; the recipe without OCR picks the other sign.
    from retrieval.aligners import conse
    from retrieval.aligners.conse import ConseAligner
    from retrieval.evaluation.demo import DEMO_QUERIES, SIGNS, demo_sources

    query = "a sign that says no parking"
    assert query in DEMO_QUERIES
    if not all(sign.exists() for sign in SIGNS):
        pytest.skip("opencv-doc is not installed")
    sources = demo_sources()
    for aligner, expected in ((default, "scenetext01.jpg"), (ConseAligner(config=conse.RECIPE_2026_12_02), "scenetext02.jpg")):
        images = aligner.encode_pil([Image.open(p) for p in sources])
        assert sources[int(np.argmax(images @ aligner.encode_texts([query])[0]))].name == expected


def test_previous_recipe_keeps_its_identity():
    from retrieval.aligners import conse

    # Indexes built before the experts record this identity; changing it would orphan them.
    assert conse.config_hash(conse.RECIPE_2026_11) == "885cacb3d584"
    assert conse.recipe_for("default/conse-885cacb3d584") is conse.RECIPE_2026_11
    assert conse.config_hash(conse.CONFIG) != "885cacb3d584"
    assert conse.recipe_for("default/conse-000000000000") is None


def test_first_expert_recipe_keeps_its_identity():
    from retrieval.aligners import conse

    # The recipe shipped on 2026-12-01 (and its default+ocr), retuned since: indexes built with
    # them record these identities, and searching them rebuilds exactly that recipe.
    assert conse.config_hash(conse.RECIPE_2026_12) == "9b5f21837d05"
    assert conse.config_hash(conse.OCR_RECIPE_2026_12) == "131b0ef858f9"
    assert conse.recipe_for("default/conse-9b5f21837d05") is conse.RECIPE_2026_12
    assert conse.recipe_for("default/conse-131b0ef858f9") is conse.OCR_RECIPE_2026_12
    assert conse.ConseAligner(config=conse.RECIPE_2026_12).identity == "default/conse-9b5f21837d05"
    assert conse.config_hash(conse.CONFIG) not in ("9b5f21837d05", "885cacb3d584")


def test_morning_recipe_of_2026_12_02_keeps_its_identity():
    from retrieval.aligners import conse

    # `default` and `default+ocr` as shipped on the morning of 2026-12-02, before words joined
    # `default`: indexes built with them record these identities.
    assert conse.config_hash(conse.RECIPE_2026_12_02) == "524474c7fa4e"
    assert conse.config_hash(conse.OCR_RECIPE_2026_12_02) == "781184540fd0"
    assert conse.recipe_for("default/conse-524474c7fa4e") is conse.RECIPE_2026_12_02
    assert conse.recipe_for("default/conse-781184540fd0") is conse.OCR_RECIPE_2026_12_02
    assert conse.config_hash(conse.CONFIG) not in ("524474c7fa4e", "781184540fd0")
    assert conse.CONFIG["ocr"]["settings"]["reader"] == ocr.READER


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["RECIPE_2026_11", "RECIPE_2026_12", "RECIPE_2026_12_02", "OCR_RECIPE_2026_12_02"])
def test_index_of_the_previous_recipe_is_searchable_but_refuses_new_vectors(tmp_path, photo_dir, recipe):
    from retrieval.aligners import conse, load_aligner
    from retrieval.aligners.conse import ConseAligner
    from retrieval.api import Index
    from retrieval.errors import ModelMismatch
    from retrieval.ingest import pipeline as indexer
    from retrieval.ingest.pipeline import IndexSettings
    from retrieval.storage.store import IndexStore

    settings = IndexSettings(workers=0, batch_size=8)
    folder = tmp_path / "old"
    store = IndexStore.open(folder, create=True)
    # The morning's opt-in `default+ocr` recorded that spec; it now names `default` itself.
    old = ConseAligner(config=getattr(conse, recipe), spec="default+ocr" if recipe.startswith("OCR") else "default")
    indexer.run(store, old, [photo_dir], settings=settings)
    store.close()

    hits = Index(str(folder)).search("a cat", k=1)
    assert hits and hits[0].path.endswith("chelsea.png")

    store = IndexStore.open(folder)
    try:
        with pytest.raises(ModelMismatch, match=r"another version of 'default'.*--index NEW_NAME"):
            indexer.run(store, load_aligner("default"), [photo_dir], settings=settings)
    finally:
        store.close()


# -- words in the photo (OCR) -------------------------------------------------------------
def printed(word: str, size=(224, 224)) -> np.ndarray:
    from PIL import ImageDraw, ImageFont

    image = Image.new("RGB", size, (250, 250, 245))
    ImageDraw.Draw(image).text((16, 80), word, fill=(20, 20, 20), font=ImageFont.load_default(size=44))
    return np.asarray(image)


@pytest.mark.slow
def test_ocr_reads_a_printed_word():
    from retrieval.aligners.experts import ocr

    expert = ocr.OcrExpert()
    assert expert.words(printed("BAKERY")).upper() == "BAKERY"
    assert expert.sentences(np.stack([printed("GARAGE"), solid((40, 120, 200))])) == ["a sign that says GARAGE", ""]
    assert ocr.split_joined("SportsCentre CarParks") == "Sports Centre Car Parks"


def test_ocr_model_files_missing_or_another_reader_is_a_clear_error(monkeypatch):
    from retrieval.errors import ModelError

    monkeypatch.setattr(ocr, "_MODEL_FILES", {"Det": "PP-OCRv6_det_small.onnx", "Rec": "no-such-model.onnx"})
    with pytest.raises(ModelError, match=r"lacks no-such-model.onnx.*rapidocr>=3.10"):
        ocr.OcrExpert().words(solid((40, 120, 200)))
    with pytest.raises(ModelError, match="reads words with 'rapidocr-9'"):
        ocr.OcrExpert(reader="rapidocr-9")


def test_a_picture_the_reader_chokes_on_is_read_as_no_words(monkeypatch, caplog):
    expert = ocr.OcrExpert()

    def choke(*args, **kwargs):
        raise ValueError("degenerate box")

    expert._engine = choke  # the models are never loaded: the engine is this function
    with caplog.at_level("WARNING", logger="retrieval.aligners.experts.ocr"):
        assert expert.sentences(np.stack([solid((40, 120, 200))])) == [""]
    assert "ValueError: degenerate box" in caplog.text and "indexed without them" in caplog.text


def test_default_ocr_is_now_another_name_for_default():
    from retrieval.aligners import list_aligners, load_aligner

    assert "default+ocr" not in [row["spec"] for row in list_aligners()]
    assert load_aligner("default+ocr") is load_aligner("default")


@pytest.mark.slow
def test_default_finds_the_sign_by_its_word(default):
    aligner = default
    words = ["BAKERY", "PHARMACY", "GARAGE"]
    images = aligner.encode_pil([Image.fromarray(printed(w)) for w in words])
    queries = aligner.encode_texts(["the bakery sign", "a pharmacy", "a garage"])
    assert ((queries @ images.T).argmax(axis=1) == np.arange(3)).all()
