"""The HTTP API over a real index: every route, paging, fusion, more-like-this, uploads, generations.

Model-dependent behaviour uses the real packaged `default` aligner on real photos
(server_kit.photo_index); the micro-batching plumbing uses the ColorAligner.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import sys
import threading

import httpx
import pytest
from conftest import ColorAligner, make_image, skimage_photo
from PIL import Image
from server_kit import CAPTIONS, GENERATED, client, color_index, photo_index, photo_server, served

from retrieval.server.app import ServerSettings

pytestmark = pytest.mark.slow  # the real default aligner


@pytest.fixture(scope="module")
def api():
    index, _ = photo_index()
    return client(ServerSettings(indexes=[str(index)]))


def ids_of(response) -> list[int]:
    return [r["id"] for r in response.json()["results"]]


def find(api, name: str) -> int:
    """The id of a photo, by file name (searching everything)."""
    results = api.get("/api/search", params={"q": "a photo", "k": 200}).json()["results"]
    return next(r["id"] for r in results if r["path"].endswith(name))


def test_health_indexes_and_info(api):
    assert api.get("/api/health").json() == {"status": "ok", "indexes": 1}
    [summary] = api.get("/api/indexes").json()["indexes"]
    assert summary["name"] == "idx" and summary["images"] == 6 + GENERATED
    assert summary["captions"] == len(CAPTIONS) and summary["model"] == "default" and summary["generation"] >= 1
    info = api.get("/api/info", params={"index": "idx"}).json()
    assert info["index"] == "idx"  # no absolute path leaks
    assert info["images"] == summary["images"] and info["dim"] == summary["dim"]


def test_text_search_finds_the_photo_with_the_documented_shape(api):
    response = api.get("/api/search", params={"q": "a cat", "k": 3})
    assert response.status_code == 200
    body = response.json()
    top = body["results"][0]
    assert top["path"] == "chelsea.png" and top["rank"] == 1
    assert set(top) == {"rank", "id", "score", "path", "thumb", "url", "width", "height"}
    assert (top["width"], top["height"]) == Image.open(skimage_photo("chelsea.png")).size
    assert top["thumb"] == f"/api/thumb/{top['id']}?index=idx&size=256"
    assert body["query"] == {"index": "idx", "q": "a cat", "target": "images", "k": 3, "offset": 0}
    assert body["offset"] == 0 and body["next_offset"] == 3
    generated = [r["path"] for r in api.get("/api/search", params={"q": "x", "k": 200}).json()["results"]]
    assert "generated/gen00.jpg" in generated and not any(p.startswith("/") for p in generated)


def test_get_and_post_agree(api):
    got = api.get("/api/search", params={"q": "a rocket", "k": 5, "not": ["smoke"]}).json()
    posted = api.post("/api/search", json={"q": "a rocket", "k": 5, "not": ["smoke"]}).json()
    assert got == posted


def test_pages_are_consecutive_and_do_not_overlap(api):
    total = 6 + GENERATED
    everything = ids_of(api.get("/api/search", params={"q": "a red motorcycle", "k": 200}))
    assert len(everything) == total
    pages, offset, ranks = [], 0, []
    while offset is not None:
        body = api.get("/api/search", params={"q": "a red motorcycle", "k": 6, "offset": offset}).json()
        assert body["offset"] == offset
        pages += [r["id"] for r in body["results"]]
        ranks += [r["rank"] for r in body["results"]]
        offset = body["next_offset"]
    assert pages == everything and len(set(pages)) == total
    assert ranks == list(range(1, total + 1))
    past = api.get("/api/search", params={"q": "a red motorcycle", "k": 6, "offset": 500}).json()
    assert past["results"] == [] and past["next_offset"] is None


def test_more_like_this_reuses_stored_vectors(api, monkeypatch):
    cat = find(api, "chelsea.png")
    aligner = served(api.app).index.aligner
    calls = []
    monkeypatch.setattr(aligner, "encode_images", lambda *a, **k: calls.append(1) or pytest.fail("re-encoded"))
    body = api.get("/api/search", params={"like": cat, "k": 3}).json()
    assert body["results"][0]["id"] == cat and body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert body["query"]["like"] == [cat]
    both = api.post("/api/search", json={"like": [cat, find(api, "coffee.png")], "like_weights": [1, 3], "k": 2}).json()
    assert {r["path"] for r in both["results"]} == {"chelsea.png", "coffee.png"}
    assert both["results"][0]["path"] == "coffee.png"  # the heavier weight leads
    assert calls == []


def test_fused_query_moves_with_the_weight(api):
    rocket = find(api, "rocket.jpg")

    def ranking(weight):
        return ids_of(api.get("/api/search", params={"q": "a cat", "like": rocket, "weight": weight, "k": 200}))

    text_only = ids_of(api.get("/api/search", params={"q": "a cat", "k": 200}))
    like_only = ids_of(api.get("/api/search", params={"like": rocket, "k": 200}))
    assert ranking(0.0) == text_only and ranking(1.0) == like_only
    middle = ranking(0.5)
    assert middle != text_only and middle != like_only
    assert middle.index(rocket) < text_only.index(rocket)


def test_negative_text_pushes_its_concept_down(api):
    plain = api.get("/api/search", params={"q": "an animal", "k": 200}).json()["results"]
    pushed = api.get("/api/search", params={"q": "an animal", "not": "a cat", "k": 200}).json()["results"]
    score = {r["path"]: r["score"] for r in plain}
    score_not = {r["path"]: r["score"] for r in pushed}
    drop = {p: score[p] - score_not[p] for p in score}
    assert max(drop, key=drop.get) == "chelsea.png"


def test_upload_search_finds_the_same_picture(api):
    data = skimage_photo("coffee.png").read_bytes()
    response = api.post("/api/search/upload", files={"file": ("q.png", data, "image/png")}, data={"k": "2"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"][0]["path"] == "coffee.png" and body["query"]["image"] == "upload"
    fused = api.post("/api/search/upload", files={"file": ("q.png", data)}, data={"q": "a cat", "weight": "0.1", "k": "1"})
    assert fused.json()["results"][0]["path"] == "chelsea.png"  # mostly text


def test_image_to_text_ranks_the_caption_corpus(api):
    coffee = find(api, "coffee.png")
    body = api.get("/api/search", params={"like": coffee, "target": "texts", "k": 3}).json()
    assert body["results"][0]["text"] == "a cup of coffee on a saucer"
    assert set(body["results"][0]) == {"rank", "id", "score", "text"}
    upload = api.post(
        "/api/search/upload", files={"file": ("r.jpg", skimage_photo("rocket.jpg").read_bytes())},
        data={"target": "texts", "k": "1"},
    ).json()
    assert upload["results"][0]["text"] == "a rocket on the launch pad"


def test_thumbnails_are_cached_jpegs_with_etags(api):
    cat = find(api, "chelsea.png")
    response = api.get(f"/api/thumb/{cat}", params={"index": "idx", "size": 128})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and max(image.size) == 128
    folder = served(api.app).folder / "thumbs" / "128"
    # Other tests share this index and may have cached thumbnails of other images.
    assert [p.name.split("-")[0] for p in folder.iterdir()].count(str(cat)) == 1
    etag = response.headers["etag"]
    again = api.get(f"/api/thumb/{cat}", params={"size": 128}, headers={"if-none-match": etag})
    assert again.status_code == 304
    assert api.get(f"/api/thumb/{cat}", params={"size": 100}).status_code == 422


def test_original_file_and_meta(api):
    _, photos = photo_index()
    cat = find(api, "chelsea.png")
    original = api.get(f"/api/image/{cat}")
    assert original.status_code == 200 and original.headers["content-type"] == "image/png"
    assert original.content == (photos / "chelsea.png").read_bytes()
    assert api.get(f"/api/image/{cat}", headers={"if-none-match": original.headers["etag"]}).status_code == 304
    meta = api.get(f"/api/image/{cat}/meta").json()
    assert meta["path"] == "chelsea.png" and meta["size"] == len(original.content)
    assert meta["url"] == f"/api/image/{cat}?index=idx"


def test_unknown_things_are_404_json(api):
    assert api.get("/api/search", params={"q": "x", "index": "nope"}).status_code == 404
    for path in ("/api/image/999999", "/api/thumb/999999", "/api/image/999999/meta", "/no/such/route"):
        response = api.get(path)
        assert response.status_code == 404 and "error" in response.json(), path
    assert api.get("/api/search", params={"like": 999999}).status_code == 404


def test_absolute_paths_only_when_asked():
    index, photos = photo_index()
    absolute = client(ServerSettings(indexes=[str(index)], absolute_paths=True))
    body = absolute.get("/api/search", params={"q": "a cat", "k": 1}).json()
    assert body["results"][0]["path"] == str(photos / "chelsea.png")


def test_real_uvicorn_process_serves_the_api():
    server = photo_server()
    response = httpx.get(server.url + "/api/search", params={"q": "a cup of coffee", "k": 2})
    assert response.status_code == 200 and response.json()["results"][0]["path"] == "coffee.png"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(server.url + "/api/health", headers={"host": "attacker.example"}).status_code == 421
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "content-security-policy" in page.headers


# -- micro-batching (plumbing: ColorAligner) -----------------------------------------------
def _ask(session, route: str, q: str):
    """One text query on `route`: our own search, or clip-retrieval's knn-service."""
    if route == "/knn-service":
        return session.post(route, json={"text": q, "num_images": 3})
    return session.get(route, params={"q": q, "k": 3})


