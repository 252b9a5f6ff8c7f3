"""clip-retrieval compatibility: its own ClipClient class against a real `retrieval serve` process.

scripts/setup.sh --test unpacks clip_retrieval/clip_client.py from clip-retrieval's wheel into
.venv/share/clip-retrieval/ (the package itself imports torch, flask and more); it is loaded
by path here. Real `default` aligner on real photos.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import requests
from conftest import make_image, skimage_photo
from server_kit import CAPTIONS, client, photo_index, photo_server

from retrieval.server.app import ServerSettings

pytestmark = pytest.mark.slow
CLIENT_FILE = Path(sys.prefix) / "share" / "clip-retrieval" / "clip_client.py"


@pytest.fixture(scope="module")
def clip_client():
    if not CLIENT_FILE.is_file():
        pytest.skip(f"{CLIENT_FILE} missing: run bash scripts/setup.sh --test")
    spec = importlib.util.spec_from_file_location("clip_client_under_test", CLIENT_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server():
    return photo_server()


def test_client_text_query_with_its_default_settings(clip_client, server):
    knn = clip_client.ClipClient(url=server.url + "/knn-service", indice_name="idx", num_images=5)
    results = knn.query(text="a cat")
    assert len(results) == 5
    top = results[0]
    assert top["image_path"] == "chelsea.png" and set(top) == {"id", "similarity", "image_path", "url"}
    assert top["similarity"] == max(r["similarity"] for r in results)
    image = requests.get(top["url"], timeout=10)
    assert image.status_code == 200 and image.content == skimage_photo("chelsea.png").read_bytes()


def test_client_image_query_sends_base64_and_finds_the_picture(clip_client, server):
    knn = clip_client.ClipClient(url=server.url + "/knn-service", indice_name="idx", num_images=3)
    results = knn.query(image=str(skimage_photo("rocket.jpg")))
    assert results[0]["image_path"] == "rocket.jpg" and results[0]["similarity"] > 0.99


def test_client_embedding_query_and_text_modality(clip_client, server):
    index, _ = photo_index()
    api = client(ServerSettings(indexes=[str(index)]))
    vector = api.app.state.query_thread.call(lambda: api.app.state.library.get(None).index.aligner.encode_texts(["a cup of coffee"])[0]).result()
    knn = clip_client.ClipClient(url=server.url + "/knn-service", indice_name="idx", num_images=2)
    assert knn.query(embedding_input=vector.tolist())[0]["image_path"] == "coffee.png"
    texts = clip_client.ClipClient(
        url=server.url + "/knn-service", indice_name="idx", num_images=2, modality=clip_client.Modality.TEXT
    )
    captions = texts.query(image=str(skimage_photo("coffee.png")))
    assert captions[0]["caption"] == "a cup of coffee on a saucer" and captions[0]["caption"] in CAPTIONS
    assert "image_path" not in captions[0]


def test_image_url_is_refused_clearly(clip_client, server):
    knn = clip_client.ClipClient(url=server.url + "/knn-service", indice_name="idx")
    answer = knn.query(image="http://example.org/cat.jpg")
    assert "fetches nothing" in answer["error"]


def test_indices_list_and_metadata_routes(server):
    assert requests.get(server.url + "/indices-list", timeout=10).json() == ["idx"]
    top = requests.post(server.url + "/knn-service", data='{"text": "an astronaut", "modality": "image", '
                        '"num_images": 1, "indice_name": "idx"}', timeout=30).json()[0]
    meta = requests.post(server.url + "/metadata", json={"ids": [top["id"], 987654], "indice_name": "idx"}, timeout=10).json()
    assert meta[0] == {"id": top["id"], "metadata": {"image_path": top["image_path"], "url": top["url"]}}
    assert meta[1] == {"id": 987654, "metadata": {}}
    assert requests.post(server.url + "/metadata", json={"ids": [], "indice_name": "idx"}, timeout=10).json() == []
    wrong = requests.post(server.url + "/knn-service", json={"text": "x", "indice_name": "nope"}, timeout=10)
    assert wrong.status_code == 404 and "nope" in wrong.json()["error"]


def test_deduplicate_drops_identical_pictures(tmp_path):
    photos = tmp_path / "dups"
    photos.mkdir()
    shutil.copyfile(skimage_photo("chelsea.png"), photos / "a.png")
    shutil.copyfile(skimage_photo("chelsea.png"), photos / "b.png")
    make_image(photos / "other.png", seed=3)
    from retrieval.api import build_index
    from retrieval.ingest.pipeline import IndexSettings

    build_index([photos], index=str(tmp_path / "dedup"), settings=IndexSettings(workers=0))
    api = client(ServerSettings(indexes=[str(tmp_path / "dedup")]))
    data = base64.b64encode(skimage_photo("chelsea.png").read_bytes()).decode()
    body = {"image": data, "modality": "image", "num_images": 3, "indice_name": "dedup"}
    plain = api.post("/knn-service", json={**body, "deduplicate": False}).json()
    distinct = api.post("/knn-service", json={**body, "deduplicate": True}).json()
    assert len(plain) == 3 and len(distinct) == 2
    assert {plain[0]["image_path"], plain[1]["image_path"]} == {"a.png", "b.png"}
    assert distinct[1]["image_path"] == "other.png"


def test_web_front_end_request_shape(server):
    """clip-retrieval's web front end posts text/plain JSON for 3,000 ids and reads metadata for the rest later."""
    body = ('{"text": "a cat", "image": null, "image_url": null, "modality": "image", "num_images": 2, '
            '"indice_name": "idx", "num_result_ids": 3000, "use_mclip": false, "deduplicate": true, '
            '"use_safety_model": true}')
    response = requests.post(server.url + "/knn-service", data=body, headers={"content-type": "text/plain;charset=UTF-8"}, timeout=30)
    results = response.json()
    assert response.status_code == 200 and len(results) == 20  # every image of the index, once
    assert all("image_path" in r for r in results[:2]) and not any("image_path" in r for r in results[2:])
    assert results[0]["image_path"] == "chelsea.png"
    rest = requests.post(server.url + "/metadata", data=json.dumps({"ids": [r["id"] for r in results[2:]], "indice_name": "idx"}), timeout=10).json()
    assert [m["id"] for m in rest] == [r["id"] for r in results[2:]] and all(m["metadata"]["image_path"] for m in rest)
