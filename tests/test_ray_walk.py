"""The Ray path's driver side that needs no Ray: the fsspec walk of a URL and `index --ray-stall`.

Nothing here starts Ray: the walk is fsspec's local and memory filesystems on real files, its
output is staged as a Ray run stages it, and the CLI's settings are caught before a run would start.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import fsspec
import pytest
from click.testing import CliRunner
from conftest import ColorAligner, make_image
from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
from fsspec.implementations.local import LocalFileSystem

import retrieval.api
from retrieval.cli import main
from retrieval.cluster import RaySettings, ray_index
from retrieval.cluster.ray_index import walk_url
from retrieval.ingest import pipeline as indexer
from retrieval.media.files import walk
from retrieval.storage.staging import Staging
from retrieval.storage.store import IndexStore


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path.resolve() / "pics"
    for i in range(3):
        make_image(folder / "locked" / f"{i}.png", seed=i)
        make_image(folder / "open" / f"{i}.png", seed=10 + i)
    return folder


def test_the_url_walk_lists_a_nested_tree_as_the_local_walk(tmp_path):
    """Folder by folder now: the same files, order, pairs and ignored counts as before and as locally."""
    folder = tmp_path.resolve() / "tree"
    for i, rel in enumerate(["a/1.png", "a b/2.jpg", "a-b/3.png", "a/c/d/4.png", "b/5.jpg", "b/5.dng", "6.png",
                             ".hidden/7.png", "a/c/notes.txt", "b/.8.png"]):
        make_image(folder / rel, seed=i, fmt="PNG")
    ignored_url: Counter[str] = Counter()
    ignored_local: Counter[str] = Counter()
    stats = list(walk_url(folder.as_uri(), ignored_url))
    assert stats == list(walk([folder], ignored_local)) and ignored_url == ignored_local == {".txt": 1}
    assert [Path(s.path).name for s in stats] == ["6.png", "1.png", "4.png", "2.jpg", "3.png", "5.jpg"]
    assert stats[-1].companions == (str(folder / "b" / "5.dng"),)


def _refuse(monkeypatch, folder: Path) -> None:
    """fsspec's local listing refuses `folder`, as a folder root may not read (or an I/O error) would."""
    real_ls = LocalFileSystem.ls

    def ls(self, path, detail=False, **kwargs):
        if str(path).rstrip("/") == str(folder):
            raise PermissionError(13, "Permission denied", str(path))
        return real_ls(self, path, detail=detail, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "ls", ls)


def test_a_folder_fsspec_cannot_list_is_named_and_marked_like_the_local_walk(photos, monkeypatch, caplog):
    locked = photos / "locked"
    _refuse(monkeypatch, locked)
    with caplog.at_level("WARNING", logger="retrieval.cluster.ray_index"):
        stats = list(walk_url(photos.as_uri()))
    warned = [r.getMessage() for r in caplog.records if str(locked) in r.getMessage()]
    assert len(warned) == 1 and "Permission denied" in warned[0]
    marked = [s for s in stats if s.unlisted]
    assert [(s.path, s.unlisted) for s in marked] == [(str(locked), True)]
    assert [s.path for s in stats if not s.unlisted] == [str(photos / "open" / f"{i}.png") for i in range(3)]

    # The local walk, refused the same folder by os.scandir, gives the same files and marker.
    real_scandir = os.scandir

    def scandir(path="."):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert sorted(walk([photos]), key=lambda s: s.path) == sorted(stats, key=lambda s: s.path)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_an_object_store_folder_that_cannot_be_listed_is_marked_by_its_url(
    tmp_path, monkeypatch, caplog, asynchronous,
):
    """On a filesystem that is not local the marker is a URL: the prefix of the files the folder holds.

    Async: fsspec's walk on an async filesystem (s3fs, gcsfs are) yields a refused folder as
    an empty one even to a caller that asked to hear of the error.
    """
    fs = fsspec.filesystem("memory")
    if asynchronous:
        def wrapped(url: str):  # a new wrapper each time: it binds the listing it wraps when made
            walked = AsyncFileSystemWrapper(fs, skip_instance_cache=True)
            return walked, walked._strip_protocol(url)

        monkeypatch.setattr(ray_index, "_filesystem", wrapped)
    top = f"/{tmp_path.name}"  # memory's files live as long as the process: one folder per test
    for folder in ("locked", "open"):
        for i in range(2):
            fs.pipe(f"{top}/{folder}/{i}.png", make_image(tmp_path / f"{folder}{i}.png", seed=i).read_bytes())
    try:
        url = f"memory://{top}"
        everything = [s.path for s in walk_url(url)]
        real_ls = type(fs).ls

        def ls(self, path, detail=True, **kwargs):
            if self._strip_protocol(path).rstrip("/") == f"{top}/locked":
                raise PermissionError(13, "Permission denied", path)
            return real_ls(self, path, detail=detail, **kwargs)

        monkeypatch.setattr(type(fs), "ls", ls)
        with caplog.at_level("WARNING", logger="retrieval.cluster.ray_index"):
            stats = list(walk_url(url))
    finally:
        monkeypatch.undo()
        fs.rm(top, recursive=True)
    [marker] = [s for s in stats if s.unlisted]
    assert marker.path.startswith("memory://") and marker.path in caplog.text
    hidden = [p for p in everything if p.startswith(marker.path + "/")]
    assert len(hidden) == 2  # the folder's two files, which staging keeps by this prefix
    assert [s.path for s in stats if not s.unlisted] == [p for p in everything if p not in hidden]


