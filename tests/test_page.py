"""The search page in a real browser: Debian's Chromium driven by playwright, against
`retrieval serve` processes over a real index (real photos, the packaged `default` aligner,
a caption corpus) and an empty one.

Every check reads what a person would see: cards whose thumbnails decoded, the viewer, the
caption list, the messages. The server's own answers (over HTTP) are the reference for
order and error texts, so nothing here hard-codes a ranking the model could change, except
where a photo is found by its own content (the cat for "a cat", an image for itself).
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import REAL_PHOTOS, make_image, skimage_photo
from server_kit import GENERATED, ServerProcess, color_index, photo_index

pytestmark = pytest.mark.slow  # the real default aligner, a browser and server processes

TOTAL = GENERATED + len(REAL_PHOTOS)
TIMEOUT_MS = 60_000  # generous: the test machines are shared and thumbnails are made on first request
TOKEN = "page-test-token"


#: Photos for an index with no cat and no captions: scikit-image's real photos but chelsea.png.
NO_CATS = [name for name in REAL_PHOTOS if name != "chelsea.png"] + [
    "brick.png", "coins.png", "grass.png", "gravel.png", "moon.png", "page.png", "horse.png",
    "hubble_deep_field.jpg", "retina.jpg", "clock_motion.png", "color.png", "ihc.png", "text.png",
]


def no_cats_index(root: Path) -> Path:
    """The `default` aligner over NO_CATS and a dozen generated pictures: no cat, no captions."""
    from retrieval.api import build_index
    from retrieval.ingest.pipeline import IndexSettings

    photos = root / "nocats-photos"
    photos.mkdir()
    for name in NO_CATS:
        shutil.copyfile(skimage_photo(name), photos / name)
    for i in range(12):
        make_image(photos / "generated" / f"gen{i:02d}.jpg", seed=300 + i, size=(96, 64))
    build_index([photos], index=str(root / "nocats"), settings=IndexSettings(workers=0))
    return root / "nocats"


@pytest.fixture(scope="module")
def servers():
    """One server with four indexes (the photos, an empty one, one without captions, one with
    no cat), one with a token."""
    from retrieval.storage.store import IndexStore

    index, photos = photo_index()
    scratch = Path(tempfile.mkdtemp(prefix="retrieval-page-"))
    empty = scratch / "empty"
    IndexStore.open(str(empty), create=True).close()
    # No captions, and never searched here (its plumbing-only aligner is not loadable by the server).
    uncaptioned, _ = color_index(scratch)
    nocats = no_cats_index(scratch)
    main = ServerProcess("--index", str(index), "--index", str(empty), "--index", str(uncaptioned), "--index", str(nocats))
    locked = ServerProcess("--index", str(index), "--token", TOKEN)
    yield {"main": main, "locked": locked, "index": index.name, "photos": photos}
    main.stop()
    locked.stop()
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def page(browser, servers):
    """A fresh browser context per test; fails the test on any script error or console error
    (a Content-Security-Policy violation shows up as one)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=servers["main"].url)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    page.on("console", lambda msg: msg.type == "error" and problems.append(f"console: {msg.text}"))
    yield page
    context.close()
    # A search that failed on purpose logs the failed request; nothing else may.
    unexpected = [p for p in problems if "Failed to load resource" not in p]
    assert not unexpected, unexpected


def api(servers, **params) -> dict:
    return httpx.get(servers["main"].url + "/api/search", params=params, timeout=120).json()


def settle(page) -> None:
    """Wait until no page of results is on its way."""
    page.wait_for_timeout(150)
    page.locator('#results[aria-busy="false"]').wait_for(state="attached")


def card_ids(page) -> list[int]:
    return [int(v) for v in page.locator("#results .card").evaluate_all("cards => cards.map(c => c.dataset.id)")]


def card_names(page) -> list[str]:
    return page.locator("#results .card .name").all_text_contents()


def wait_loaded(page, count: int) -> None:
    page.locator("#results .card img.loaded").nth(count - 1).wait_for()


def query_of(page) -> dict:
    return parse_qs(urlsplit(page.url).query)


# -- searching in words --------------------------------------------------------------------
def test_typing_a_query_shows_ranked_thumbnails_that_load(page, servers):
    page.goto("/")
    page.locator(".message", has_text="Search").wait_for()
    page.keyboard.press("/")  # the shortcut focuses the box
    page.keyboard.type("a cat")
    page.keyboard.press("Enter")
    wait_loaded(page, 4)
    settle(page)
    expected = api(servers, q="a cat", k=len(card_ids(page)))["results"]
    assert card_ids(page) == [r["id"] for r in expected]
    assert card_names(page)[0] == "chelsea.png"
    widths = page.locator("#results .card img.loaded").evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) >= 4 and all(w > 0 for w in widths)
    assert page.locator("#results .card .score").first.text_content() == f"{expected[0]['score']:.2f}"
    assert query_of(page)["q"] == ["a cat"]
    assert "a cat" in page.locator("#status").text_content()


