"""Near-duplicate groups on altered copies of real photos, with the real `default` aligner."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import skimage_photo
from PIL import Image, ImageEnhance

from retrieval import ann
from retrieval.cli import main
from retrieval.media.decode import load
from retrieval.media.sameness import hamming
from retrieval.search.duplicates import BURST, COPIES, MAX_BITS, _union_find, as_json, find_duplicates
from retrieval.storage.store import IndexStore

FAMILIES = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "camera.png"]
DISTINCT = ["rocket.jpg", "coins.png", "hubble_deep_field.jpg", "retina.jpg", "moon.png"]


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Five real photos with two altered copies each (re-encoded at quality 85, resized to 70%),
    beside five other real photos that have no copy."""
    from retrieval.api import build_index

    root = tmp_path_factory.mktemp("dupes")
    folder = root / "photos"
    folder.mkdir()
    for name in FAMILIES + DISTINCT:
        with Image.open(skimage_photo(name)) as im:
            image = im.convert("RGB")
        stem = Path(name).stem
        (folder / f"{stem}.jpg").write_bytes(_jpeg(image, 95))
        if name in FAMILIES:
            (folder / "copies").mkdir(exist_ok=True)
            (folder / "copies" / f"{stem}-q85.jpg").write_bytes(_jpeg(image, 85))
            w, h = image.size
            (folder / "copies" / f"{stem}-small.jpg").write_bytes(_jpeg(image.resize((w * 7 // 10, h * 7 // 10)), 90))
    build_index([folder], index=str(root / "idx"), model="default")
    return root / "idx"


def _family(path: str) -> str:
    return Path(path).stem.split("-")[0]


@pytest.mark.slow
def test_copies_grouped_and_distinct_photos_alone(library):
    store = IndexStore.open(library)
    try:
        groups = find_duplicates(store)
    finally:
        store.close()
    by_family = {_family(g[0].path): g for g in groups}
    assert sorted(by_family) == sorted(Path(n).stem for n in FAMILIES)
    for family, group in by_family.items():
        assert len(group) == 3 and {_family(m.path) for m in group} == {family}
        # The largest image leads its group and every score is the similarity to it.
        assert group[0].score == 1.0 and "-" not in Path(group[0].path).stem
        assert all(0 < m.score <= 1.0 for m in group) and group.kind == COPIES
        assert all(m.bits is not None and m.bits <= MAX_BITS for m in group)
    grouped = {_family(m.path) for g in groups for m in g}
    assert not grouped & {Path(n).stem for n in DISTINCT}


# -- the copies users mean, paired by the perceptual hash taken while decoding ------------------
def _user_copies(image: Image.Image) -> dict[str, tuple[Image.Image, str, dict]]:
    """Issue 22's copies: (picture, format, save options)."""
    w, h = image.size
    cw, ch = int(w * 0.94), int(h * 0.94)
    return {
        "half": (image.resize((w // 2, h // 2), Image.LANCZOS), "JPEG", {"quality": 90}),
        "q70": (image, "JPEG", {"quality": 70}),
        "crop6": (image.crop((w - cw, 0, w, ch)), "JPEG", {"quality": 90}),
        "brighter": (ImageEnhance.Brightness(image).enhance(1.1), "JPEG", {"quality": 90}),
        "darker": (ImageEnhance.Brightness(image).enhance(0.9), "JPEG", {"quality": 90}),
        "png": (image, "PNG", {}),
    }


def _write_copies(folder: Path, names: list[str]) -> None:
    for name in names:
        with Image.open(skimage_photo(name)) as im:
            image = im.convert("RGB")
        stem = Path(name).stem.replace("_", "")
        image.save(folder / f"{stem}.jpg", quality=95)
        for kind, (copy, fmt, options) in _user_copies(image).items():
            copy.save(folder / f"{stem}-{kind}.{fmt.lower().replace('jpeg', 'jpg')}", format=fmt, **options)


def test_perceptual_hash_of_real_copies_is_close_and_of_another_shot_far(tmp_path):
    """The hash, as the decoding worker takes it: every copy within MAX_BITS of its original
    (the crop within the looser bound for close vectors); other shots of one scene (the quarters
    of one photo, as benchmarks/dupes_eval.py cuts them) far apart."""
    from conftest import ColorAligner

    _write_copies(tmp_path, ["chelsea.png", "coffee.png", "astronaut.png"])
    _write_quarters(tmp_path, "hubble_deep_field.jpg")
    transform = ColorAligner().transform
    hashes = {p.stem: load(str(p), transform).sameness for p in sorted(tmp_path.iterdir())}
    assert None not in hashes.values()

    def bits(a: str, b: str) -> int:
        return int(hamming(np.array([hashes[a]]), np.array([hashes[b]]))[0])

    for stem in ["chelsea", "coffee", "astronaut"]:
        for kind in ["half", "q70", "brighter", "darker", "png"]:
            assert bits(stem, f"{stem}-{kind}") <= MAX_BITS, (stem, kind)
        assert bits(stem, f"{stem}-crop6") <= 20
    quarters = [f"hubbledeepfield-q{n}" for n in range(4)]
    assert min(bits(a, b) for a in quarters for b in quarters if a < b) > 20
    assert min(bits(a, b) for a in ["chelsea", "coffee"] for b in ["astronaut", "coffee"] if a != b) > 20


def _write_quarters(folder: Path, name: str) -> None:
    """Four non-overlapping quarters of one photo: different pictures of one scene."""
    with Image.open(skimage_photo(name)) as im:
        image = im.convert("RGB")
    w, h = image.size
    for n, (x, y) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        tile = image.crop((x * w // 2, y * h // 2, (x + 1) * w // 2, (y + 1) * h // 2))
        tile.save(folder / f"{Path(name).stem.replace('_', '')}-q{n}.jpg", quality=95)


def test_user_copies_grouped_with_any_aligner_and_a_second_shot_apart(tmp_path, color_aligner):
    """Through a real index (the colour test aligner: the hashes decide, not the model)."""
    from retrieval.ingest import pipeline

    photos = tmp_path / "photos"
    photos.mkdir()
    _write_copies(photos, ["chelsea.png", "coffee.png"])
    _write_quarters(photos, "hubble_deep_field.jpg")
    for name in ["rocket.jpg", "camera.png"]:
        with Image.open(skimage_photo(name)) as im:
            im.convert("RGB").save(photos / f"{Path(name).stem}.jpg", quality=95)
    store = IndexStore.open(tmp_path / "idx", create=True)
    try:
        pipeline.run(store, color_aligner, [photos])
        stored = store.catalog.db.execute("SELECT count(*) FROM vectors WHERE sameness IS NOT NULL").fetchone()[0]
        assert stored == store.catalog.count("vectors") == 2 * 7 + 4 + 2
        groups = find_duplicates(store)
    finally:
        store.close()
    families = sorted(sorted(Path(m.path).stem for m in g) for g in groups)
    assert families == [
        sorted(["chelsea"] + [f"chelsea-{k}" for k in _user_copies(Image.new("RGB", (8, 8)))]),
        sorted(["coffee"] + [f"coffee-{k}" for k in _user_copies(Image.new("RGB", (8, 8)))]),
    ]
    assert all(g.kind == COPIES for g in groups)
    data = as_json(groups)
    assert data["kinds"] == [COPIES, COPIES] and all("bits_differ" in m for g in data["groups"] for m in g)


def _with_date(image: Image.Image, path: Path, taken: str) -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = taken  # DateTimeOriginal
    image.save(path, quality=92, exif=exif)


def test_frames_seconds_apart_are_a_burst(tmp_path, color_aligner):
    """Near-identical frames (the subject moved a pixel or two) with EXIF dates seconds apart."""
    from retrieval.ingest import pipeline

    photos = tmp_path / "photos"
    photos.mkdir()
    with Image.open(skimage_photo("chelsea.png")) as im:
        cat = im.convert("RGB")
    w, h = cat.size
    for n in range(3):
        _with_date(cat.crop((n * 3, 0, w - 9 + n * 3, h)), photos / f"frame{n}.jpg", f"2024:05:01 10:00:0{2 * n}")
    with Image.open(skimage_photo("coffee.png")) as im:
        coffee = im.convert("RGB")
    _with_date(coffee, photos / "coffee.jpg", "2024:05:01 11:00:00")
    _with_date(coffee, photos / "coffee-copy.jpg", "2024:05:01 11:00:00")
    store = IndexStore.open(tmp_path / "idx", create=True)
    try:
        pipeline.run(store, color_aligner, [photos])
        groups = find_duplicates(store)
    finally:
        store.close()
    kinds = {frozenset(Path(m.path).stem for m in g): g.kind for g in groups}
    assert kinds == {frozenset({"frame0", "frame1", "frame2"}): BURST, frozenset({"coffee", "coffee-copy"}): COPIES}


@pytest.mark.slow
def test_coarse_inverted_file_finds_the_same_groups(library):
    """Above PAIRS_EXACT_LIMIT vectors the pairs come from a coarse IVF built for the purpose."""
    store = IndexStore.open(library)
    try:
        exact = [[m.id for m in g] for g in find_duplicates(store)]
        coarse_settings = ann.AnnSettings(pairs_exact_limit=4, pairs_nprobe=4)
        coarse = [[m.id for m in g] for g in find_duplicates(store, ann_settings=coarse_settings)]
    finally:
        store.close()
    assert coarse == exact


@pytest.mark.slow
def test_cli_json_and_sheet(library, tmp_path):
    sheet = tmp_path / "dupes.png"
    result = CliRunner().invoke(main, ["duplicates", "--index", str(library), "--json", "--sheet", str(sheet)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["groups"]) == len(FAMILIES)
    assert all(set(member) == {"id", "path", "score", "bits_differ"} for g in data["groups"] for member in g)
    assert data["kinds"] == [COPIES] * len(FAMILIES)
    sizes = [len(g) for g in data["groups"]]
    assert sizes == sorted(sizes, reverse=True)
    with Image.open(sheet) as drawn:
        assert drawn.height >= len(FAMILIES) * 160  # one row of thumbnails per group
    strict = CliRunner().invoke(main, ["duplicates", "--index", str(library), "--threshold", "0.99999"])
    assert strict.exit_code == 0
    bad = CliRunner().invoke(main, ["duplicates", "--index", str(library), "--threshold", "1.5"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_union_find_joins_chains_and_keeps_singletons_out():
    a = np.array([1, 2, 10, 7], np.int64)
    b = np.array([2, 3, 11, 8], np.int64)
    groups = sorted(_union_find(a, b))
    assert groups == [[1, 2, 3], [7, 8], [10, 11]]
