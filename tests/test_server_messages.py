"""Errors and notes the server passes on from the engine name no folder of the server's machine.

The engine words its messages for the CLI's user (``index /home/.../idx holds no captions``);
over HTTP each index folder shows as the served name, and a path in an indexed folder relative
to it, as result paths are, unless the server runs with ``--absolute-paths``. Plumbing only:
a small ColorAligner index.
"""

from __future__ import annotations

import pytest
from conftest import ColorAligner
from server_kit import client, color_index

from retrieval.server.app import ServerSettings
from retrieval.server.library import hide_folders


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("messages")
    index, photos = color_index(root)
    return root, index, photos


def api(index, absolute_paths: bool = False):
    return client(ServerSettings(indexes=[str(index)], absolute_paths=absolute_paths), aligner=ColorAligner())


def test_searching_captions_of_an_index_without_any_names_it_by_its_served_name(built):
    root, index, _ = built
    response = api(index).get("/api/search", params={"q": "a cat", "target": "texts"})
    assert response.status_code == 400
    assert str(root) not in response.text
    assert response.json()["error"].startswith(f"index {index.name} holds no captions")


def test_a_filter_that_matches_nothing_notes_the_folder_as_the_client_gave_it(built):
    root, index, photos = built
    response = api(index).get("/api/search", params={"q": "red", "folder": "nowhere/deeper"})
    body = response.json()
    assert response.status_code == 200 and body["results"] == []
    assert str(root) not in response.text
    assert body["query"]["index"] == index.name
    assert body["note"] == "no image passes --folder nowhere/deeper"


def test_absolute_paths_keep_the_folders_in_messages(built):
    _, index, photos = built
    server = api(index, absolute_paths=True)
    error = server.get("/api/search", params={"q": "a cat", "target": "texts"}).json()["error"]
    assert f"index {index} holds no captions" in error
    note = server.get("/api/search", params={"q": "red", "folder": "nowhere"}).json()["note"]
    assert str(photos / "nowhere") in note


def test_the_deepest_folder_wins_and_a_longer_name_is_left_alone():
    places = {"/srv/pics": ("pics", ""), "/srv/pics/2023": ("2023", ""), "/srv/idx": ("idx", "idx/")}
    text = "/srv/pics/2023/a.jpg, /srv/pics/b.jpg, /srv/pics2/c.jpg, /srv/idx/faiss.1, /srv/idx."
    assert hide_folders(text, places) == "a.jpg, b.jpg, /srv/pics2/c.jpg, idx/faiss.1, idx."