def test_scrolling_loads_every_result_once_in_order(page, servers):
    page.set_viewport_size({"width": 800, "height": 500})
    page.goto("/?q=a+photo&k=4")
    wait_loaded(page, 4)
    settle(page)
    first = card_ids(page)
    assert 0 < len(first) < TOTAL, "the first screen should not hold every result, or there is nothing to scroll for"
    seen = first
    for _ in range(TOTAL):
        page.mouse.wheel(0, 4000)
        settle(page)
        seen = card_ids(page)
        if len(seen) >= TOTAL:
            break
    assert len(seen) == len(set(seen)) == TOTAL
    assert seen[: len(first)] == first
    assert seen == [r["id"] for r in api(servers, q="a photo", k=TOTAL)["results"]]


def test_a_query_with_no_close_match_says_so(page, servers):
    page.goto("/?index=nocats&q=a+cat")
    wait_loaded(page, 1)
    settle(page)
    hint = page.locator("#weak")
    assert hint.is_visible() and "No close matches" in hint.text_content()
    # The hint follows the served index's own threshold, and its best score is under it.
    weak_below = next(i for i in httpx.get(servers["main"].url + "/api/indexes").json()["indexes"]
                      if i["name"] == "nocats")["weak_below"]
    assert api(servers, index="nocats", q="a cat", k=1)["results"][0]["score"] < weak_below

    page.goto("/?index=nocats&q=a+red+motorcycle")
    wait_loaded(page, 1)
    settle(page)
    assert card_names(page)[0] == "motorcycle_left.png"
    assert page.locator("#weak").is_hidden()
    assert "a red motorcycle" in page.locator("#status").text_content()


# -- searching by example ------------------------------------------------------------------
def test_picking_an_image_finds_it(page):
    page.goto("/")
    page.set_input_files("#file", str(skimage_photo("coffee.png")))
    wait_loaded(page, 1)
    assert card_names(page)[0] == "coffee.png"
    assert float(page.locator("#results .card .score").first.text_content()) >= 0.99
    assert "coffee.png" in page.locator("#example").text_content()


