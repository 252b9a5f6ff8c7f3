"""People in every query: `search --person`, the Python API's filter, the HTTP `person` parameter,
the people routes (the strip, who is in a photo, face thumbnails by id) and the page.

Real faces (tests/test_people.py's photos): Barack Obama three times and Joe Biden once, from
face_recognition's source archive, beside scikit-image's photos without people, indexed with the
real packaged `default` aligner and dlib's face models, then named as a user would.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import skimage_photo
from PIL import Image
from test_people import face_photo

from retrieval.cli import main
from retrieval.search.filters import FilterError, Filters, FilterTuning

OBAMA = ["obama.jpg", "obama2.jpg", "obama3.jpg"]


def invoke(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert (result.exit_code == 0) == ok, result.output
    return result


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """(index path, photos folder, {name: person id}): folder a/ holds obama.jpg and obama2.jpg,
    b/ holds obama3.jpg, biden.jpg and coffee; c/ holds a rocket and a cat."""
    from retrieval.api import build_index
    from retrieval.ingest.pipeline import IndexSettings

    root = tmp_path_factory.mktemp("people-search")
    photos = root / "photos"
    layout = {"a": ["obama.jpg", "obama2.jpg"], "b": ["obama3.jpg", "biden.jpg"]}
    for folder, names in layout.items():
        (photos / folder).mkdir(parents=True)
        for name in names:
            shutil.copyfile(face_photo(name), photos / folder / name)
    shutil.copyfile(skimage_photo("coffee.png"), photos / "b" / "coffee.png")
    (photos / "c").mkdir()
    for name in ("rocket.jpg", "chelsea.png"):
        shutil.copyfile(skimage_photo(name), photos / "c" / name)
    index = root / "idx"
    build_index([photos], index=str(index), settings=IndexSettings(workers=0, faces=True))
    listed = json.loads(invoke("people", "--index", index, "--json").output)["people"]
    person_of = {Path(f["path"]).name: p["id"] for p in listed for f in p["faces"]}
    assert len({person_of[n] for n in OBAMA}) == 1 and person_of["biden.jpg"] != person_of["obama.jpg"]
    invoke("people", "name", person_of["obama.jpg"], "Barack Obama", "--index", index)
    invoke("people", "name", person_of["biden.jpg"], "Joe Biden", "--index", index)
    return index, photos, {"Barack Obama": person_of["obama.jpg"], "Joe Biden": person_of["biden.jpg"]}


@pytest.fixture(scope="module")
def idx(library):
    from retrieval.api import open_index

    opened = open_index(str(library[0]))
    yield opened
    opened.close()


def names(hits) -> list[str]:
    return [Path(h.path).name for h in hits]


# -- the filter ------------------------------------------------------------------------------
@pytest.mark.slow
def test_text_and_a_person_returns_only_their_photos_ranked_by_the_text(idx):
    everything = idx.search("a man in a suit in front of a flag", k=20)
    mine = idx.search("a man in a suit in front of a flag", k=20, filters=Filters.parse(people="barack OBAMA"))
    assert sorted(names(mine)) == sorted(OBAMA)
    # The same scores, in the same order, as the unfiltered search gives those photos.
    assert [(h.path, h.score) for h in mine] == [(h.path, h.score) for h in everything if Path(h.path).name in OBAMA]


@pytest.mark.slow
def test_every_named_person_must_be_in_the_photo(idx, library):
    _, _, ids = library
    both = Filters.parse(people=["Barack Obama", str(ids["Joe Biden"])])
    assert idx.search("a man", filters=both) == []
    assert idx.why_empty(both).endswith("together (each passes some on its own)")
    assert names(idx.search("a man", filters=Filters.parse(people=[str(ids["Joe Biden"])]))) == ["biden.jpg"]


@pytest.mark.slow
def test_a_person_combines_with_folders_and_sizes(idx, library):
    _, photos, _ = library
    in_a = Filters.parse(people="Barack Obama", folders=[photos / "a"])
    assert sorted(names(idx.search("a portrait", filters=in_a))) == ["obama.jpg", "obama2.jpg"]
    wide = Filters.parse(people="Barack Obama", min_width=900)  # obama2.jpg is 626 pixels wide
    assert sorted(names(idx.search("a portrait", filters=wide))) == ["obama.jpg", "obama3.jpg"]
    assert idx.search("a portrait", filters=Filters.parse(people="Joe Biden", folders=[photos / "a"])) == []


@pytest.mark.slow
def test_the_columns_and_sql_paths_agree_exactly(idx):
    """Each way of running a filtered search gives the exact best k of the passing photos."""
    from retrieval.search import resident
    from retrieval.search.filters import search as filtered_search

    store = idx.store
    catalog = store.catalog
    query = idx.encode_texts(["a smiling man"])
    filters = Filters.parse(people="Barack Obama", min_width=700)
    ways = {
        "mask exact": FilterTuning(mask_exact_max=10_000, wait_for_columns=True),
        "mask restrict": FilterTuning(mask_exact_max=0, mask_overfetch_share=2.0, wait_for_columns=True),
        "mask overfetch": FilterTuning(mask_exact_max=0, mask_overfetch_share=0.0, wait_for_columns=True),
        "sql exact": FilterTuning(columns=False, exact_max=10_000, restrict_max=10_000, sample=10),
        "sql restrict": FilterTuning(columns=False, exact_max=0, restrict_max=10_000, sample=10),
        "sql overfetch": FilterTuning(columns=False, exact_max=0, restrict_max=0, sample=10),
    }
    with catalog.snapshot():
        index = resident.read(store.faiss_path("images", catalog.generation))
        vectors = np.stack([catalog.image_vectors_by_id([i])[i] for i in range(1, index.ntotal + 1)])
        passing = [r[0] for r in catalog.db.execute(
            "SELECT images.id FROM images JOIN faces ON faces.hash = images.hash JOIN people ON people.id = faces.person_id "
            "WHERE people.name = 'Barack Obama' AND images.width >= 700")]
        found = {way: filtered_search(catalog, index, query, 5, filters, tuning=tuning) for way, tuning in ways.items()}
    scores = vectors @ query[0]
    want = sorted(passing, key=lambda i: -scores[i - 1])
    assert len(want) == 2
    for way, result in found.items():
        assert result.ids[0].tolist()[: len(want)] == want, way
        assert result.chosen == way.split()[-1] and result.evaluated == ("columns" if way.startswith("mask") else "sql")


@pytest.mark.slow
def test_a_kept_person_mask_follows_every_commit(idx, library):
    """A long-lived searcher keeps a person's photos between searches, never past a change of who is in them."""
    from retrieval.people.naming import move
    from retrieval.search import resident
    from retrieval.search.filters import search as filtered_search

    _, _, ids = library
    store, catalog = idx.store, idx.store.catalog
    query = idx.encode_texts(["a man"])
    tuning = FilterTuning(mask_exact_max=10_000, wait_for_columns=True)

    def found() -> list[str]:
        with catalog.snapshot():
            index = resident.read(store.faiss_path("images", catalog.generation))
            result = filtered_search(catalog, index, query, 10, Filters.parse(people="Barack Obama"), tuning=tuning,
                                     searcher=idx.searcher)
            rows = catalog.rows_by_id("images", [i for i in result.ids[0].tolist() if i >= 0])
        assert result.evaluated == "columns"
        return sorted(Path(r["path"]).name for r in rows.values())

    assert found() == sorted(OBAMA) and found() == sorted(OBAMA)  # the second from the kept mask
    biden_face = catalog.db.execute("SELECT id FROM faces WHERE person_id = ?", [ids["Joe Biden"]]).fetchone()[0]
    move(catalog, [biden_face], "Barack Obama")  # a correction through this very connection
    try:
        assert found() == sorted([*OBAMA, "biden.jpg"])
    finally:
        move(catalog, [biden_face], str(ids["Joe Biden"]))
    assert found() == sorted(OBAMA)


