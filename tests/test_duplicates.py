"""Near-duplicate groups on altered copies of real photos, with the real `default` aligner."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import skimage_photo
from PIL import Image

from retrieval import ann
from retrieval.cli import main
from retrieval.search.duplicates import DEFAULT_THRESHOLD, _union_find, find_duplicates
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
        assert all(DEFAULT_THRESHOLD <= m.score <= 1.0 for m in group)
    grouped = {_family(m.path) for g in groups for m in g}
    assert not grouped & {Path(n).stem for n in DISTINCT}


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
    assert all(set(member) == {"id", "path", "score"} for g in data["groups"] for member in g)
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
