"""Faces that are pictures of faces: a photo of a print on a table, a painting, a stranger's poster.

The renderings are benchmarks/faces_depicted.py's (the figures in docs/people.md come from it),
made here from face_recognition's portraits and scikit-image's astronaut and indexed beside the
people's real photos, as a user's folder would hold them. One index, made once, for the module's tests.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import ColorAligner
from PIL import Image
from test_people import SEQUENTIAL, by_file, face_photo, invoke, people_json

from benchmarks.faces_depicted import PORTRAIT_CROPS, painted, printed, subject
from retrieval.ingest import pipeline
from retrieval.storage.store import IndexStore

pytestmark = pytest.mark.slow

PAINTED = {"painted-obama.png": ("obama2.jpg", "stylization"), "painted-biden.png": ("biden.jpg", "stylization"),
           "sketch-obama.png": ("obama2.jpg", "pencil-colour")}


def _index(index: Path, folder: Path) -> None:
    store = IndexStore.open(index, create=True)
    try:
        pipeline.run(store, ColorAligner(), [folder], settings=SEQUENTIAL)
    finally:
        store.close()


@pytest.fixture(scope="module")
def depicted(tmp_path_factory) -> tuple[Path, Path]:
    """(index, folder): Obama's and Biden's photos, a print of another Obama photo on a table,
    paintings of both, and a poster of the astronaut (someone no photo of the folder shows)."""
    folder = tmp_path_factory.mktemp("depicted")
    for name in ("obama.jpg", "obama3.jpg", "biden.jpg"):
        shutil.copyfile(face_photo(name), folder / name)
    face_photo("obama2.jpg")  # skips the module when the photos are not unpacked
    (folder / "print-obama.jpg").write_bytes(printed(subject("obama2.jpg"), PORTRAIT_CROPS["obama2.jpg"], angle=4.0))
    for name, (source, style) in PAINTED.items():
        (folder / name).write_bytes(painted(subject(source), style))
    (folder / "poster.png").write_bytes(painted(subject("astronaut.png"), "posterized"))
    index = folder.parent / f"{folder.name}-idx"
    _index(index, folder)
    return index, folder


def test_a_printed_face_is_found_and_joins_the_persons_photos(depicted):
    index, _ = depicted
    files = by_file(people_json(index))
    assert files["print-obama.jpg"] == files["obama.jpg"] == files["obama3.jpg"] != files["biden.jpg"]


def test_painted_faces_are_indexed_and_never_join_someone_else(depicted):
    index, _ = depicted
    assert set(PAINTED) <= _indexed(index)  # indexed without error, face or not
    files = by_file(people_json(index))
    obama, biden = files["obama.jpg"], files["biden.jpg"]
    for name, (source, _) in PAINTED.items():
        if name in files:  # a painting's face, when dlib sees one, is its person's or no one else's
            other = biden if source == "obama2.jpg" else obama
            assert files[name] != other, name
    # What docs/people.md measured: both stylized portraits are found and join their person;
    # the colour pencil sketch has no face dlib's HOG detector sees.
    assert files["painted-obama.png"] == obama and files["painted-biden.png"] == biden
    assert "sketch-obama.png" not in files


def test_a_strangers_poster_is_a_person_of_its_own_and_stays_hidden_once_hidden(depicted):
    index, folder = depicted
    files = by_file(people_json(index))
    poster = files["poster.png"]
    assert poster not in (files["obama.jpg"], files["biden.jpg"])
    invoke("people", "hide", poster, "--index", index)
    assert poster not in {p["id"] for p in people_json(index)}
    # Another photo of the same poster, taken later (turned a little, framed differently): its
    # face joins the hidden person, so the stranger does not come back into the list.
    again = subject("astronaut.png").rotate(3, resample=Image.Resampling.BICUBIC).crop((10, 0, 512, 480))
    (folder / "poster-again.png").write_bytes(painted(again, "posterized"))
    _index(index, folder)
    assert "poster-again.png" not in by_file(people_json(index))
    hidden = [p for p in _people_all(index) if p["id"] == poster]
    assert hidden and hidden[0]["hidden"] and hidden[0]["count"] == 2


def _people_all(index: Path) -> list[dict]:
    return json.loads(invoke("people", "--all", "--index", index, "--json").output)["people"]


def _indexed(index: Path) -> set[str]:
    """The names of the files indexed (status 'ok')."""
    with sqlite3.connect(index / "catalog.db") as db:
        return {Path(row[0]).name for row in db.execute("SELECT path FROM images WHERE status = 'ok'")}
