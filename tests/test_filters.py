"""Filtered search: each filter alone and combined against a brute-force filter-then-rank, the
three execution paths agreeing, empty results explained, bad values refused, and old indexes."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_image
from PIL import Image
from test_exif import tagged

from retrieval import ann
from retrieval.cli import main
from retrieval.ingest import pipeline as indexer
from retrieval.search import filters as filtered
from retrieval.search.filters import FilterError, Filters, FilterTuning
from retrieval.search.filters import columns as filter_columns
from retrieval.search.filters.columns import ColumnsCache
from retrieval.search.searcher import Searcher
from retrieval.storage.store import IndexStore

CAMERAS = [("Canon", "Canon EOS R5"), ("NIKON CORPORATION", "NIKON D750"), ("Apple", "iPhone 12"), (None, None)]
PLACES = [(48.8584, 2.2945), (48.8606, 2.3376), (35.6586, 139.7454), None]  # Eiffel tower, Louvre, Tokyo tower


def _library(folder: Path) -> None:
    """60 pictures in 3 folders with dates over four years, four cameras, three places and several sizes."""
    for i in range(60):
        size = [(64, 48), (128, 96), (96, 64)][i % 3]
        path = make_image(folder / f"f{i % 3}" / f"img{i:02d}.png", seed=100 + i, size=size)
        make, model = CAMERAS[i % 4]
        place = PLACES[(i // 4) % 4]
        year, month = 2021 + i % 4, 1 + (i * 5) % 12
        with Image.open(path) as im:
            data = tagged(
                im.convert("RGB"), make=make, model=model,
                taken=None if i % 10 == 9 else f"{year}:{month:02d}:{1 + i % 28:02d} {i % 24:02d}:30:00",
                lat=place[0] if place else None, lon=place[1] if place else None,
                orientation=6 if i % 7 == 0 else 1, fmt="PNG",
            )
        path.write_bytes(data)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    from conftest import ColorAligner

    root = tmp_path_factory.mktemp("lib")
    _library(root / "photos")
    store = IndexStore.open(root / "idx", create=True)
    indexer.run(store, ColorAligner(), [root / "photos"])
    yield store, root / "photos", ColorAligner()
    store.close()


def brute_force(store: IndexStore, query: np.ndarray, k: int, f: dict) -> list[int]:
    """Filter then rank, in plain Python over every catalog row: the reference for exactness."""
    rows = list(store.catalog.db.query("SELECT * FROM images"))
    vecs = {}
    for ids, chunk in store.catalog.image_vectors():
        vecs.update(zip(ids.tolist(), chunk))

    def passes(r) -> bool:
        turned = r["orientation"] in (5, 6, 7, 8)
        width, height = (r["height"], r["width"]) if turned else (r["width"], r["height"])
        if "after" in f and not r["taken"] >= f["after"]:
            return False
        if "before" in f and not r["taken"] < f["before"]:
            return False
        if f.get("date_source") == "exif" and ("after" in f or "before" in f) and r["taken_source"] != "exif":
            return False
        if "folders" in f and not any(Path(r["path"]).is_relative_to(d) for d in f["folders"]):
            return False
        if "camera" in f and f["camera"].lower() not in f"{r['camera_make'] or ''}\n{r['camera_model'] or ''}".lower():
            return False
        if "near" in f:
            lat, lon, km = f["near"]
            if r["lat"] is None or _km(lat, lon, r["lat"], r["lon"]) > km:
                return False
        if "min_width" in f and width < f["min_width"]:
            return False
        return "min_height" not in f or height >= f["min_height"]

    scored = sorted((-float(vecs[r["id"]] @ query), r["id"]) for r in rows if passes(r))
    return [i for _, i in scored[:k]]


def _km(lat1, lon1, lat2, lon2) -> float:
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    cos = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return 6371.0088 * math.acos(max(-1.0, min(1.0, cos)))


def run(
    store: IndexStore, query: np.ndarray, k: int, filters: Filters, tuning: FilterTuning | None = None,
    searcher: Searcher | None = None,
) -> filtered.FilterResult:
    catalog = store.catalog
    with catalog.snapshot():
        index = ann.read(store.faiss_path("images", catalog.generation))
        return filtered.search(
            catalog, index, query[None], k, filters, factory=catalog.get_meta("index_factory"), tuning=tuning,
            searcher=searcher,
        )


def engine(store: IndexStore, query: np.ndarray, k: int, filters: Filters, searcher: Searcher | None = None) -> list[int]:
    return _ids(run(store, query, k, filters, searcher=searcher))


def _ids(found: filtered.FilterResult) -> list[int]:
    return [int(i) for i in found.ids[0] if i >= 0]


def _cases(photos: Path) -> dict[str, dict]:
    return {
        "after": {"after": "2023-01-01"},
        "before": {"before": "2022-06-15T12:00"},
        "summer": {"after": "2022-06-01", "before": "2022-09-01"},
        "after, exif dates": {"after": "2023-01-01", "date_source": "exif"},
        "folder": {"folders": [str(photos / "f1")]},
        "two folders": {"folders": [str(photos / "f0"), str(photos / "f2")]},
        "camera": {"camera": "nikon"},
        "camera model": {"camera": "iphone"},
        "near paris": {"near": (48.8566, 2.3522, 10)},
        "near tokyo": {"near": (35.68, 139.76, 5)},
        "min width": {"min_width": 90},
        "min height": {"min_height": 90},
        "combined": {"after": "2021-06-01", "camera": "canon", "near": (48.86, 2.3, 20), "min_width": 60},
        "combined folder": {"folders": [str(photos / "f1")], "before": "2024-01-01", "min_height": 60},
    }


def _filters(case: dict) -> Filters:
    return Filters.parse(**case)


def _reference_args(case: dict) -> dict:
    f = _filters(case)
    out = {k: v for k, v in {"after": f.after, "before": f.before, "camera": f.camera, "near": f.near,
                             "min_width": f.min_width, "min_height": f.min_height, "date_source": f.date_source}.items()
           if v is not None}
    if f.folders:
        out["folders"] = [Path(p) for p in f.folders]
    return out


@pytest.mark.parametrize("name", list(_cases(Path("/x")).keys()))
def test_each_filter_matches_brute_force(library, name):
    store, photos, aligner = library
    case = _cases(photos)[name]
    rng = np.random.default_rng(len(name))
    for _ in range(3):
        query = rng.normal(size=aligner.dim).astype(np.float32)
        query /= np.linalg.norm(query)
        want = brute_force(store, query, 7, _reference_args(case))
        assert want, f"the test library should have images passing {name}"
        assert engine(store, query, 7, _filters(case)) == want


@pytest.mark.parametrize("name", ["after", "after, exif dates", "folder", "camera", "near paris", "combined"])
def test_execution_paths_agree(library, name):
    """Scoring the passing images exactly, searching the index restricted to them, and over-fetching
    candidates then checking them give the same ranking."""
    store, photos, aligner = library
    filters = _filters(_cases(photos)[name])
    query = np.random.default_rng(7).normal(size=aligner.dim).astype(np.float32)
    query /= np.linalg.norm(query)
    want = brute_force(store, query, 5, _reference_args(_cases(photos)[name]))
    for path, tuning in _all_paths().items():
        found = run(store, query, 5, filters, tuning)
        assert _ids(found) == want, path
        assert found.chosen == path.split()[-1]
        assert found.evaluated == ("columns" if path.startswith("mask") else "sql")


def _all_paths() -> dict[str, FilterTuning]:
    """Every execution path, forced: on the in-memory columns (mask) and in SQL."""
    return {
        "mask exact": FilterTuning(mask_exact_max=10_000, wait_for_columns=True),
        "mask restrict": FilterTuning(mask_exact_max=0, mask_overfetch_share=2.0, wait_for_columns=True),
        "mask overfetch": FilterTuning(
            mask_exact_max=0, mask_overfetch_share=0.0, mask_overfetch_share_ivf=0.0, wait_for_columns=True
        ),
        "sql exact": FilterTuning(columns=False, exact_max=10_000, restrict_max=10_000, sample=10),
        "sql restrict": FilterTuning(columns=False, exact_max=0, restrict_max=10_000, sample=10),
        "sql overfetch": FilterTuning(columns=False, exact_max=0, restrict_max=0, sample=10),
    }


def test_nothing_passes_says_which_filter(library):
    store, _, _ = library
    query = np.ones(48, np.float32) / math.sqrt(48)
    for case, named in [
        ({"camera": "leica"}, "--camera 'leica'"),
        ({"after": "2030-01-01"}, "--after 2030-01-01"),
        ({"near": "-33.86,151.21,50"}, "--near -33.86"),
    ]:
        f = Filters.parse(**case)
        assert engine(store, query, 5, f) == []
        why = filtered.why_empty(store.catalog, f)
        assert why.startswith("no image passes " + named)
    # Canon photos are dated 2021 in the test library, 2024 ones come from other cameras.
    together = Filters.parse(camera="canon", after="2024-01-01")
    assert engine(store, query, 5, together) == []
    assert filtered.why_empty(store.catalog, together).endswith("together (each passes some on its own)")


@pytest.mark.parametrize("args, message", [
    ({"after": "last summer"}, "--after 'last summer' is not a date"),
    ({"after": "2023-09-01", "before": "2023-06-01"}, "is not earlier than --before"),
    ({"near": "48.8,2.3"}, "give LAT,LON,KM"),
    ({"near": "95,2.3,5"}, "latitude must be within"),
    ({"near": "48.8,2.3,-1"}, "positive number of kilometres"),
    ({"min_width": "wide"}, "is not a whole number"),
    ({"min_height": 0}, "must be at least 1"),
])
def test_bad_values_are_one_line_errors(args, message):
    with pytest.raises(FilterError, match=message) as caught:
        Filters.parse(**args)
    assert "\n" not in str(caught.value)


def test_cli_bad_filter_and_empty_result(library, monkeypatch):
    store, photos, aligner = library
    runner = CliRunner()
    bad = runner.invoke(main, ["search", "x", "--index", str(store.folder), "--near", "nowhere"])
    assert bad.exit_code == 2  # a usage error, as click reports a bad value of any option
    assert "Invalid value for '--near': 'nowhere'" in bad.output and "Traceback" not in bad.output
    import retrieval.aligners as aligners

    monkeypatch.setattr(aligners, "load_aligner", lambda *args, **kwargs: aligner)
    monkeypatch.setattr(IndexStore, "refuse_other_early", lambda *args, **kwargs: None)
    empty = runner.invoke(main, ["search", "x", "--index", str(store.folder), "--camera", "hasselblad"])
    assert empty.exit_code == 0, empty.output
    assert "no results: no image passes --camera 'hasselblad'" in empty.output
    found = runner.invoke(main, ["search", "x", "--index", str(store.folder), "--camera", "nikon", "--json", "-k", "3"])
    import json

    data = json.loads(found.output)
    assert data["query"]["camera"] == "nikon" and len(data["results"]) == 3


def test_date_source_says_which_dates_pass_and_json_marks_file_dates(library, monkeypatch):
    """--after with the default date source passes pictures dated by their file's time too, and --json marks
    them; --date-source exif (CLI, Python API, HTTP) keeps only photos with an EXIF date."""
    import json

    from server_kit import client

    import retrieval.aligners as aligners
    from retrieval.server.app import ServerSettings

    store, _, aligner = library
    sources = dict(store.catalog.db.execute("SELECT id, taken_source FROM images").fetchall())
    undated = {i for i, source in sources.items() if source != "exif"}
    assert undated and len(undated) < len(sources)  # the test library has pictures without an EXIF date
    runner = CliRunner()
    help_text = " ".join(runner.invoke(main, ["search", "--help"]).output.split())
    assert "--date-source [any|exif]" in help_text and "else the file's modification time" in help_text
    monkeypatch.setattr(aligners, "load_aligner", lambda *args, **kwargs: aligner)
    monkeypatch.setattr(IndexStore, "refuse_other_early", lambda *args, **kwargs: None)

    def search(*args: str) -> dict:
        found = runner.invoke(main, ["search", "x", "--index", str(store.folder), "--json", "-k", "60", *args])
        assert found.exit_code == 0, found.output
        return json.loads(found.output)

    every = search("--after", "2000-01-01")
    assert every["query"]["date_source"] == "any"
    assert {r["id"]: r["date_source"] for r in every["results"]} == {
        i: "file" if i in undated else "exif" for i in sources
    }
    assert all(r["taken"] >= "2000" for r in every["results"])
    exif = search("--after", "2000-01-01", "--date-source", "exif")
    assert exif["query"]["date_source"] == "exif"
    assert {r["id"] for r in exif["results"]} == set(sources) - undated
    assert all("date_source" not in r for r in search()["results"])  # no date filter: no dates in the hits
    query = aligner.encode_texts(["x"])[0]
    on_exif = Filters.parse(after="2000-01-01", date_source="exif")
    assert set(engine(store, query, 60, on_exif)) == set(sources) - undated
    with pytest.raises(FilterError, match="--date-source 'camera'"):
        Filters.parse(after="2000", date_source="camera")
    with client(ServerSettings(indexes=[str(store.folder)], batch_window_ms=0), aligner=aligner) as api:
        got = api.get("/api/search", params={"q": "x", "after": "2000-01-01", "date_source": "exif", "k": 60})
        assert got.status_code == 200, got.text
        assert got.json()["query"]["date_source"] == "exif"
        assert {r["id"] for r in got.json()["results"]} == set(sources) - undated
        assert api.get("/api/search", params={"q": "x", "date_source": "camera"}).status_code in (400, 422)


def _downgrade_to_schema_1(store: IndexStore) -> None:
    """Turn a catalog into what the code before photo metadata wrote (schema 1)."""
    from retrieval.storage.catalog import PHOTO_COLUMNS

    conn = store.catalog.db.conn
    for index in ("images_taken", "images_lat", "images_make", "images_model"):
        conn.execute(f"DROP INDEX {index}")
    conn.execute("DROP TABLE cameras")
    for column in PHOTO_COLUMNS:
        conn.execute(f"ALTER TABLE images DROP COLUMN {column}")
    conn.execute("ALTER TABLE vectors DROP COLUMN sameness")  # schema 3's
    conn.execute("DROP INDEX vectors_video")  # schema 4's videos (retrieval/storage/frames.py)
    conn.execute("ALTER TABLE vectors DROP COLUMN frames")
    conn.execute("DROP TABLE frames")
    for column in ("companions", "motion"):  # schema 4's photo pairs and Live Photos
        conn.execute(f"ALTER TABLE images DROP COLUMN {column}")
    for table in ("faces", "people", "face_scans"):  # schema 5's people
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    store.catalog.set_meta(schema_version=1)


def test_old_index_gains_metadata_without_encoding(tmp_path, color_aligner):
    from conftest import ColorAligner

    from retrieval.storage.catalog import SCHEMA_VERSION

    photos = tmp_path / "photos"
    _library(photos)
    store = IndexStore.open(tmp_path / "idx", create=True)
    indexer.run(store, color_aligner, [photos])
    _downgrade_to_schema_1(store)
    columns = {r[1] for r in store.catalog.db.execute("PRAGMA table_info(images)")}
    assert "taken" not in columns and store.catalog.schema_version == 1
    generation = store.catalog.generation
    query = np.ones(48, np.float32) / math.sqrt(48)
    # A reader of the old catalog: plain searches work, a metadata filter says what to do.
    from retrieval.search.query import search_vectors

    assert len(search_vectors(store, query[None], 5)[0]) == 5
    assert engine(store, query, 5, Filters.parse(min_width=90))  # sizes predate the metadata
    with pytest.raises(FilterError, match="run `retrieval index"):
        engine(store, query, 5, Filters.parse(camera="canon"))
    from retrieval.search.filters import photo_counts

    assert photo_counts(store.catalog) == {"with_date": None, "with_place": None, "with_camera": None}

    fresh = ColorAligner()
    summary = indexer.run(store, fresh, [photos])
    assert fresh.calls == 0 and summary.encoded == 0  # metadata only: nothing decoded for the model
    assert summary.added == summary.removed == 0
    assert store.catalog.schema_version == SCHEMA_VERSION and store.catalog.generation == generation + 1
    counts = photo_counts(store.catalog)
    assert counts == {
        "with_date": sum(i % 10 != 9 for i in range(60)),
        "with_place": sum(PLACES[(i // 4) % 4] is not None for i in range(60)),
        "with_camera": sum(CAMERAS[i % 4][0] is not None for i in range(60)),
    }
    want = brute_force(store, query, 5, {"camera": "canon"})
    assert engine(store, query, 5, Filters.parse(camera="canon")) == want
    # A second run finds nothing to do.
    again = indexer.run(store, fresh, [photos])
    assert again.generation == store.catalog.generation == generation + 1
    store.close()


def test_server_search_takes_the_same_filters(library):
    """GET and POST /api/search accept the filter fields, echo them, and explain an empty result."""
    from server_kit import client

    from retrieval.server.app import ServerSettings

    store, photos, aligner = library
    with client(ServerSettings(indexes=[str(store.folder)], batch_window_ms=0), aligner=aligner) as api:
        got = api.get("/api/search", params={"q": "x", "camera": "nikon", "after": "2022-01-01", "k": 50})
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["query"]["camera"] == "nikon" and body["query"]["after"] == "2022-01-01T00:00:00"
        rows = {r["id"]: r for r in store.catalog.db.query("SELECT id, camera_model, taken FROM images")}
        assert body["results"] and all(
            "NIKON" in rows[r["id"]]["camera_model"] and rows[r["id"]]["taken"] >= "2022" for r in body["results"]
        )
        query = aligner.encode_texts(["x"])[0]
        want = brute_force(store, query, 50, {"camera": "nikon", "after": "2022-01-01T00:00:00"})
        assert [r["id"] for r in body["results"]] == want
        posted = api.post("/api/search", json={"q": "x", "folder": [str(photos / "f1")], "min_width": 90})
        assert posted.status_code == 200 and all("/f1/" in r["path"] or r["path"].startswith("f1/")
                                                 for r in posted.json()["results"])
        empty = api.get("/api/search", params={"q": "x", "camera": "hasselblad"}).json()
        assert empty["results"] == [] and empty["note"].startswith("no image passes --camera")
        bad = api.get("/api/search", params={"q": "x", "near": "here"})
        assert bad.status_code == 400 and bad.json()["error"].startswith("--near 'here'")


def test_server_hits_carry_the_date_and_its_source_with_a_date_filter(library):
    """As `search --json` and the Python API do (issue 24, item 4): with a date filter each hit of
    /api/search says the date it passed with and "exif" or "file"; without one the hits are as before."""
    from server_kit import client

    from retrieval.server.app import ServerSettings

    store, _, aligner = library
    dates = {i: (taken, source) for i, taken, source in store.catalog.db.execute("SELECT id, taken, taken_source FROM images")}
    with client(ServerSettings(indexes=[str(store.folder)], batch_window_ms=0), aligner=aligner) as api:
        for fields in ({"after": "2000-01-01"}, {"before": "2100", "date_source": "exif"}):
            got = api.post("/api/search", json={"q": "x", "k": 60, **fields})
            assert got.status_code == 200, got.text
            hits = got.json()["results"]
            assert hits and {h["id"]: (h["taken"], h["date_source"]) for h in hits} == {
                h["id"]: (dates[h["id"]][0], "exif" if dates[h["id"]][1] == "exif" else "file") for h in hits
            }
        assert {h["date_source"] for h in api.get("/api/search", params={"q": "x", "k": 60, "after": "2000"}).json()["results"]} \
            == {"exif", "file"}
        plain = api.get("/api/search", params={"q": "x", "camera": "nikon"}).json()["results"]  # no date filter
        assert plain and all("taken" not in h and "date_source" not in h for h in plain)
        result = api.get("/openapi.json").json()["components"]["schemas"]["Result"]["properties"]
        assert result["date_source"]["anyOf"][0] == {"type": "string", "enum": ["exif", "file"]}
        assert "taken" in result


def test_inverted_file_paths_match_brute_force(library):
    """Over an inverted file (the engine's index above 200,000 images) each path is still the
    best k among the passing images: the restricted search widens nprobe by 1/share."""
    store, photos, aligner = library
    catalog = store.catalog
    ids, vectors = (np.concatenate(x) for x in zip(*catalog.image_vectors()))
    ivf, _ = ann.build(ids, vectors, factory="IVF4,Flat")
    ivf.nprobe = 1
    assert ann.inverted(ivf)
    query = np.random.default_rng(3).normal(size=aligner.dim).astype(np.float32)
    query /= np.linalg.norm(query)
    for name in ("after", "camera", "combined"):
        case = _cases(photos)[name]
        want = brute_force(store, query, 5, _reference_args(case))
        for path, tuning in {**_all_paths(), "default": FilterTuning(sample=10)}.items():
            with catalog.snapshot():
                found = filtered.search(catalog, ivf, query[None], 5, _filters(case), tuning=tuning)
            assert _ids(found) == want, (name, path, found.chosen)
            assert path == "default" or (found.chosen, found.evaluated[0]) == (path.split()[-1], path[0].replace("m", "c"))


# -- the in-memory columns (retrieval/search/filters/columns.py) -------------------------------------
def _sql_ids(store: IndexStore, filters: Filters) -> list[int]:
    sql, args = filtered.where(filters.clauses(store.catalog))
    return sorted(r[0] for r in store.catalog.db.execute(f"SELECT id FROM images WHERE {sql}", args))


@pytest.mark.parametrize("case", [
    *({"name": n} for n in _cases(Path("/x"))),
    {"near": (35.0, 179.9, 300)}, {"near": (48.86, 2.35, 20_000)}, {"near": (89.9, 0.0, 50)},
    {"camera": "o"}, {"camera": "CANON"}, {"folders": ["/"]}, {"before": "2021"}, {"min_width": 97, "min_height": 48},
])
def test_column_mask_selects_what_sql_selects(library, case):
    """Each filter on the cached columns passes exactly the images its SQL passes."""
    store, photos, _ = library
    filters = _filters(_cases(photos)[case["name"]] if "name" in case else case)
    with store.catalog.snapshot():
        mask = ColumnsCache().columns_for(store.catalog, wait=True).mask(filters)
    assert mask is not None
    assert np.flatnonzero(mask).tolist() == _sql_ids(store, filters)


def test_columns_are_read_once_per_generation(tmp_path, color_aligner):
    """The first filtered search of a generation runs in SQL and reads the columns behind it; the
    next ones use them; a new generation (an index run that changed files) is read again."""
    photos = tmp_path / "photos"
    _library(photos)
    store = IndexStore.open(tmp_path / "idx", create=True)
    indexer.run(store, color_aligner, [photos])
    catalog = store.catalog
    query = np.ones(48, np.float32) / math.sqrt(48)
    leica, searcher = Filters.parse(camera="leica"), Searcher()
    found = run(store, query, 5, leica, searcher=searcher)
    assert _ids(found) == [] and found.evaluated == "sql"
    first = _columns_when_read(searcher, catalog)
    found = run(store, query, 5, leica, searcher=searcher)
    assert _ids(found) == [] and found.evaluated == "columns"
    with catalog.snapshot():
        assert searcher.columns_for(catalog) is first
    added = make_image(photos / "f0" / "new.png", seed=999, size=(80, 60))
    with Image.open(added) as im:
        added.write_bytes(tagged(im.convert("RGB"), make="Leica Camera AG", model="Q2", taken="2024:05:01 10:00:00", fmt="PNG"))
    (photos / "f1" / "img01.png").unlink()
    indexer.run(store, color_aligner, [photos])
    new_id = catalog.db.execute("SELECT id FROM images WHERE path LIKE '%new.png'").fetchone()[0]
    found = run(store, query, 5, leica, searcher=searcher)
    assert _ids(found) == [new_id] and found.evaluated == "sql"  # the old columns are not used
    second = _columns_when_read(searcher, catalog)
    assert second is not first and second.generation == first.generation + 1
    found = run(store, query, 5, leica, searcher=searcher)
    assert _ids(found) == [new_id] and found.evaluated == "columns"
    everything = Filters.parse(after="2000-01-01")
    want = brute_force(store, query, 100, {"after": everything.after})
    assert engine(store, query, 100, everything, searcher) == want
    # Without a searcher nothing is kept: the filter runs in SQL.
    assert run(store, query, 5, leica).evaluated == "sql"
    store.close()


def _columns_when_read(searcher: Searcher, catalog, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with catalog.snapshot():
            columns = searcher.columns_for(catalog)
        if columns is not None:
            return columns
        time.sleep(0.05)
    raise AssertionError("the filter columns were not read in time")


def test_dates_not_in_canonical_form_fall_back_to_sql(library):
    store, _, aligner = library
    catalog = store.catalog
    odd = Filters.parse(after="2022-01-01")
    with catalog.snapshot():
        columns = filter_columns.read_columns(catalog.db.conn, catalog.generation, True)
    assert columns.taken is not None
    conn = catalog.db.conn
    first, taken = conn.execute("SELECT id, taken FROM images WHERE taken IS NOT NULL LIMIT 1").fetchone()
    conn.execute("UPDATE images SET taken = ? WHERE id = ?", [taken[:10], first])  # a date without its time
    try:
        with catalog.snapshot():
            columns = filter_columns.read_columns(catalog.db.conn, catalog.generation, True)
        assert columns.taken is None and columns.mask(odd) is None
        assert columns.mask(Filters.parse(camera="nikon")) is not None  # other filters still use the columns
    finally:
        conn.execute("UPDATE images SET taken = ? WHERE id = ?", [taken, first])


def test_stored_vectors_are_the_catalogs(library):
    """The exact path reads vectors from the index's own flat codes: the catalog's, bit for bit."""
    store, _, _ = library
    ids, vectors = (np.concatenate(x) for x in zip(*store.catalog.image_vectors()))
    picks = ids[::7][::-1].copy()
    want = vectors[np.searchsorted(ids, picks)]
    for factory in ("IDMap2,Flat", "IVF4,Flat"):
        index, _ = ann.build(ids, vectors, factory=factory)
        assert np.array_equal(ann.stored_vectors(index, picks), want), factory
    sq8, _ = ann.build(ids, vectors, factory="IDMap2,SQ8")
    assert ann.stored_vectors(sq8, picks) is None  # 8-bit codes: the catalog's vectors are used


def test_lookup_by_comparisons_and_by_gather_agree():
    """A filter passing few cameras or folders compares positions; many, a table gather: same mask."""
    positions = np.random.default_rng(0).integers(-1, 20, 5_000).astype(np.int8)
    for hits in ([3], [0, 5, 19], list(range(0, 20, 2))):
        table = [i in hits for i in range(20)]
        want = np.array([p >= 0 and table[p] for p in positions.tolist()])
        assert np.array_equal(filter_columns._lookup(table, positions), want), hits


def test_eight_bit_codes_score_the_catalogs_vectors(library):
    """Over 8-bit codes the exact path scores the catalog's float32 vectors, not the codes."""
    store, photos, aligner = library
    catalog = store.catalog
    ids, vectors = (np.concatenate(x) for x in zip(*catalog.image_vectors()))
    sq8, _ = ann.build(ids, vectors, factory="IDMap2,SQ8")
    query = np.random.default_rng(5).normal(size=aligner.dim).astype(np.float32)
    query /= np.linalg.norm(query)
    for name in ("after", "camera", "combined"):
        case = _cases(photos)[name]
        tuning = FilterTuning(mask_exact_max=10_000, wait_for_columns=True)
        with catalog.snapshot():
            found = filtered.search(catalog, sq8, query[None], 5, _filters(case), factory="IDMap2,SQ8", tuning=tuning)
        scores, got = found.scores, found.ids
        assert found.chosen == "exact" and [int(i) for i in got[0]] == brute_force(store, query, 5, _reference_args(case))
        exact = {int(i): float(v @ query) for i, v in zip(ids, vectors)}
        assert np.allclose(scores[0], [exact[int(i)] for i in got[0]], atol=1e-6)


def test_broad_filter_over_fetches_from_the_8_bit_copy():
    """A long-lived caller's exact index has an 8-bit copy (retrieval/ann/quickscan.py); a broad
    filter over-fetches from it and keeps the passing ids: the passing best k, exact cosines."""
    from retrieval.ann.quickscan import QuickScan

    rng = np.random.default_rng(11)
    n = ann.DEFAULT.quick_min + 1_000
    vectors = rng.normal(size=(n, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, n + 1)
    exact, _ = ann.build(ids, vectors, factory="IDMap2,Flat")
    quick = QuickScan(exact)
    mask = np.zeros(n + 1, bool)
    mask[1:] = rng.random(n) < 0.4
    queries = vectors[:5] + rng.normal(0, 0.3, (5, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, got = filtered.execute._overfetch_masked(exact, queries, 10, mask, 0.4, "IDMap2,Flat", None, None, quick)
    for q, s, row in zip(queries, scores, got):
        passing = np.flatnonzero(mask)
        truth = passing[np.argsort(-(vectors[passing - 1] @ q), kind="stable")[:10]]
        assert row.tolist() == truth.tolist()
        assert np.allclose(s, vectors[row - 1] @ q, atol=1e-6)