def test_what_a_refused_url_folder_held_stays_indexed(photos, tmp_path, monkeypatch):
    """Before: fsspec's walk gave the refused folder as an empty one, and staging planned its photos' removal.

    Staged from walk_url directly, as RaySource.walk does for a URL on another filesystem: a
    file:// run's root is a local path by then (root_name), walked by the local walk.
    """
    store = IndexStore.open(str(tmp_path / "idx"), create=True)
    try:
        indexer.run(store, ColorAligner(), [photos])  # all six indexed
        (photos / "open" / "0.png").unlink()
        _refuse(monkeypatch, photos / "locked")
        staging = Staging(store.catalog, [str(photos)])
        try:
            staging.add_stats(walk_url(photos.as_uri()))
            plan = staging.plan(int(store.catalog.get_meta("next_id", 1)))
            removed = {store.catalog.db.conn.execute("SELECT path FROM images WHERE id = ?", (int(i),)).fetchone()[0]
                       for i in staging.deleted_ids()}
        finally:
            staging.close()
    finally:
        store.close()
    assert removed == {str(photos / "open" / "0.png")}  # a file really gone goes; the unseen three stay
    assert staging.unlisted == [str(photos / "locked")]
    assert (plan.removed, plan.unchanged) == (1, 2)


def _index(args: list[str], monkeypatch) -> tuple[int, str, dict]:
    """`retrieval index ARGS` up to the run: what build_index would have been given."""
    given: dict = {}

    def build_index(*args, **kwargs):
        given.update(kwargs)
        raise SystemExit(0)  # the run itself is not this test's business

    monkeypatch.setattr(retrieval.api, "build_index", build_index)
    result = CliRunner().invoke(main, ["index", *args])
    return result.exit_code, result.output, given


def test_ray_stall_reaches_the_ray_settings(tmp_path, monkeypatch):
    code, _, given = _index([str(tmp_path), "--ray", "--ray-stall", "600"], monkeypatch)
    assert code == 0 and isinstance(given["ray"], RaySettings) and given["ray"].stall_seconds == 600.0
    code, _, given = _index([str(tmp_path), "--ray"], monkeypatch)
    assert code == 0 and given["ray"].stall_seconds == RaySettings().stall_seconds  # left out: the default


@pytest.mark.parametrize("args, message", [
    (["--ray-stall", "30"], "add --ray"),
    (["--ray", "--ray-stall", "0"], "--ray-stall"),
    (["--ray", "--ray-stall", "-5"], "--ray-stall"),
    (["--ray", "--ray-stall", "soon"], "--ray-stall"),
    (["--ray", "--ray-stall", "nan"], "above 0"),
    (["--ray", "--ray-stall", "inf"], "above 0"),
])
def test_a_bad_or_misplaced_ray_stall_is_a_usage_error(tmp_path, monkeypatch, args, message):
    code, output, given = _index([str(tmp_path), *args], monkeypatch)
    assert code == 2 and message in output and "Traceback" not in output
    assert not given  # no run started