@pytest.mark.slow
def test_a_person_alone_lists_their_photos_clearest_face_first_or_by_date(idx):
    alone = idx.search(filters=Filters.parse(people="Barack Obama"), k=10)
    assert sorted(names(alone)) == sorted(OBAMA)
    assert [h.score for h in alone] == sorted((h.score for h in alone), reverse=True)
    assert all(h.score > 0 for h in alone)  # the detector's score of their face
    newest = idx.search(filters=Filters.parse(people="Barack Obama"), k=10, sort="date")
    dates = [h.taken for h in newest]
    assert None not in dates and dates == sorted(dates, reverse=True)
    assert len(idx.search(filters=Filters.parse(people="Barack Obama"), k=2)) == 2


@pytest.mark.slow
def test_cli_person_with_text_alone_and_an_unknown_name(library):
    index, _, _ = library
    out = invoke("search", "a man", "--person", "Joe Biden", "--index", index, "--json").output
    found = json.loads(out)
    assert [Path(r["path"]).name for r in found["results"]] == ["biden.jpg"]
    assert found["query"]["people"] == ["Joe Biden"]
    alone = invoke("search", "--person", "barack obama", "--index", index, "--paths").output.split()
    assert sorted(Path(p).name for p in alone) == sorted(OBAMA)
    by_image = invoke("search", "--image", face_photo("obama2.jpg"), "--person", "Barack Obama", "--index", index,
                      "--paths").output.split()
    assert sorted(Path(p).name for p in by_image) == sorted(OBAMA) and Path(by_image[0]).name == "obama2.jpg"
    dated = json.loads(invoke("search", "--person", "Barack Obama", "--sort", "date", "--json", "--index", index).output)
    assert "min_score" not in dated["query"]  # nothing is cut from a person's photos
    for wrong, close in [("Obama", "Barack Obama"), ("Joe Bidne", "Joe Biden")]:
        failed = invoke("search", "a man", "--person", wrong, "--index", index, ok=False)
        lines = failed.output.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in failed.output
        assert "no one has that name" in lines[0] and close in lines[0], lines
    nobody = invoke("search", "--person", "Zebedee", "--index", index, ok=False).output
    assert "named people: Barack Obama, Joe Biden" in nobody
    assert "no person has id 999" in invoke("search", "--person", "999", "--index", index, ok=False).output


