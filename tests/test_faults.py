"""Faults from outside: special files, slow decoders, damaged derived files, damaged catalogs,
a full disk, a read-only folder, a held lock. Each ends in a repair or one line, never a
traceback, and never loses the previous generation.

Disk-full and read-only cases mount a small tmpfs and need root; they are skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ColorAligner, make_image

from retrieval import aligners
from retrieval.api import open_index
from retrieval.cli import main
from retrieval.errors import DamagedIndex, RetrievalError, StorageError
from retrieval.ingest.pipeline import IndexSettings, run
from retrieval.media.transform import ImageTransform
from retrieval.storage import health
from retrieval.storage.faults import explained
from retrieval.storage.store import IndexStore

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def cli_aligner(monkeypatch, color_aligner):
    """The CLI, end to end, with the plumbing aligner in place of a model (these tests are about faults)."""
    real = aligners.load_aligner
    monkeypatch.setattr(aligners, "load_aligner", lambda spec="default", device=None: (
        color_aligner if spec in ("default", color_aligner.spec) else real(spec, device)))
    return color_aligner


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def index_folder(folder: Path, index: Path, aligner=None, **settings) -> object:
    store = IndexStore.open(index, create=True)
    try:
        return run(store, aligner or ColorAligner(), [folder], settings=IndexSettings(**{"workers": 0, **settings}))
    finally:
        store.close()


def search_ids(index: Path, aligner=None) -> list[int]:
    idx = open_index(str(index))
    idx._aligner = aligner or ColorAligner()
    try:
        return [h.id for h in idx.search("anything", k=50)]
    finally:
        idx.close()


def one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    return lines[0]


# -- nothing blocks ----------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 1])
def test_a_fifo_named_like_a_photo_is_skipped_without_being_opened(tmp_path, workers):
    folder = tmp_path / "pics"
    for i in range(12):
        make_image(folder / f"{i:02d}.png", seed=i)
    os.mkfifo(folder / "photo.jpg")
    done = {}
    thread = threading.Thread(target=lambda: done.update(s=index_folder(folder, tmp_path / "idx", workers=workers)))
    thread.start()
    thread.join(60)
    if thread.is_alive():  # unblock the reader so the test process can end, then fail
        with open(folder / "photo.jpg", "wb", opener=lambda p, f: os.open(p, f | os.O_NONBLOCK)):
            pass
        pytest.fail("indexing blocked on a FIFO")
    summary = done["s"]
    assert summary.added == 12
    assert [s["reason"] for s in summary.skipped] == ["not a regular file (a FIFO)"]


class SlowOnMagicSize(ImageTransform):
    """A decoder stand-in that is pathologically slow on 77-pixel-wide images.

    `block_alarm` also blocks SIGALRM first, as a decoder stuck inside one C call would be
    deaf to it: then only the parent's limit and a new worker can save the run.
    """

    def __init__(self, block_alarm: bool):
        super().__init__(size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
        self.block_alarm = block_alarm

    def __call__(self, image):
        if image.size[0] == 77:
            import signal

            if self.block_alarm:
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(600)
        return super().__call__(image)


@pytest.mark.parametrize("block_alarm", [False, True], ids=["slow-decode", "stuck-worker"])
def test_a_pathological_image_is_skipped_within_its_limit_and_the_run_goes_on(tmp_path, monkeypatch, block_alarm):
    from retrieval.media import workers

    monkeypatch.setattr(workers, "SLACK_S", 1.0)
    folder = tmp_path / "pics"
    for i in range(30):
        make_image(folder / f"{i:02d}.png", seed=i)
    make_image(folder / "20-slow.png", seed=99, size=(77, 40))  # not in the first chunk (decoded in-process)
    aligner = ColorAligner()
    aligner.transform = SlowOnMagicSize(block_alarm)
    started = time.monotonic()
    summary = index_folder(folder, tmp_path / "idx", aligner, workers=1, decode_seconds=0.5, chunk=4)
    took = time.monotonic() - started
    assert summary.added == 30 and len(summary.skipped) == 1
    reason = summary.skipped[0]["reason"]
    assert ("worker was replaced" in reason) if block_alarm else reason.startswith("decoding took longer than 0.5s")
    # The 600 s decode was cut short (what remains is mostly starting workers on a busy machine).
    assert took < 300, took


def test_a_file_that_changes_after_the_walk_is_stored_under_what_was_read(tmp_path, monkeypatch):
    from retrieval.media import files
    from retrieval.media.files import content_hash, walk

    folder = tmp_path / "pics"
    for i in range(3):
        make_image(folder / f"{i}.png", seed=i)
    target = folder / "1.png"

    def walk_then_edit(roots, ignored=None, settings=None):
        stats = list(walk(roots, ignored) if settings is None else walk(roots, ignored, settings))
        make_image(target, seed=50, size=(70, 30))  # rewritten between the walk and the read
        return iter(stats)

    import retrieval.ingest.source as local_source

    monkeypatch.setattr(local_source, "walk", walk_then_edit)
    index_folder(folder, tmp_path / "idx")
    store = IndexStore.open(tmp_path / "idx")
    try:
        row = store.catalog.files()[str(target)]
        assert row.hash == content_hash(target.read_bytes())  # the content read, never the old one
    finally:
        store.close()
    monkeypatch.setattr(local_source, "walk", files.walk)
    # The row kept the walk's stale size and mtime, so the next run reads the file again and
    # records what is on disk now, without encoding it again.
    aligner = ColorAligner()
    index_folder(folder, tmp_path / "idx", aligner)
    store = IndexStore.open(tmp_path / "idx")
    try:
        row = store.catalog.files()[str(target)]
        assert (row.size, row.hash) == (target.stat().st_size, content_hash(target.read_bytes()))
        assert aligner.calls == 0
    finally:
        store.close()


# -- damaged derived files repair themselves -------------------------------------------------------
@pytest.fixture
def built(tmp_path, image_dir):
    index = tmp_path / "idx"
    summary = index_folder(image_dir, index)
    assert summary.added == 12
    return index, image_dir


def _truncate(path):
    os.truncate(path, path.stat().st_size // 2)


def _alter(path):
    # Same size, same mtime: only the checksum can tell.
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("damage", [_truncate, _alter, Path.unlink], ids=["truncated", "altered", "missing"])
def test_a_damaged_faiss_file_is_reported_in_one_line_and_rebuilt_without_encoding(built, damage, cli_aligner):
    index, folder = built
    before = search_ids(index)
    path = index / "images-1.faiss"
    damage(path)
    with pytest.raises(DamagedIndex) as err:
        search_ids(index)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "retrieval index" in message
    info = cli("info", "--index", index)
    assert info.exit_code == 0 and "damaged: images" in info.output
    check = cli("check", "--index", index)
    assert check.exit_code == 1 and "images-1.faiss" in check.output
    # The CLI search says the same in one line.
    assert "retrieval index" in one_line(cli("search", "a cat", "--index", index))

    aligner = ColorAligner()
    summary = index_folder(folder, index, aligner)  # folders or none: the file is rebuilt either way
    assert aligner.calls == 0 and summary.encoded == 0 and summary.generation == 2
    assert search_ids(index) == before
    assert cli("check", "--index", index).exit_code == 0


def test_index_with_no_folders_repairs_an_existing_index(built, cli_aligner):
    index, _ = built
    _truncate(index / "images-1.faiss")
    result = cli("index", "--index", index, "--quiet")
    assert result.exit_code == 0, result.output
    assert cli("check", "--index", index).exit_code == 0
    assert len(search_ids(index)) == 12


def test_damaged_caption_file_is_rebuilt_from_the_catalog(built, tmp_path):
    index, folder = built
    captions = tmp_path / "caps.txt"
    captions.write_text("a red square\na blue circle\na green field\n")
    store = IndexStore.open(index)
    try:
        run(store, ColorAligner(), [folder], captions_file=captions, settings=IndexSettings(workers=0))
    finally:
        store.close()
    path = index / "captions-2.faiss"
    _truncate(path)
    aligner = ColorAligner()
    assert index_folder(folder, index, aligner).generation == 3 and aligner.calls == 0
    assert health.check(index).ok
    idx = open_index(str(index))
    idx._aligner = ColorAligner()
    try:
        assert len(idx.search("a red square", k=3, target="texts")) == 3
    finally:
        idx.close()


# -- a damaged catalog is diagnosed ----------------------------------------------------------------
def _damage_pages(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(db, "r+b") as fh:
        fh.seek(2 * 4096)
        fh.write(b"\xa5" * 4096 * 3)


def test_a_catalog_with_damaged_pages_gets_one_line_naming_it(built, cli_aligner):
    index, _ = built
    _damage_pages(index / "catalog.db")
    for args in (["info"], ["search", "a cat"]):
        line = one_line(cli(*args, "--index", index))
        assert "catalog.db" in line and "retrieval check" in line, line
    check = cli("check", "--index", index)
    assert check.exit_code == 1 and "PROBLEM" in check.output


def test_a_file_that_is_not_a_database_is_named(built, cli_aligner):
    index, _ = built
    (index / "catalog.db").write_bytes(b"this is not sqlite" * 100)
    for name in ("catalog.db-wal", "catalog.db-shm"):
        (index / name).unlink(missing_ok=True)
    line = one_line(cli("info", "--index", index))
    assert "catalog.db" in line and "retrieval check" in line


# -- backups -----------------------------------------------------------------------------------------
def test_backup_while_indexing_runs_is_a_consistent_searchable_copy(built, tmp_path, cli_aligner):
    index, folder = built
    more = tmp_path / "more"
    for i in range(200):
        make_image(more / f"m{i:03d}.png", seed=1000 + i)
    writer = threading.Thread(target=lambda: index_folder(more, index, ColorAligner()))
    writer.start()
    copies = []
    try:
        for n in range(4):
            out = tmp_path / f"backup-{n}"
            result = cli("backup", "--index", index, out)
            assert result.exit_code == 0, result.output
            copies.append(out)
    finally:
        writer.join()
    for out in copies:
        report = health.check(out)
        assert report.ok, report.problems
        assert len(search_ids(out)) == min(50, IndexStore.open(out).catalog.count("images"))
    assert cli("backup", "--index", index, copies[0]).exit_code == 1  # never over an existing backup


# -- the environment ---------------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path):
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "mnt"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path) -> Path:
    """Take every free byte of the file system (a real ENOSPC, at the moment chosen)."""
    filler = mount / "filler"
    with open(filler, "ab") as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        except OSError:
            pass
    return filler


@pytest.mark.parametrize("moment", ["vectors", "publishing"])
def test_a_full_disk_is_one_line_and_loses_nothing_published(tmpfs, tmp_path, image_dir, monkeypatch, moment, cli_aligner):
    from retrieval import ann
    from retrieval.storage.catalog import Catalog

    index = tmpfs / "idx"
    assert cli("index", image_dir, "--index", index, "--quiet").exit_code == 0
    before = sorted(search_ids(index))
    more = tmp_path / "more"
    for i in range(40):
        make_image(more / f"m{i:02d}.png", seed=500 + i)
    if moment == "vectors":
        real = Catalog.put_vectors
        monkeypatch.setattr(Catalog, "put_vectors", lambda self, rows, sameness=None: (_fill(tmpfs), real(self, rows, sameness)))
    else:
        real_write = ann.write
        monkeypatch.setattr(ann, "write", lambda index_, path: (_fill(tmpfs), real_write(index_, path)))
    line = one_line(cli("index", more, "--index", index, "--quiet", "--workers", 0))
    assert "disk is full" in line and "nothing published is lost" in line, line
    monkeypatch.undo()
    cli_aligner_again = ColorAligner()
    assert sorted(search_ids(index, cli_aligner_again)) == before  # the previous generation is whole
    assert health.check(index).ok
    (tmpfs / "filler").unlink()
    assert index_folder(more, index).added == 40  # space freed: the next run completes
    assert health.check(index).ok


def test_a_read_only_index_folder_searches_but_refuses_to_index(tmpfs, image_dir, cli_aligner):
    index = tmpfs / "idx"
    assert cli("index", image_dir, "--index", index, "--quiet").exit_code == 0
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    assert not os.access(index, os.W_OK)
    assert len(search_ids(index)) == 12
    assert cli("info", "--index", index).exit_code == 0
    assert cli("check", "--index", index).exit_code == 0
    line = one_line(cli("index", image_dir, "--index", index, "--quiet"))
    assert "read-only" in line and "searches still work" in line, line


def test_a_lock_held_by_another_run_is_one_line(built, cli_aligner):
    index, folder = built
    store = IndexStore.open(index)
    try:
        with store.write_lock():
            line = one_line(cli("index", folder, "--index", index, "--quiet"))
    finally:
        store.close()
    assert "another `retrieval index` run" in line


def test_a_model_file_that_vanished_is_one_line(built, tmp_path):
    index, _ = built
    line = one_line(cli("search", "a cat", "--index", index, "--model", tmp_path / "gone.pt"))
    assert "gone.pt" in line


def test_environment_errors_are_explained_in_one_line(tmp_path):
    import errno

    with pytest.raises(StorageError, match="disk is full"):
        with explained(tmp_path, "indexing"):
            raise RuntimeError("Error in faiss::write_index: write error in x.faiss: 1 != 2 (No space left on device)")
    with pytest.raises(StorageError, match="read-only"):
        with explained(tmp_path):
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "write.lock"))
    with pytest.raises(RetrievalError, match="retrieval check"):
        with explained(tmp_path):
            raise sqlite3.DatabaseError("database disk image is malformed")
    with pytest.raises(ZeroDivisionError):  # a bug is not dressed up as an environmental fault
        with explained(tmp_path):
            raise ZeroDivisionError


# -- safe pipes --------------------------------------------------------------------------------------
def test_search_paths_null_separates_names_holding_newlines(tmp_path, cli_aligner):
    folder = tmp_path / "pics"
    odd = make_image(folder / "two\nlines.png", seed=1)
    make_image(folder / "plain.png", seed=2)
    index_folder(folder, tmp_path / "idx")
    out = cli("search", "x", "--index", tmp_path / "idx", "--paths", "--null", "-k", 5).stdout_bytes
    assert sorted(out.split(b"\0")[:-1]) == sorted([os.fsencode(odd), os.fsencode(folder / "plain.png")])
    assert out.endswith(b"\0") and np.sum([p == os.fsencode(odd) for p in out.split(b"\0")]) == 1


def test_a_folder_that_cannot_be_listed_keeps_its_photos_and_says_so(tmp_path, monkeypatch, caplog):
    """A subfolder the walk may not list (no permission, an I/O error) is not a deleted one."""
    folder = tmp_path / "pics"
    for i in range(3):
        make_image(folder / "locked" / f"{i}.png", seed=i)
        make_image(folder / "open" / f"{i}.png", seed=10 + i)
    index_folder(folder, tmp_path / "idx")
    locked = str(folder.resolve() / "locked")
    make_image(folder / "open" / "new.png", seed=30)
    (folder / "open" / "0.png").unlink()
    real_scandir = os.scandir

    def scandir(path="."):
        if str(path) == locked:  # what root meets on a folder it may not read, whatever chmod says
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level("WARNING", logger="retrieval.media.files"):
        index_folder(folder, tmp_path / "idx")
    assert any(locked in r.getMessage() and "Permission denied" in r.getMessage() for r in caplog.records)
    store = IndexStore.open(tmp_path / "idx")
    try:
        paths = set(store.catalog.files())
    finally:
        store.close()
    assert {f"{locked}/{i}.png" for i in range(3)} <= paths  # kept, though unseen
    assert str(folder.resolve() / "open" / "new.png") in paths  # the rest of the run went on
    assert str(folder.resolve() / "open" / "0.png") not in paths  # a file really gone still goes
    monkeypatch.setattr(os, "scandir", real_scandir)
    index_folder(folder, tmp_path / "idx")  # readable again: nothing to redo
    store = IndexStore.open(tmp_path / "idx")
    try:
        assert {f"{locked}/{i}.png" for i in range(3)} <= set(store.catalog.files())
    finally:
        store.close()


def test_a_catalog_created_by_two_processes_at_once_keeps_its_migrated_schema(tmp_path, monkeypatch):
    """A search opening a new index's catalog as the first index run creates it: the opener that
    read "no schema yet" just before the other migrated must not set version 1 over it (every
    later run then failed on "duplicate column name")."""
    from retrieval.storage.catalog import SCHEMA_VERSION, Catalog

    path = tmp_path / "catalog.db"
    first = Catalog(path)  # the index run: created and migrated
    assert first.schema_version == SCHEMA_VERSION
    real = Catalog.get_meta
    stale = {"schema_version": True}

    def get_meta_read_before_the_other(self, key, default=None):
        if stale.pop(key, False):  # this opener's first look came before the other's commit
            return None
        return real(self, key, default)

    monkeypatch.setattr(Catalog, "get_meta", get_meta_read_before_the_other)
    second = Catalog(path)
    monkeypatch.undo()
    assert not stale  # the late look really happened
    assert second.schema_version == first.schema_version == SCHEMA_VERSION
    Catalog(path).migrate()  # a later run opens and migrates it as usual
    first.close()
    second.close()