async def _concurrent(app, queries: list[str], route: str = "/api/search") -> list[dict]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as session:
        responses = await asyncio.gather(*[_ask(session, route, q) for q in queries])
    return [r.json() for r in responses]


class SlowTextAligner(ColorAligner):
    """ColorAligner whose text encoder takes 20 ms a call, as a real one does: queries queue behind it."""

    def encode_texts(self, texts):
        import time

        time.sleep(0.02)
        return super().encode_texts(texts)


@pytest.mark.parametrize("route", ["/api/search", "/knn-service"])
@pytest.mark.parametrize("window", [50.0, 0.0])
def test_concurrent_text_queries_are_batched_and_answer_alike(tmp_path, window, route):
    index, _ = color_index(tmp_path)
    api = client(ServerSettings(indexes=[str(index)], batch_window_ms=window), aligner=SlowTextAligner())
    queries = [f"query {i}" for i in range(16)]
    alone = [_ask(api, route, q).json() for q in queries]
    assert all(len(answer) in (3, 4) for answer in alone)  # a list of 3 (knn-service) or a page's 4 keys
    query_thread = api.app.state.query_thread
    query_thread.batch_sizes.clear()
    served(api.app).index.text_cache.clear()  # encoded again, not found in the cache
    together = asyncio.run(_concurrent(api.app, queries, route))
    assert together == alone
    if window:
        assert max(query_thread.batch_sizes) > 1 and sum(query_thread.batch_sizes) == len(queries)
    else:
        assert list(query_thread.batch_sizes) == [1] * len(queries)  # one encoder call and one search each


