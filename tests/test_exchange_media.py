"""Export then import of an index holding a video, a RAW+JPEG pair and a Live Photo (issue 21
follow-up): every frame keeps its time and vector, so `search --moments` answers the same after
the round trip, and the pair's RAW and the Live Photo's .mov come back with their photos.

Real files made here: an H.264 video of three scenes of real photos (PyAV, tests/video_kit.py),
a JPEG with its DNG (pidng), a JPEG with its .mov, a lone photo. Plumbing only: the
ColorAligner encodes, real FAISS and SQLite store and search.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ColorAligner, skimage_photo
from PIL import Image
from video_kit import make_video

from benchmarks.raw_files import save_dng
from retrieval.ingest import pipeline as indexer
from retrieval.ingest.embeddings import import_embeddings
from retrieval.ingest.pipeline import IndexSettings
from retrieval.search.query import search_vectors
from retrieval.storage import frames
from retrieval.storage.exchange import LayoutError, export_index
from retrieval.storage.health import check
from retrieval.storage.store import IndexStore

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

SCENE_S = 2.0


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """An index (ColorAligner) of a three-scene video, a RAW+JPEG pair, a Live Photo and a photo."""
    root = tmp_path_factory.mktemp("exchange-media")
    photos = root / "photos"
    for sub in ("clips", "camera", "live"):
        (photos / sub).mkdir(parents=True)
    make_video(photos / "clips" / "scenes.mp4", ["astronaut.png", "coffee.png", "rocket.jpg"], scene_seconds=SCENE_S,
               size=(160, 120), codec="h264")
    motorcycle = Image.open(skimage_photo("motorcycle_left.png")).convert("RGB").resize((320, 240))
    motorcycle.save(photos / "camera" / "DSC_0042.JPG", quality=90)
    save_dng(motorcycle, photos / "camera" / "DSC_0042.dng")
    Image.open(skimage_photo("chelsea.png")).convert("RGB").save(photos / "live" / "IMG_0007.JPG", quality=90)
    make_video(photos / "live" / "IMG_0007.MOV", ["chelsea.png"], scene_seconds=1.0, size=(160, 120), codec="h264")
    shutil.copyfile(skimage_photo("coffee.png"), photos / "coffee.png")
    store = IndexStore.open(root / "idx", create=True)
    try:
        indexer.run(store, ColorAligner(), [photos], settings=IndexSettings(workers=0))
    finally:
        store.close()
    return root / "idx"


def state(index: Path) -> dict:
    """What must survive the round trip: files, every vector by FAISS id, each video's frames, pairs."""
    store = IndexStore.open(index)
    try:
        catalog = store.catalog
        conn = catalog.db.conn
        return {
            "files": dict(conn.execute("SELECT path, id FROM images")),
            "vectors": {int(i): v.tobytes() for ids, vs in catalog.image_vectors() for i, v in zip(ids, vs)},
            "frames": {path: conn.execute("SELECT n, time FROM frames WHERE hash = ? ORDER BY n", (h,)).fetchall()
                       for path, h in conn.execute("SELECT path, hash FROM images JOIN vectors USING (hash) "
                                                   "WHERE vectors.frames IS NOT NULL")},
            "pairs": {p: (c, m) for p, c, m in conn.execute("SELECT path, companions, motion FROM images")},
        }
    finally:
        store.close()


def moments(index: Path, frame: int) -> tuple[list, list]:
    """(every moment, one hit per file) for the query that is the video's frame `frame`."""
    store = IndexStore.open(index)
    try:
        catalog = store.catalog
        video = catalog.db.execute("SELECT id FROM images WHERE path LIKE '%scenes.mp4'").fetchone()[0]
        fid = video + frame * frames.FRAME_STEP
        query = catalog.image_vectors_by_id([fid])[fid][None]
        every = search_vectors(store, query, 10, moments=True)[0]
        grouped = search_vectors(store, query, 10)[0]
        as_rows = lambda hits: [(h.id, h.path, h.media, h.time, round(h.score, 6)) for h in hits]  # noqa: E731
        return as_rows(every), as_rows(grouped)
    finally:
        store.close()