def test_people_values_are_tidied_and_an_index_without_people_says_so(tmp_path):
    from retrieval.storage.store import IndexStore

    assert Filters.parse(people=["  Joe   Biden ", "joe biden", "", 7]).people == ("Joe Biden", "7")
    assert Filters.parse(people="Alice").active and not Filters.parse().people
    store = IndexStore.open(str(tmp_path / "empty"), create=True)
    try:
        with pytest.raises(FilterError, match="has no people yet: run `retrieval people scan") as caught:
            Filters.parse(people="Alice").clauses(store.catalog)
        assert "\n" not in str(caught.value)
    finally:
        store.close()


# -- over HTTP -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(library):
    from fastapi.testclient import TestClient

    from retrieval.server.app import ServerSettings, create_app

    with TestClient(create_app(ServerSettings(indexes=[str(library[0])])), base_url="http://127.0.0.1") as c:
        yield c


@pytest.mark.slow
def test_http_people_strip_search_by_name_or_id_and_who_is_in_a_photo(client, library):
    _, _, ids = library
    people = client.get("/api/people").json()["people"]
    assert [(p["name"], p["count"]) for p in people] == [("Barack Obama", 3), ("Joe Biden", 1)]
    assert all(p["thumb"] == f"/api/faces/{p['face_id']}/thumb?index=idx" for p in people)
    body = client.get("/api/search", params=[("q", "a man"), ("person", "barack obama")]).json()
    assert sorted(Path(r["path"]).name for r in body["results"]) == sorted(OBAMA)
    assert body["query"]["people"] == ["barack obama"]
    by_id = client.get("/api/search", params=[("person", str(ids["Joe Biden"]))]).json()
    assert [r["path"] for r in by_id["results"]] == ["b/biden.jpg"]
    both = client.get("/api/search", params=[("q", "a man"), ("person", "Joe Biden"), ("person", "Barack Obama")]).json()
    assert both["results"] == [] and "together" in both["note"]
    posted = client.post("/api/search", json={"q": "a man", "person": ["Joe Biden"]}).json()
    assert [r["path"] for r in posted["results"]] == ["b/biden.jpg"]
    # An uploaded example image with a person: the image ranks, the person filters.
    uploaded = client.post("/api/search/upload", files={"file": ("q.jpg", face_photo("obama.jpg").read_bytes(), "image/jpeg")},
                           data={"person": ["Barack Obama"], "k": "10"}).json()
    assert sorted(Path(r["path"]).name for r in uploaded["results"]) == sorted(OBAMA)
    assert uploaded["results"][0]["path"] == "a/obama.jpg"  # the same photo first
    wrong = client.get("/api/search", params=[("q", "a man"), ("person", "Obama")])
    assert wrong.status_code == 400 and "did you mean Barack Obama?" in wrong.json()["error"]
    meta = client.get(f"/api/image/{by_id['results'][0]['id']}/meta").json()
    assert [(f["name"], f["person_id"]) for f in meta["people"]] == [("Joe Biden", ids["Joe Biden"])]
    coffee = next(r for r in client.get("/api/search", params={"q": "a cup of coffee", "k": 20}).json()["results"]
                  if r["path"].endswith("coffee.png"))
    assert client.get(f"/api/image/{coffee['id']}/meta").json()["people"] == []


