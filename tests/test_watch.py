"""`retrieval watch`: real files in real folders, changed while a watcher runs (docs/watching.md)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from retrieval import aligners
from retrieval.cli import main
from retrieval.errors import FolderGone, IndexBusy
from retrieval.ingest import pipeline as indexer
from retrieval.ingest.pipeline import IndexSettings
from retrieval.ingest.watch import Watcher, WatchSettings
from retrieval.storage.store import IndexStore, lock_holder
from tests.conftest import make_image, skimage_photo

FAST = WatchSettings(quiet=0.3, max_wait=5, retry=0.5, index=IndexSettings(workers=0))
REPO = Path(__file__).resolve().parent.parent


def rows(index: Path) -> dict[str, str]:
    """path -> content hash of the published images."""
    with sqlite3.connect(index / "catalog.db", timeout=10) as db:
        return dict(db.execute("SELECT path, hash FROM images"))


def wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.1)
    raise AssertionError("the watcher did not get there in time")


class Running:
    """A watcher in a thread, stopped at the end; its batch lines are kept."""

    def __init__(self, index: Path, aligner, roots, settings: WatchSettings = FAST):
        self.lines: list[str] = []
        self.stop = threading.Event()
        self.watcher = Watcher(index, aligner, roots, settings, report=self.lines.append, stop=self.stop)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.watcher.run()
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            self.error = exc

    def __enter__(self) -> Running:
        self.thread.start()
        wait_for(lambda: self.watcher.batches >= 1 or self.error is not None)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error

    def batches_after(self, n: int) -> bool:
        return self.watcher.batches > n


def test_new_files_are_indexed_deleted_ones_leave_and_renames_keep_their_vector(tmp_path, image_dir, color_aligner):
    index = tmp_path / "idx"
    with Running(index, color_aligner, [image_dir]) as running:
        assert len(rows(index)) == 12 and running.lines[0].startswith("batch 1 (start): added 12")
        new = make_image(image_dir / "sub0" / "new.jpg", seed=99)
        wait_for(lambda: str(new) in rows(index))
        calls = color_aligner.calls
        gone = image_dir / "sub1" / "img01.png"
        gone.unlink()
        wait_for(lambda: str(gone) not in rows(index))
        before = rows(index)
        renamed = image_dir / "sub2" / "renamed.jpg"
        os.rename(new, renamed)
        wait_for(lambda: str(renamed) in rows(index) and str(new) not in rows(index))
        assert rows(index)[str(renamed)] == before[str(new)]
        assert color_aligner.calls == calls  # neither the delete nor the rename encoded anything
        shutil.rmtree(image_dir / "sub1")  # a removed folder leaves the index
        wait_for(lambda: not any("/sub1/" in p for p in rows(index)))
    assert all(" in " not in line or line.endswith("s") for line in running.lines)
    assert any("moved 1" in line for line in running.lines), running.lines


class FinderCount:
    """Counts FaceFinder constructions and model loads (in this process: a batch of one file decodes here)."""

    def __init__(self, monkeypatch):
        from retrieval.aligners.faces import FaceFinder

        self.built: list[object] = []
        self.loaded: list[str] = []
        init, load = FaceFinder.__init__, FaceFinder._load

        def counted_init(finder, settings=None):
            self.built.append(finder)
            init(finder, settings)

        def counted_load(finder, name):
            self.loaded.append(name)
            return load(finder, name)

        monkeypatch.setattr(FaceFinder, "__init__", counted_init)
        monkeypatch.setattr(FaceFinder, "_load", counted_load)


def test_a_watcher_with_faces_off_builds_no_face_finder(tmp_path, image_dir, color_aligner, monkeypatch):
    count = FinderCount(monkeypatch)
    watcher = Watcher(tmp_path / "idx", color_aligner, [image_dir], WatchSettings(index=IndexSettings(faces=False)))
    assert watcher.batch("start").added == 12
    make_image(image_dir / "new.jpg", seed=99)
    assert watcher.batch("1 new").added == 1
    assert count.built == [] and count.loaded == []


@pytest.mark.slow
def test_watcher_batches_share_one_face_finder_and_its_loaded_models(tmp_path, color_aligner, monkeypatch):
    from PIL import Image

    face = Path(sys.prefix) / "share" / "face-photos" / "obama.jpg"
    if not face.is_file():
        pytest.skip(f"{face} is missing: `bash scripts/setup.sh --test` unpacks face_recognition's photos there")
    count = FinderCount(monkeypatch)
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copyfile(skimage_photo("coffee.png"), folder / "coffee.png")
    # Default workers: a batch this small decodes in the watcher's own process.
    watcher = Watcher(tmp_path / "idx", color_aligner, [folder], WatchSettings(index=IndexSettings(faces=True)))
    assert watcher.batch("start").faces == 0
    shutil.copyfile(face, folder / "a.jpg")
    assert watcher.batch("1 new").faces == 1
    with Image.open(face) as image:
        other = image.convert("RGB")
    other.putpixel((0, 0), (255, 0, 0))  # new content, the same face
    other.save(folder / "b.jpg", quality=92)
    summary = watcher.batch("1 new")
    assert (summary.added, summary.faces) == (1, 2)
    assert len(count.built) == 1  # one finder for the three batches
    assert sorted(count.loaded) == ["hog", "landmarks", "resnet"]  # each model loaded once


def test_a_burst_is_one_batch_and_a_file_being_written_waits(tmp_path, image_dir, color_aligner):
    index = tmp_path / "idx"
    with Running(index, color_aligner, [image_dir], WatchSettings(quiet=1.0, max_wait=30, index=IndexSettings(workers=0))) as running:
        for i in range(30):
            make_image(image_dir / "burst" / f"{i:02d}.png", seed=200 + i)
        # The burst's rows are committed before its batch is counted: wait for the count.
        wait_for(lambda: running.watcher.batches >= 2)
        assert len(rows(index)) == 42
        assert ": added 30," in running.lines[1], running.lines  # the start, then the whole burst at once
        # A file written in pieces, slower than the quiet period: indexed once, complete.
        data = (image_dir / "burst" / "00.png").read_bytes()
        slow = image_dir / "slow.png"
        make_image(tmp_path / "src.png", seed=500, size=(320, 240))
        data = (tmp_path / "src.png").read_bytes()
        with open(slow, "wb") as fh:
            for start in range(0, len(data), len(data) // 4 + 1):
                fh.write(data[start:start + len(data) // 4 + 1])
                fh.flush()
                time.sleep(0.6)
        wait_for(lambda: str(slow) in rows(index))
    with sqlite3.connect(index / "catalog.db") as db:
        assert db.execute("SELECT count(*) FROM skipped").fetchone()[0] == 0


def test_a_watched_folder_that_disappears_keeps_its_photos_and_is_picked_up_again(tmp_path, image_dir, color_aligner,
                                                                                  caplog):
    index, other = tmp_path / "idx", tmp_path / "other"
    make_image(other / "a.png", seed=300)
    caplog.set_level(logging.WARNING, "retrieval.ingest.watch")
    with Running(index, color_aligner, [image_dir, other]) as running:
        assert len(rows(index)) == 13
        moved_away = tmp_path / "unplugged"
        os.rename(image_dir, moved_away)  # what an unmounted disk looks like from here
        wait_for(lambda: any("is gone" in r.message for r in caplog.records))
        make_image(other / "b.png", seed=301)  # the other folder is still watched meanwhile
        wait_for(lambda: str(other / "b.png") in rows(index))
        assert len(rows(index)) == 14  # the 12 photos of the gone folder are still there
        os.rename(moved_away, image_dir)
        wait_for(lambda: any("is back" in r.message for r in caplog.records))
        make_image(image_dir / "c.png", seed=302)
        wait_for(lambda: str(image_dir / "c.png") in rows(index))
        assert len(rows(index)) == 15
    gone_lines = [r.message for r in caplog.records if "is gone" in r.message]
    assert len(gone_lines) == 1 and "stay in the index" in gone_lines[0]
    assert running.watcher.batches >= 3


def test_an_index_run_on_a_missing_folder_removes_nothing(tmp_path, image_dir, color_aligner):
    store = IndexStore.open(tmp_path / "idx", create=True)
    try:
        indexer.run(store, color_aligner, [image_dir], settings=IndexSettings(workers=0))
        shutil.rmtree(image_dir)
        with pytest.raises(FolderGone, match="nothing under it was removed"):
            indexer.run(store, color_aligner, [image_dir], settings=IndexSettings(workers=0))
    finally:
        store.close()
    assert len(rows(tmp_path / "idx")) == 12


def test_the_lock_names_its_holder_and_index_waits_for_a_watcher_batch(tmp_path, image_dir, color_aligner,
                                                                       monkeypatch, caplog):
    index = tmp_path / "idx"
    store = IndexStore.open(index, create=True)
    try:
        with store.write_lock("retrieval index"):
            held = lock_holder(index)
            assert held is not None and held["command"] == "retrieval index" and held["pid"] == os.getpid()
            with pytest.raises(IndexBusy, match=r"another `retrieval index` run \(pid \d+"):
                indexer.run(store, color_aligner, [image_dir], settings=IndexSettings(workers=0))
        assert lock_holder(index) is None
        monkeypatch.setattr(aligners, "load_aligner", lambda spec="default", device=None: color_aligner)
        caplog.set_level(logging.WARNING, "retrieval.storage.store")
        released = threading.Timer(1.0, lambda: None)
        with store.write_lock("retrieval watch"):
            # `retrieval index` meets a watcher's batch: it says so and waits for the batch to end.
            released.start()
            result: list = []
            thread = threading.Thread(target=lambda: result.append(
                CliRunner().invoke(main, ["index", str(image_dir), "--index", str(index), "--quiet", "--workers", "0"])))
            thread.start()
            wait_for(lambda: any("retrieval watch" in r.message for r in caplog.records), 10)
            time.sleep(0.5)
            assert thread.is_alive()
            # `check` needs no lock: it says who writes and checks the published generation.
            check = CliRunner().invoke(main, ["check", "--index", str(index)])
            assert check.exit_code == 0 and "`retrieval watch` (pid" in check.output, check.output
        thread.join(30)
        assert result[0].exit_code == 0, result[0].output
    finally:
        store.close()
    assert "waiting for it to finish" in caplog.records[0].message
    assert len(rows(index)) == 12


def test_retrieval_index_works_while_the_watcher_idles(tmp_path, image_dir, color_aligner, monkeypatch):
    index, more = tmp_path / "idx", tmp_path / "more"
    make_image(more / "x.png", seed=400)
    monkeypatch.setattr(aligners, "load_aligner", lambda spec="default", device=None: color_aligner)
    with Running(index, color_aligner, [image_dir]):
        assert lock_holder(index) is None  # idle: the lock is free
        result = CliRunner().invoke(main, ["index", str(more), "--index", str(index), "--quiet"])
        assert result.exit_code == 0, result.output
        assert str(more / "x.png") in rows(index) and len(rows(index)) == 13
        check = CliRunner().invoke(main, ["check", "--index", str(index)])
        assert check.exit_code == 0, check.output
        make_image(image_dir / "y.png", seed=401)
        wait_for(lambda: str(image_dir / "y.png") in rows(index))
    assert len(rows(index)) == 14  # the watcher's run left the other folder's photo alone


_WATCH_WITH_COLOR_ALIGNER = """
import sys
from retrieval import aligners
from tests.conftest import ColorAligner
aligner = ColorAligner()
aligners.load_aligner = lambda spec="default", device=None: aligner
from retrieval.cli import main
main(sys.argv[1:])
"""


def test_sigterm_stops_retrieval_watch_with_exit_0_and_the_catalog_intact(tmp_path, image_dir):
    index = tmp_path / "idx"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WATCH_WITH_COLOR_ALIGNER, "watch", str(image_dir), "--index", str(index),
         "--debounce", "0.3", "--workers", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(line.startswith("batch 1 (start): added 12") for line in lines), 60)
        make_image(image_dir / "late.png", seed=77)
        wait_for(lambda: any(line.startswith("batch 2 (") for line in lines), 60)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped (SIGTERM)" in err
    assert len(rows(index)) == 13
    assert CliRunner().invoke(main, ["check", "--index", str(index)]).exit_code == 0


@pytest.mark.slow
def test_with_the_default_aligner_a_photo_copied_in_is_found_by_text(tmp_path):
    from retrieval.aligners import load_aligner
    from retrieval.api import open_index

    folder, index = tmp_path / "photos", tmp_path / "idx"
    folder.mkdir()
    for name in ("rocket.jpg", "coffee.png", "motorcycle_left.png"):
        shutil.copyfile(skimage_photo(name), folder / name)
    with Running(index, load_aligner("default"), [folder], WatchSettings(quiet=0.5, index=IndexSettings(workers=0))):
        shutil.copyfile(skimage_photo("chelsea.png"), folder / "cat.png")
        wait_for(lambda: str(folder / "cat.png") in rows(index), 120)
    idx = open_index(str(index))
    try:
        top = idx.search("a cat", k=1)
    finally:
        idx.close()
    assert Path(top[0].path).name == "cat.png"


def test_a_file_written_the_moment_the_first_batch_is_reported_is_indexed(tmp_path, image_dir, color_aligner):
    """The first batch runs once the watch listens: a file written as its line comes out (before
    the watch had started, it waited unseen for some later change) gets a batch of its own."""
    index = tmp_path / "idx"
    late = image_dir / "late.png"
    running = Running(index, color_aligner, [image_dir])
    report = running.lines.append

    def write_on_first_line(line: str) -> None:
        report(line)
        if line.startswith("batch 1 (start)"):
            make_image(late, seed=77)

    running.watcher._report = write_on_first_line
    with running:
        wait_for(lambda: str(late) in rows(index))
    assert running.lines[0].startswith("batch 1 (start): added 12")
    assert running.lines[1].startswith("batch 2 (") and ": added 1," in running.lines[1], running.lines
