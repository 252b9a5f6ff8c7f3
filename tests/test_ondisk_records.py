"""An on-disk index's lists file is recorded at publishing and checked like the FAISS files."""

from __future__ import annotations

import os

from click.testing import CliRunner
from conftest import make_image

from retrieval.cli import main
from retrieval.ingest import pipeline as indexer
from retrieval.ingest.pipeline import IndexSettings
from retrieval.storage.store import IndexStore


def _index(folder, index_dir, aligner, **settings):
    store = IndexStore.open(index_dir, create=True)
    try:
        return indexer.run(store, aligner, [folder], settings=IndexSettings(workers=0, **settings))
    finally:
        store.close()


def _check(index_dir):
    return CliRunner().invoke(main, ["check", "--index", str(index_dir)])


def _photos(tmp_path, first_seed: int):
    folder = tmp_path / "photos"
    for i in range(40):
        make_image(folder / f"{i:02d}.png", seed=first_seed + i)
    return folder


def test_check_finds_a_damaged_lists_file_and_the_next_run_rebuilds_it(tmp_path, color_aligner):
    folder = _photos(tmp_path, 500)
    index_dir = tmp_path / "idx"
    _index(folder, index_dir, color_aligner, on_disk=True)
    lists = index_dir / "images-1.ivfdata"
    healthy = _check(index_dir)
    assert healthy.exit_code == 0 and "images-1.ivfdata: size and checksum match" in healthy.output

    # One byte altered, size and mtime kept: only the checksum can tell.
    stat = os.stat(lists)
    data = bytearray(lists.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lists.write_bytes(bytes(data))
    os.utime(lists, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    altered = _check(index_dir)
    assert altered.exit_code == 1 and f"{lists} has been altered" in altered.output

    with open(lists, "r+b") as fh:
        fh.truncate(stat.st_size // 2)
    truncated = _check(index_dir)
    assert truncated.exit_code == 1 and f"{lists} is truncated or damaged" in truncated.output

    # Nothing changed in the folder, yet the next run sees the damage and publishes a new generation.
    summary = _index(folder, index_dir, color_aligner, on_disk=True)
    assert summary.generation == 2
    again = _check(index_dir)
    assert again.exit_code == 0 and "images-2.ivfdata: size and checksum match" in again.output


def test_on_disk_is_remembered_by_the_index_until_no_on_disk(tmp_path, color_aligner):
    folder = _photos(tmp_path, 600)
    index_dir = tmp_path / "idx"
    _index(folder, index_dir, color_aligner, on_disk=True)
    make_image(folder / "40.png", seed=640)
    _index(folder, index_dir, color_aligner)  # no flag: the index keeps its lists on disk
    assert (index_dir / "images-2.ivfdata").exists()

    summary = _index(folder, index_dir, color_aligner, on_disk=False)
    assert summary.generation == 3  # nothing changed in the folder: published for the switch alone
    store = IndexStore.open(index_dir)
    try:
        assert store.catalog.get_meta("on_disk") is False
        assert "_HNSW" not in store.catalog.get_meta("index_factory")
    finally:
        store.close()
    assert not (index_dir / "images-3.ivfdata").exists()
    assert "--no-on-disk" in CliRunner().invoke(main, ["index", "--help"]).output
