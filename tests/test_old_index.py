"""An index built by the code before the layout change (commit c817318) opens, searches and
grows with today's code: the on-disk format is a promise, not an accident of the modules.

`tests/fixtures/old_index/` is that index, checked in as the old code wrote it (see
`tests/fixtures/old_index.md` for how it was made): four small photos from scikit-image and
four captions, indexed with the real `default` aligner. The catalog records each photo's
absolute path at build time (/tmp/retrieval-fixture/old_index_photos/...), so the tests work
on a copy in tmp_path and compare photos by file name; indexing the photos again from their
new place reuses their vectors by content hash, as a moved folder does for a user.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import skimage_photo

from retrieval.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
PHOTOS = ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]
#: Where the photos were when the old code indexed them: the catalog records absolute paths.
BUILT_IN = Path("/tmp/retrieval-fixture/old_index_photos")


@pytest.fixture
def old_index(tmp_path) -> Path:
    """A writable copy of the old index; its photos are copied beside it, in tmp_path/photos."""
    shutil.copytree(FIXTURES / "old_index", tmp_path / "index")
    shutil.copytree(FIXTURES / "old_index_photos", tmp_path / "photos")
    return tmp_path / "index"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def catalog_rows(index: Path) -> list[tuple[int, str, str, bytes]]:
    """(id, path, content hash, vector bytes) of every image, read straight from SQLite."""
    conn = sqlite3.connect(index / "catalog.db")
    try:
        return conn.execute(
            "SELECT images.id, images.path, images.hash, vectors.vector FROM images JOIN vectors USING (hash)"
        ).fetchall()
    finally:
        conn.close()


def image_rows(index: Path) -> dict[str, tuple[int, str, bytes]]:
    """File name -> (id, content hash, vector bytes) of the images outside tmp_path/photos."""
    photos = (index.parent / "photos").resolve()
    return {
        Path(path).name: (row_id, digest, vector)
        for row_id, path, digest, vector in catalog_rows(index)
        if Path(path).parent != photos
    }


# --- Without a model ----------------------------------------------------------------------


def test_the_fixture_is_what_the_old_code_wrote(old_index):
    rows = image_rows(old_index)
    assert sorted(rows) == PHOTOS
    assert {Path(path).parent for _, path, _, _ in catalog_rows(old_index)} == {BUILT_IN}
    assert all(len(vector) == 384 * 4 for _, _, vector in rows.values())  # default: 384 float32
    assert sum(p.stat().st_size for p in FIXTURES.glob("old_index*/*")) < 1_000_000


def test_it_opens_and_reports_itself_with_todays_code(old_index):
    from retrieval.api import open_index

    index = open_index(str(old_index))
    try:
        info = index.info()
    finally:
        index.close()
    assert info["model"] == "default"
    assert info["model_identity"].startswith("default/")
    assert (info["dim"], info["images"], info["captions"], info["generation"]) == (384, 4, 4, 1)
    assert info["index_type"] == "IDMap2,Flat"
    assert info["index_files"] == "ok"


def test_retrieval_check_and_info_call_it_healthy(old_index):
    checked = invoke("check", "--index", old_index)
    assert checked.exit_code == 0, checked.output
    assert "index is healthy" in checked.output
    info = invoke("info", "--index", old_index)
    assert info.exit_code == 0, info.output
    assert "IDMap2,Flat" in info.output


# --- With the real default aligner ----------------------------------------------------------


@pytest.mark.slow
def test_todays_code_searches_it(old_index):
    from retrieval.api import open_index

    index = open_index(str(old_index))
    try:
        cat = index.search("a cat", k=4)[0]
        assert Path(cat.path).name == "chelsea.jpg"
        assert cat.score == pytest.approx(0.722, abs=0.002)  # what the old code's `retrieval search "a cat"` printed
        assert Path(index.search("a cup of coffee", k=4)[0].path).name == "coffee.jpg"
        captions = index.search(image=str(old_index.parent / "photos" / "chelsea.jpg"), target="texts", k=4)
        assert captions[0].text == "a cat lying on a rug"
    finally:
        index.close()


@pytest.mark.slow
def test_todays_code_adds_to_it_and_keeps_the_old_vectors(old_index):
    from retrieval.api import build_index, open_index

    before = image_rows(old_index)
    new = old_index.parent / "new"
    new.mkdir()
    shutil.copyfile(skimage_photo("camera.png"), new / "camera.png")

    summary = build_index([new], index=str(old_index))  # the model the index records: default
    assert (summary.added, summary.encoded, summary.removed) == (1, 1, 0)
    after = image_rows(old_index)
    assert {name: after[name] for name in before} == before  # same ids, hashes and vector bytes
    assert sorted(after) == sorted([*PHOTOS, "camera.png"])

    # The old photos from their new place: known by content hash, so nothing is encoded again.
    again = build_index([old_index.parent / "photos"], index=str(old_index))
    assert again.encoded == 0, again.line()
    photos = (old_index.parent / "photos").resolve()
    moved = {Path(p).name: v for _, p, _, v in catalog_rows(old_index) if Path(p).parent == photos}
    assert moved == {name: before[name][2] for name in PHOTOS}

    checked = invoke("check", "--index", old_index)
    assert checked.exit_code == 0, checked.output
    index = open_index(str(old_index))
    try:
        assert index.info()["generation"] > 1
        assert Path(index.search("a cat", k=1)[0].path).name == "chelsea.jpg"
        assert Path(index.search("a man with a camera on a tripod", k=1)[0].path).name == "camera.png"
    finally:
        index.close()



def test_duplicates_on_it_fall_back_to_vectors_without_upgrading_it(old_index):
    """Its catalog predates perceptual hashes: `duplicates` pairs by vector similarity alone and
    reads the catalog as it is (only an index run upgrades it)."""
    version = sqlite3.connect(old_index / "catalog.db").execute(
        "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    result = invoke("duplicates", "--index", old_index, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"groups": [], "kinds": []}  # four distinct photos
    assert sqlite3.connect(old_index / "catalog.db").execute(
        "SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == version


@pytest.mark.slow
def test_an_index_run_on_it_stores_hashes_for_what_it_decodes(old_index):
    """New files get their hash; a copy of an old photo (no hash) still pairs with it by vector."""
    from PIL import Image

    from retrieval.api import build_index

    new = old_index.parent / "new"
    new.mkdir()
    with Image.open(old_index.parent / "photos" / "chelsea.jpg") as im:
        im.convert("RGB").save(new / "chelsea-again.jpg", quality=85)
    build_index([new], index=str(old_index))
    conn = sqlite3.connect(old_index / "catalog.db")
    hashed = conn.execute("SELECT count(*) FROM vectors WHERE sameness IS NOT NULL").fetchone()[0]
    assert hashed == 1  # the new file's; the old vectors keep theirs empty until re-decoded
    data = json.loads(invoke("duplicates", "--index", old_index, "--json").stdout)
    assert [sorted(Path(m["path"]).name for m in g) for g in data["groups"]] == [["chelsea-again.jpg", "chelsea.jpg"]]
    assert data["kinds"] == ["copies"]
