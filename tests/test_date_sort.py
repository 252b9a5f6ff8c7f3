"""Search results sorted by date, with a relevance cutoff: the order's rules on their own, then the
CLI, the Python API and the HTTP API over real photos with known EXIF dates and the real
`default` aligner (docs/search.md#sorted-by-date)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REAL_PHOTOS, skimage_photo
from PIL import Image
from test_exif import tagged

from retrieval.cli import main
from retrieval.search import relevance
from retrieval.search.ordering import CANDIDATES, Order, OrderError
from retrieval.search.query import Hit

#: Each real photo's EXIF date, in no order of the photos' names or scores.
TAKEN = {
    "astronaut.png": "2019:03:04 10:00:00", "chelsea.png": "2023:11:20 08:15:00", "coffee.png": "2021:07:01 12:00:00",
    "rocket.jpg": "2024:01:05 18:30:00", "motorcycle_left.png": "2018:12:24 23:59:00", "camera.png": "2022:05:17 09:45:00",
}
#: A scan without EXIF: its file time, later than every EXIF date, is its date for `--date-source any`.
UNDATED = "page.png"
FILE_TIME = datetime(2030, 6, 15, 12, 0, 0)


# -- the order on its own (no model) --------------------------------------------------------
def _hit(i: int, score: float, taken: str | None, source: str | None = "exif") -> Hit:
    return Hit(rank=i, id=i, score=score, path=f"/p/{i}.jpg", taken=taken, date_source=source if taken else None)


def test_order_cuts_sorts_and_ranks_again():
    hits = [_hit(1, 0.9, "2020-01-01T00:00:00"), _hit(2, 0.8, None), _hit(3, 0.7, "2022-01-01T00:00:00", "file"),
            _hit(4, 0.6, "2021-01-01T00:00:00"), _hit(5, 0.1, "2030-01-01T00:00:00")]
    newest = Order.parse(sort="date", min_score=0.5).apply(hits, 10)
    assert [h.id for h in newest] == [3, 4, 1, 2]  # 5 is under the cutoff; the undated one last
    assert [h.id for h in Order.parse(sort="date-asc", min_score=0.5).apply(hits, 10)] == [1, 4, 3, 2]
    # Only EXIF dates count: the file-dated one joins the undated, after the dated, in score order.
    assert [h.id for h in Order.parse(sort="date", min_score=0.5, date_source="exif").apply(hits, 10)] == [4, 1, 2, 3]
    assert [h.id for h in Order.parse(min_score=0.65).apply(hits, 10)] == [1, 2, 3]
    assert [h.id for h in Order.parse(sort="date", min_score=0.5).apply(hits, 2)] == [3, 4]


def test_order_defaults_and_refusals():
    assert Order.parse().plain and Order.parse().fetch(10) == 10
    assert Order.parse(sort="date", min_score=0.2).fetch(10) == CANDIDATES
    assert Order.parse(sort="date", min_score=0.2).fetch(5000) == 5000
    # A date sort without a cutoff takes the model's measured one; an unmeasured model cuts nothing.
    assert Order.parse(sort="date", model="default").min_score == relevance.date_cutoff("default") is not None
    assert Order.parse(sort="date", model="open_clip:ViT-B-32/openai").min_score is None
    assert Order.parse(sort="score", model="default").min_score is None
    assert Order.parse(sort="date", min_score="0.1", model="default").min_score == 0.1
    for bad in ({"sort": "name"}, {"min_score": "high"}, {"min_score": "nan"}, {"date_source": "gps"}):
        with pytest.raises(OrderError):
            Order.parse(**bad)


# -- real photos with known dates, the real default aligner --------------------------------
@pytest.fixture(scope="module")
def dated_index():
    from retrieval.api import build_index
    from retrieval.ingest.pipeline import IndexSettings

    assert set(TAKEN) == set(REAL_PHOTOS)
    scratch = Path(tempfile.mkdtemp(prefix="retrieval-date-sort-"))
    photos = scratch / "photos"
    photos.mkdir()
    for name, taken in TAKEN.items():
        with Image.open(skimage_photo(name)) as im:
            (photos / (Path(name).stem + ".jpg")).write_bytes(tagged(im.convert("RGB"), taken=taken))
    undated = photos / UNDATED
    shutil.copyfile(skimage_photo(UNDATED), undated)
    os.utime(undated, (FILE_TIME.timestamp(), FILE_TIME.timestamp()))
    build_index([photos], index=str(scratch / "idx"), settings=IndexSettings(workers=0))
    yield scratch / "idx"
    shutil.rmtree(scratch, ignore_errors=True)


def _newest_first() -> list[str]:
    """File names, newest first: the undated scan by its file time, then the EXIF dates."""
    by_date = sorted(TAKEN, key=TAKEN.__getitem__, reverse=True)
    return [UNDATED] + [Path(name).stem + ".jpg" for name in by_date]


def _search(index: Path, *args: str) -> dict:
    result = CliRunner().invoke(main, ["search", *args, "--index", str(index), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _names(out: dict) -> list[str]:
    return [Path(r["path"]).name for r in out["results"]]


@pytest.mark.slow
def test_cli_sorts_by_date_newest_first_and_oldest_first(dated_index):
    newest = _search(dated_index, "a photo", "--sort", "date", "--min-score", "-1", "-k", "20")
    assert _names(newest) == _newest_first()
    assert [r["rank"] for r in newest["results"]] == list(range(1, 8))
    assert newest["query"]["sort"] == "date" and newest["query"]["min_score"] == -1
    assert newest["results"][0]["date_source"] == "file" and newest["results"][1]["date_source"] == "exif"
    assert newest["results"][1]["taken"] == "2024-01-05T18:30:00"
    oldest = _search(dated_index, "a photo", "--sort", "date-asc", "--min-score", "-1", "-k", "20")
    assert _names(oldest) == _newest_first()[::-1]
    # k after the sort: the newest three of all the matches, not the best three by score sorted.
    assert _names(_search(dated_index, "a photo", "--sort", "date", "--min-score", "-1", "-k", "3")) == _newest_first()[:3]
    # With EXIF dates only, the scan has no date: it comes last.
    exif = _search(dated_index, "a photo", "--sort", "date", "--min-score", "-1", "--date-source", "exif", "-k", "20")
    assert _names(exif) == _newest_first()[1:] + [UNDATED]


@pytest.mark.slow
def test_cli_min_score_cuts_weak_matches(dated_index):
    by_score = _search(dated_index, "a cat", "-k", "20")["results"]
    assert Path(by_score[0]["path"]).name == "chelsea.jpg"
    cutoff = by_score[2]["score"]
    kept = _search(dated_index, "a cat", "--min-score", str(cutoff), "-k", "20")
    assert [r["id"] for r in kept["results"]] == [r["id"] for r in by_score if r["score"] >= cutoff]
    assert len(kept["results"]) < len(by_score)
    # A date sort without --min-score: the cutoff measured for `default`, said in the query.
    dated = _search(dated_index, "a cat", "--sort", "date", "-k", "20")
    default_cutoff = relevance.date_cutoff("default")
    assert dated["query"]["min_score"] == default_cutoff
    assert all(r["score"] >= default_cutoff for r in dated["results"])
    assert {r["id"] for r in dated["results"]} == {r["id"] for r in by_score if r["score"] >= default_cutoff}
    assert "chelsea.jpg" in _names(dated)
    nothing = CliRunner().invoke(main, ["search", "a cat", "--min-score", "0.99", "--index", str(dated_index)])
    assert nothing.exit_code == 0 and "no match scores 0.99 or more" in nothing.output


@pytest.mark.slow
def test_api_and_http_give_the_cli_order(dated_index):
    from server_kit import client

    from retrieval.api import open_index
    from retrieval.server.app import ServerSettings

    http = client(ServerSettings(indexes=[str(dated_index)]))
    index = open_index(str(dated_index))
    try:
        for sort in ("date", "date-asc"):
            cli = _search(dated_index, "a photo", "--sort", sort, "--min-score", "-1", "-k", "20")
            hits = index.search("a photo", k=20, sort=sort, min_score=-1)
            body = http.get("/api/search", params={"q": "a photo", "k": 20, "sort": sort, "min_score": -1}).json()
            assert [h.id for h in hits] == [r["id"] for r in body["results"]] == [r["id"] for r in cli["results"]]
            assert [r["taken"] for r in body["results"]] == [h.taken for h in hits]
            assert body["query"]["sort"] == sort and body["query"]["min_score"] == -1
        # Pages of a date sort follow on.
        first = http.get("/api/search", params={"q": "a photo", "k": 3, "sort": "date", "min_score": -1}).json()
        second = http.get("/api/search", params={"q": "a photo", "k": 3, "sort": "date", "min_score": -1,
                                                 "offset": first["next_offset"]}).json()
        assert [Path(r["path"]).name for r in first["results"] + second["results"]] == _newest_first()[:6]
        # The default cutoff, in the query echo and the index summary.
        default = http.get("/api/search", params={"q": "a cat", "sort": "date"}).json()
        assert default["query"]["min_score"] == relevance.date_cutoff("default")
        assert [h.id for h in index.search("a cat", k=24, sort="date")] == [r["id"] for r in default["results"]]
        [summary] = http.get("/api/indexes").json()["indexes"]
        assert summary["date_cutoff"] == relevance.date_cutoff("default")
        bad = http.get("/api/search", params={"q": "a cat", "sort": "name"})
        assert bad.status_code == 422
        captions = http.get("/api/search", params={"q": "a cat", "sort": "date", "target": "texts"})
        assert captions.status_code == 400 and "captions have no dates" in captions.json()["error"]
        names = {p["name"] for p in http.get("/openapi.json").json()["paths"]["/api/search"]["get"]["parameters"]}
        assert {"sort", "min_score"} <= names
    finally:
        index.close()
        http.close()