# -- generations ----------------------------------------------------------------------------
def test_a_new_generation_is_picked_up_and_never_seen_half_published(tmp_path):
    index, _ = photo_index()
    copy = tmp_path / "idx"
    shutil.copytree(index, copy, ignore=shutil.ignore_patterns("thumbs"))
    new = tmp_path / "new"
    for i in range(5):
        make_image(new / f"new{i}.png", seed=500 + i, size=(80, 80))
    api = client(ServerSettings(indexes=[str(copy)]))
    before = set(ids_of(api.get("/api/search", params={"q": "x", "k": 200})))
    run = subprocess.Popen(
        [sys.executable, "-m", "retrieval", "index", str(new), "--index", str(copy), "--quiet", "--workers", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    seen, errors = [], []

    def hammer():
        while run.poll() is None:
            response = api.get("/api/search", params={"q": "a picture", "k": 200})
            if response.status_code != 200:
                errors.append(response.text)
            seen.append(frozenset(ids_of(response)))

    thread = threading.Thread(target=hammer)
    thread.start()
    thread.join()
    assert run.wait() == 0, run.stderr.read()
    after = set(ids_of(api.get("/api/search", params={"q": "x", "k": 200})))
    assert len(after) == len(before) + 5 and before < after
    assert errors == [] and len(seen) > 3
    assert set(seen) <= {frozenset(before), frozenset(after)}
    assert api.get("/api/indexes").json()["indexes"][0]["generation"] == 2


def test_query_thread_batches_under_load_and_never_delays_a_lone_query():
    import time

    from retrieval.server.batcher import QueryThread

    query_thread = QueryThread(window_ms=3000)
    try:
        started = time.monotonic()
        assert query_thread.batched("k", 7, lambda key, payloads: [p * 2 for p in payloads]).result(10) == 14
        assert time.monotonic() - started < 1.5  # no window waited with nobody else around
        gate = query_thread.call(lambda: time.sleep(0.2))  # the thread is busy while the queries queue up
        futures = [query_thread.batched("k", i, lambda key, payloads: [p * 2 for p in payloads]) for i in range(10)]
        gate.result(5)
        assert [f.result(10) for f in futures] == [2 * i for i in range(10)]
        assert query_thread.batch_sizes[-1] == 10
        failing = query_thread.batched("k", 1, lambda key, payloads: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(5)
    finally:
        query_thread.close()


def test_batches_grow_with_the_queue_and_wait_for_no_window():
    """Whatever queues while a batch runs is the next batch, taken at once (the window is 3 s here)."""
    import time

    from retrieval.server.batcher import QueryThread

    query_thread = QueryThread(window_ms=3000)
    running, release = threading.Event(), threading.Event()

    def slow(key, payloads):
        running.set()
        release.wait(10)
        return [p * 2 for p in payloads]

    try:
        gate = query_thread.call(lambda: time.sleep(0.2))  # busy: the first five queue behind it
        first = [query_thread.batched("k", i, slow) for i in range(5)]
        gate.result(5)
        assert running.wait(5)
        started = time.monotonic()
        later = [query_thread.batched("k", 100 + i, slow) for i in range(40)]  # queue while the batch runs
        release.set()
        assert [f.result(10) for f in first + later] == [2 * i for i in range(5)] + [2 * (100 + i) for i in range(40)]
        assert time.monotonic() - started < 1.5  # no window waited: everything queued was taken
        assert list(query_thread.batch_sizes) == [5, 40]
    finally:
        release.set()
        query_thread.close()


@pytest.mark.parametrize("window", [3000.0, 0.0])
def test_prepare_step_runs_on_the_encoder_thread_while_the_query_thread_finishes(window):
    """With batching on, the next batch is prepared (encoded) while the query thread finishes the last."""
    from retrieval.server.batcher import QueryThread

    query_thread = QueryThread(window_ms=window)
    steps, finishing, holding, hold, release = [], *(threading.Event() for _ in range(4))

    def prepare(key, payloads):
        steps.append(("prepare", threading.current_thread().name, len(payloads), release.is_set()))
        if payloads == [-1] and window:
            holding.set()
            hold.wait(10)  # the encoder is busy: what comes next queues up behind it
        return [p * 10 for p in payloads]

    def finish(key, payloads, prepared):
        steps.append(("finish", threading.current_thread().name, len(payloads), release.is_set()))
        if payloads == [0]:
            finishing.set()
            release.wait(10)
        return [p + q for p, q in zip(payloads, prepared)]

    try:
        first = query_thread.batched("k", 0, finish, prepare)
        assert finishing.wait(5)  # the query thread is finishing the first query
        gate = query_thread.batched("k", -1, finish, prepare)
        if window:
            assert holding.wait(5)
        later = [query_thread.batched("k", i, finish, prepare) for i in range(1, 31)]
        hold.set()
        if window:  # the thirty are encoded as one batch while the query thread is still busy
            for _ in range(500):
                if len(steps) >= 4:
                    break
                threading.Event().wait(0.01)
            assert steps[3] == ("prepare", "retrieval-query-encoder", 30, False)
        release.set()
        assert gate.result(10) == -11
        assert [f.result(10) for f in [first, *later]] == [11 * i for i in range(31)]
        if window:
            assert list(query_thread.batch_sizes) == [1, 1, 30]
            assert steps[0][:2] == ("prepare", "retrieval-query")  # alone in flight: no hand-over
            assert {t for step, t, *_ in steps if step == "finish"} == {"retrieval-query"}
        else:  # batching off: one at a time, all on the query thread
            assert list(query_thread.batch_sizes) == [1] * 32 and {t for _, t, *_ in steps} == {"retrieval-query"}
        failing = query_thread.batched("k", 1, finish, lambda key, payloads: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(5)
        assert query_thread.batched("k", 2, finish, prepare).result(5) == 22  # still running
    finally:
        hold.set()
        release.set()
        query_thread.close()


def test_info_checksums_off_the_query_thread_once_per_generation(tmp_path, monkeypatch):
    from retrieval.ingest import pipeline as indexer
    from retrieval.ingest.pipeline import IndexSettings
    from retrieval.storage import integrity
    from retrieval.storage.store import IndexStore

    index, photos = color_index(tmp_path)
    api = client(ServerSettings(indexes=[str(index)]), aligner=ColorAligner())
    reads = []
    real = integrity.crc32_of
    monkeypatch.setattr(integrity, "crc32_of", lambda path: reads.append(threading.current_thread().name) or real(path))
    first = api.get("/api/info").json()
    assert first["index_files"] == "ok" and first["generation"] == 1 and reads
    assert "retrieval-query" not in reads  # never on the thread that answers queries
    seen = len(reads)
    assert api.get("/api/info").json() == first and len(reads) == seen  # kept for the same files
    make_image(photos / "late.jpg", seed=77)
    store = IndexStore.open(str(index))
    try:
        indexer.run(store, ColorAligner(), [photos], settings=IndexSettings(workers=0))
    finally:
        store.close()
    after = api.get("/api/info").json()
    assert after["generation"] == 2 and after["images"] == first["images"] + 1 and len(reads) > seen


def test_folder_filter_takes_folders_as_paths_are_shown(api):
    _, photos = photo_index()
    body = api.get("/api/search", params={"q": "a cat", "folder": "generated", "k": 50}).json()
    assert len(body["results"]) == GENERATED and body["query"]["folder"] == ["generated"]
    assert all(r["path"].startswith("generated/") for r in body["results"])
    absolute = api.post("/api/search", json={"q": "a cat", "folder": [str(photos / "generated")], "k": 50}).json()
    assert [r["id"] for r in absolute["results"]] == [r["id"] for r in body["results"]]
    assert api.get("/api/search", params={"q": "x", "folder": "../.."}).status_code == 400
    empty = api.get("/api/search", params={"q": "x", "folder": "nowhere"}).json()
    assert empty["results"] == [] and empty["note"]