def test_export_then_import_keeps_every_frame_and_the_pairs(source, tmp_path):
    out = tmp_path / "emb"
    export_index(str(source), out)
    table = pq.read_table(out / "metadata" / "metadata_0.parquet")
    assert table.column_names == ["image_path", "id", "media", "time", "frame", "companions", "motion"]
    rows = {(Path(r["image_path"]).name, r["frame"]): r for r in table.to_pylist()}
    assert rows[("DSC_0042.JPG", None)]["companions"] == [str(source.parent / "photos" / "camera" / "DSC_0042.dng")]
    assert rows[("IMG_0007.JPG", None)]["motion"] == str(source.parent / "photos" / "live" / "IMG_0007.MOV")
    assert rows[("coffee.png", None)]["companions"] is None and rows[("coffee.png", None)]["motion"] is None

    import_embeddings(out, str(tmp_path / "copy"), aligner=ColorAligner())
    before, after = state(source), state(tmp_path / "copy")
    assert after["files"] == before["files"]
    assert after["vectors"] == before["vectors"]  # bit for bit, every frame under its own FAISS id
    (video,) = [p for p in before["frames"] if p.endswith("scenes.mp4")]
    assert len(before["frames"][video]) == 3 and after["frames"] == before["frames"]
    assert sorted(int(t // SCENE_S) for _, t in after["frames"][video]) == [0, 1, 2]
    assert after["pairs"] == before["pairs"]
    assert not check(tmp_path / "copy").problems
    # search --moments answers the same: each moment with its time, and the grouped search too.
    for frame in (1, 2):
        assert moments(tmp_path / "copy", frame) == moments(source, frame)
    every, grouped = moments(tmp_path / "copy", 2)
    assert len([m for m in every if m[1] == video]) == 3
    assert grouped[0][1] == video and int(grouped[0][3] // SCENE_S) == 2


def test_an_export_without_the_pair_columns_still_imports_every_frame(source, tmp_path):
    out = tmp_path / "emb"
    export_index(str(source), out)
    # As the export before this one wrote it: media, time and frame, but no companions or motion.
    meta = out / "metadata" / "metadata_0.parquet"
    pq.write_table(pq.read_table(meta).drop_columns(["companions", "motion"]), meta)
    import_embeddings(out, str(tmp_path / "copy"), aligner=ColorAligner())
    before, after = state(source), state(tmp_path / "copy")
    assert after["frames"] == before["frames"] and after["vectors"] == before["vectors"]
    assert all(pair == (None, None) for pair in after["pairs"].values())


def test_frame_rows_without_ids_are_grouped_by_path(source, tmp_path):
    out = tmp_path / "emb"
    export_index(str(source), out)
    meta = out / "metadata" / "metadata_0.parquet"
    pq.write_table(pq.read_table(meta).drop_columns(["id"]), meta)
    import_embeddings(out, str(tmp_path / "copy"), aligner=ColorAligner())
    before, after = state(source), state(tmp_path / "copy")
    assert after["frames"] == before["frames"]
    assert sorted(after["vectors"].values()) == sorted(before["vectors"].values())
    assert moments(tmp_path / "copy", 2)[0] == [(after["files"][p], p, m, t, s) for _, p, m, t, s in moments(source, 2)[0]]


@pytest.mark.parametrize("damage, message", [
    ("no_time", "a video's frame row needs its time"),
    ("twice", "a video's frame appears twice"),
])
def test_bad_frame_rows_are_refused_in_one_line_and_leave_nothing(source, tmp_path, damage, message):
    out = tmp_path / "emb"
    export_index(str(source), out)
    meta = out / "metadata" / "metadata_0.parquet"
    table = pq.read_table(meta).to_pydict()
    later = next(j for j, n in enumerate(table["frame"]) if n)
    if damage == "no_time":
        table["time"][later] = None
    else:  # the second frame given the first frame's number
        table["frame"][later] = 0
    pq.write_table(pa.table(table, schema=pq.read_schema(meta)), meta)
    with pytest.raises(LayoutError, match=message):
        import_embeddings(out, str(tmp_path / "copy"), aligner=ColorAligner())
    assert not (tmp_path / "copy").exists() or not any((tmp_path / "copy").iterdir())
    assert np.load(next((out / "img_emb").glob("*.npy"))).shape[0] == len(table["frame"])