@pytest.mark.slow
def test_face_thumbnails_by_id_only_and_from_inside_the_indexed_folders(client, library):
    _, photos, _ = library
    face = client.get("/api/people").json()["people"][1]  # Joe Biden
    got = client.get(face["thumb"] + "&size=64")
    assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
    picture = Image.open(io.BytesIO(got.content))
    assert picture.size == (64, 64)
    # The crop is the face: its box is well inside the picture, and skin, not the dark suit, fills its middle.
    middle = np.asarray(picture.convert("RGB"))[24:40, 24:40].mean(axis=(0, 1))
    assert middle[0] > 100 and middle[0] > middle[2], middle
    assert client.get(face["thumb"], headers={"if-none-match": got.headers["etag"]}).status_code in (200, 304)
    assert client.get("/api/faces/99999/thumb").status_code == 404
    assert client.get(f"/api/faces/{face['face_id']}/thumb?size=100").status_code == 422
    assert client.get("/api/faces/..%2Fetc/thumb").status_code in (404, 422)
    # Moved out of the indexed folders, the file is not served, face or not.
    moved = photos.parent / "biden-outside.jpg"
    shutil.move(photos / "b" / "biden.jpg", moved)
    try:
        gone = client.get(f"/api/faces/{face['face_id']}/thumb?size=128")
        assert gone.status_code == 404 and "no longer inside an indexed folder" in gone.json()["error"]
    finally:
        shutil.move(moved, photos / "b" / "biden.jpg")


# -- the page --------------------------------------------------------------------------------
@pytest.mark.slow
def test_page_strip_click_filters_and_the_viewer_names_who_is_in_the_photo(browser, library):
    from server_kit import ServerProcess

    server = ServerProcess("--index", str(library[0]))
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=server.url)
    problems: list[str] = []
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
        page.goto("/")
        strip = page.locator("#people .person")
        strip.first.wait_for()
        assert strip.all_text_contents() == ["Barack Obama", "Joe Biden"]
        page.locator("#people .person img").nth(1).evaluate("img => img.decode()")  # the face thumbnail loads
        strip.nth(1).click()  # Joe Biden: his photos, no words needed
        page.locator("#results .card").first.wait_for()
        page.wait_for_timeout(300)
        assert page.locator("#results .card").count() == 1
        assert "person=Joe+Biden" in page.url or "person=Joe%20Biden" in page.url
        assert strip.nth(1).get_attribute("aria-pressed") == "true"
        # Words with the person: still only his photo.
        page.fill("#q", "a man in a suit")
        page.press("#q", "Enter")
        page.wait_for_url("**q=a+man+in+a+suit**")
        page.wait_for_timeout(300)
        page.locator("#results .card").first.wait_for()
        assert page.locator("#results .card").count() == 1
        # Clicking the face again lifts the filter: the words alone find more.
        strip.nth(1).click()
        page.locator("#results .card").nth(2).wait_for()
        assert strip.nth(1).get_attribute("aria-pressed") == "false"
        # The viewer of an Obama photo names him; his face there filters by him.
        page.goto("/?person=Barack+Obama")
        page.locator("#results .card").nth(2).wait_for()
        page.locator("#results .card").first.click()
        chip = page.locator("#viewer-people .person")
        chip.first.wait_for()
        assert chip.all_text_contents() == ["Barack Obama"]
        page.goto("/?q=a+man")
        page.locator("#results .card").first.wait_for()
        page.goto("/?person=Joe+Biden")
        page.locator("#results .card").first.click()
        page.locator("#viewer-people .person").first.wait_for()
        page.locator("#viewer-people .person").first.click()
        page.wait_for_url("**person=Joe+Biden**")
        assert not page.locator("#viewer").evaluate("d => d.open")
    finally:
        context.close()
        server.stop()
    assert not problems, problems