def test_dropping_an_image_anywhere_finds_it(page):
    page.goto("/")
    page.locator(".message").wait_for()
    data = base64.b64encode(skimage_photo("rocket.jpg").read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([data, name]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
            return transfer;
        }""",
        [data, "rocket.jpg"],
    )
    page.dispatch_event("main", "dragenter", {"dataTransfer": transfer})
    assert page.locator("#drop").is_visible()
    page.dispatch_event("main", "drop", {"dataTransfer": transfer})
    wait_loaded(page, 1)
    assert card_names(page)[0] == "rocket.jpg"
    assert page.locator("#drop").is_hidden()


# -- the viewer, more like this, captions --------------------------------------------------
def test_viewer_by_keyboard_then_more_like_this(page, servers):
    page.goto("/?q=a+red+motorcycle")
    wait_loaded(page, 3)
    settle(page)
    ids = card_ids(page)
    first = page.locator("#results .card").first
    first.focus()
    page.keyboard.press("ArrowRight")
    page.locator(f'#results .card[data-id="{ids[1]}"]:focus').wait_for()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Enter")
    viewer = page.locator("#viewer")
    viewer.wait_for(state="visible")
    assert page.locator("#viewer-path").text_content() == card_names(page)[0]
    assert "×" in page.locator("#viewer-size").text_content()
    page.locator("#viewer-img").evaluate("img => img.decode()")
    assert page.locator("#viewer-img").evaluate("img => img.naturalWidth") > 0
    page.keyboard.press("ArrowRight")
    assert page.locator("#viewer-rank").text_content() == "2"
    page.keyboard.press("Escape")
    viewer.wait_for(state="hidden")
    page.locator(f'#results .card[data-id="{ids[1]}"]:focus').wait_for()  # focus returns to the card shown last

    first.click()
    page.locator("#viewer-like").click()
    viewer.wait_for(state="hidden")
    page.wait_for_url(f"**like={ids[0]}**")
    wait_loaded(page, 2)
    settle(page)
    like = card_ids(page)
    assert like == [r["id"] for r in api(servers, like=ids[0], k=len(like))["results"]]
    assert like[0] == ids[0] and like != ids  # the photo itself first, then its neighbours
    assert page.locator("#example").is_visible()


def test_captions_for_a_result_and_for_words(page, servers):
    page.goto("/?q=a+red+motorcycle")
    wait_loaded(page, 1)
    motorcycle = card_ids(page)[0]
    page.locator("#results .card").first.click()
    page.locator("#viewer-captions").click()
    page.locator("#captions .caption").first.wait_for()
    assert query_of(page)["target"] == ["texts"] and query_of(page)["like"] == [str(motorcycle)]
    shown = page.locator("#captions .caption .text").all_text_contents()
    expected = api(servers, like=motorcycle, target="texts", k=len(shown))["results"]
    assert shown == [r["text"] for r in expected]
    assert shown[0] == "a red motorcycle parked on the street"

    page.goto("/?q=a+cup+of+coffee")
    wait_loaded(page, 1)
    page.locator("label", has_text="Captions").click()
    page.locator("#captions .caption").first.wait_for()
    assert page.locator("#captions .caption .text").first.text_content() == "a cup of coffee on a saucer"
    assert page.locator("#results").is_hidden()


def test_captions_switch_says_when_the_index_has_none(page):
    page.goto("/?index=cidx&q=a+cat")
    page.locator("#index").wait_for()
    page.locator("label", has_text="Captions").click()
    page.locator("#message", has_text="has no captions").wait_for()
    assert "retrieval index --captions" in page.locator("#message").text_content()
    assert query_of(page)["target"] == ["texts"]


def test_captions_tab_after_a_query_shows_what_a_fresh_load_shows(page):
    searches: list[str] = []
    page.on("request", lambda r: "/api/search" in r.url and searches.append(r.url))
    page.goto("/?index=nocats&q=a+red+motorcycle&target=texts")
    page.locator("#message", has_text="has no captions").wait_for()
    fresh = page.locator("#message").text_content()

    page.set_viewport_size({"width": 800, "height": 400})  # the results reach far below the screen
    page.goto("/?index=nocats&q=a+red+motorcycle")
    wait_loaded(page, 1)
    settle(page)
    assert page.evaluate("document.getElementById('more').getBoundingClientRect().top") > 400 + 600
    searches.clear()
    page.locator("label", has_text="Captions").click()
    page.locator("#message").wait_for()
    page.wait_for_timeout(1000)  # time for a stray search to replace the message
    settle(page)
    assert page.locator("#message").text_content() == fresh
    assert page.locator("#message.error").count() == 0
    assert searches == []  # the page knows the index has no captions: nothing to ask


# -- fused queries and shareable URLs --------------------------------------------------------
def test_a_fused_query_in_the_url_reloads_to_the_same_results(page, servers, browser):
    page.goto("/?q=a+red+motorcycle")
    wait_loaded(page, 1)
    liked = card_ids(page)[0]
    page.locator("#results .card").first.click()
    page.locator("#viewer-like").click()
    page.wait_for_url(f"**like={liked}**")
    page.fill("#q", "a cat")
    page.fill("#not", "space, rocket")
    page.keyboard.press("Enter")
    page.locator("#weight").fill("0.8")
    page.wait_for_url("**weight=0.8**")
    wait_loaded(page, 3)
    settle(page)
    params = query_of(page)
    assert params["q"] == ["a cat"] and params["like"] == [str(liked)] and params["not"] == ["space", "rocket"]
    shown = card_ids(page)
    assert shown == [
        r["id"] for r in api(servers, q="a cat", like=liked, weight=0.8, **{"not": ["space", "rocket"]}, k=len(shown))["results"]
    ]

    other = browser.new_page(base_url=servers["main"].url, viewport={"width": 1280, "height": 800})
    try:
        other.set_default_timeout(TIMEOUT_MS)
        other.goto(page.url)
        wait_loaded(other, 3)
        settle(other)
        assert card_ids(other) == shown
        assert other.input_value("#q") == "a cat" and other.input_value("#not") == "space, rocket"
        assert other.input_value("#weight") == "0.8"
    finally:
        other.close()

    page.go_back()  # history steps back to the plain more-like-this search
    page.wait_for_url(lambda url: "q=" not in url)
    settle(page)
    assert page.input_value("#q") == ""


def test_filters_are_sent_only_when_filled(page, servers):
    page.goto("/?q=a+photo")
    wait_loaded(page, 1)
    settle(page)
    assert len(card_ids(page)) == TOTAL and "folder" not in query_of(page)
    page.locator("#filters summary").click()
    page.fill("#f-folder", "generated")
    page.keyboard.press("Enter")
    page.wait_for_url("**folder=generated**")
    wait_loaded(page, 1)
    settle(page)
    shown = card_ids(page)
    assert shown == [r["id"] for r in api(servers, q="a photo", folder="generated", k=TOTAL)["results"]]
    assert len(shown) == GENERATED and all(name.startswith("generated/") for name in card_names(page))
    page.locator("#filters-clear").click()
    page.wait_for_url(lambda url: "folder=" not in url)
    settle(page)
    assert len(card_ids(page)) == TOTAL


def test_sort_toggle_orders_by_date_and_stays_in_the_url(page, servers):
    page.goto("/?q=a+cat")
    wait_loaded(page, 1)
    settle(page)
    assert "sort" not in query_of(page)
    assert card_ids(page) == [r["id"] for r in api(servers, q="a cat", k=36)["results"]]
    page.locator("#sort-field label", has_text="Newest").click()
    page.wait_for_url("**sort=date**")
    wait_loaded(page, 1)
    settle(page)
    dated = api(servers, q="a cat", sort="date", k=36)["results"]
    assert dated and card_ids(page) == [r["id"] for r in dated]
    assert [r["taken"] for r in dated] == sorted((r["taken"] for r in dated), reverse=True)
    assert "newest first" in page.locator("#status").text_content()
    page.reload()  # the order is part of the shared URL
    wait_loaded(page, 1)
    settle(page)
    assert page.locator('input[name="sort"][value="date"]').is_checked()
    assert card_ids(page) == [r["id"] for r in dated]
    page.locator("#sort-field label", has_text="Best match").click()
    page.wait_for_url(lambda url: "sort=" not in url)


# -- a phone, and what a load asks the server ------------------------------------------------
def overlaps(a: dict, b: dict) -> bool:
    across = a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
    return across and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]


def test_a_phone_with_several_indexes_keeps_the_query_in_view(page):
    width = 390
    page.set_viewport_size({"width": width, "height": 844})
    page.goto("/?q=a+red+motorcycle")
    wait_loaded(page, 1)
    settle(page)
    assert page.locator("#index-picker").is_visible()
    field, form = page.locator("#q").bounding_box(), page.locator("#search").bounding_box()
    button, picker = page.locator("#search .go").bounding_box(), page.locator("#index").bounding_box()
    assert field["width"] >= 0.6 * width, field
    assert not overlaps(picker, form) and not overlaps(picker, button), (picker, form, button)
    for box in (field, form, button, picker):
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, box
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing pushed off the side
    # The query can be read: it fits in the field, and nothing lies on top of the field.
    assert page.input_value("#q") == "a red motorcycle"
    assert page.locator("#q").evaluate("q => q.scrollWidth <= q.clientWidth")
    centre = [field["x"] + field["width"] / 2, field["y"] + field["height"] / 2]
    assert page.evaluate("([x, y]) => document.elementFromPoint(x, y).id", centre) == "q"
    on_top = "b => { const r = b.getBoundingClientRect(); return b.contains(document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2)); }"
    assert page.locator("#search .go").evaluate(on_top)  # the Search button can be pressed
    assert page.get_by_role("button", name="Search", exact=True).is_visible()  # and is still called Search


def test_a_query_in_the_url_is_searched_once(page):
    searches: list[str] = []
    page.on("request", lambda r: "/api/search" in r.url and searches.append(r.url))
    page.goto("/?q=a+cat")
    wait_loaded(page, 1)
    settle(page)
    page.wait_for_timeout(1500)  # a second search would have been sent by now
    assert len(searches) == 1, searches


# -- indexes, empty index, errors, login -----------------------------------------------------
def test_index_picker_and_the_empty_index_message(page, servers):
    page.goto("/")
    picker = page.locator("#index")
    picker.wait_for()
    names = [o.strip().split(" ·")[0] for o in picker.locator("option").all_text_contents()]
    assert names == [servers["index"], "empty", "cidx", "nocats"]
    picker.select_option("empty")
    page.locator("#message", has_text="is empty").wait_for()
    assert query_of(page)["index"] == ["empty"]
    assert "retrieval index" in page.locator("#message").text_content()
    page.goto("/?index=empty&q=a+cat")
    page.locator("#message", has_text="is empty").wait_for()
    assert page.locator("#results .card").count() == 0


def test_a_failed_query_shows_the_servers_error(page, servers):
    error = httpx.get(servers["main"].url + "/api/search", params={"like": 999_999}).json()["error"]
    page.goto("/?like=999999")
    message = page.locator("#message.error")
    message.wait_for()
    assert error in message.text_content()


def test_a_token_server_asks_for_the_token_then_works(browser, servers):
    context = browser.new_context(base_url=servers["locked"].url)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto("/")
        page.locator("#login").wait_for()
        page.fill("#token", "wrong")
        page.keyboard.press("Enter")
        page.locator("#login-error", has_text="not right").wait_for()
        page.fill("#token", TOKEN)
        page.keyboard.press("Enter")
        page.locator("#login").wait_for(state="hidden")
        page.locator("#message", has_text=f"Search {TOTAL} photos").wait_for()
        cookie = next(c for c in context.cookies() if c["name"] == "retrieval_token")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # out of the page's reach
    finally:
        context.close()
