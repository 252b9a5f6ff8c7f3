"""Videos searched by the moment: sampling, indexing, results, with real files made by PyAV.

Each test video is three scenes of 2.5 s, each a different real photo (scikit-image's
astronaut, coffee, rocket) drifting one pixel a frame, at 320 x 240 and 10 frames a second:
an MP4 (H.264, whose encoder puts a keyframe at each cut) and a WebM (VP9, one keyframe in
all, so its cuts are found by decoding between keyframes). Beside them: a truncated MP4, an
empty file and an audio-only MP4, which are skipped with their reasons.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ColorAligner, skimage_photo
from PIL import Image

from retrieval.errors import DamagedVideo, EmptyVideo, NoVideoStream
from retrieval.ingest import pipeline as indexer
from retrieval.ingest.pipeline import IndexSettings
from retrieval.media.video import Tally, VideoSettings, frame_at, probe, sample
from retrieval.search.filters import Filters
from retrieval.search.query import search_vectors
from retrieval.storage import frames
from retrieval.storage.store import IndexStore

SCENES = ["astronaut.png", "coffee.png", "rocket.jpg"]
SCENE_S, FPS, SIZE = 2.5, 10, (320, 240)
SEQUENTIAL = IndexSettings(workers=0, batch_size=8)


def make_video(path: Path, photos: list[str], codec: str, seconds: float = SCENE_S) -> Path:
    """`photos` one after another, `seconds` each, drifting a pixel a frame (not a still picture)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for name in photos:
            pixels = np.asarray(Image.open(skimage_photo(name)).convert("RGB").resize(SIZE))
            for i in range(int(seconds * FPS)):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(pixels, i, axis=1)), format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=44100)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """The test videos, made once for the module (about a second of encoding)."""
    folder = tmp_path_factory.mktemp("clips")
    mp4 = make_video(folder / "scenes.mp4", SCENES, "libx264")
    webm = make_video(folder / "scenes.webm", SCENES, "libvpx-vp9")
    damaged = folder / "damaged.mp4"
    damaged.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    empty = folder / "empty.mov"
    empty.write_bytes(b"")
    audio = make_audio_only(folder / "voice.mp4")
    return {"mp4": mp4, "webm": webm, "damaged": damaged, "empty": empty, "audio": audio}


@pytest.fixture
def library(tmp_path, clips) -> Path:
    """A folder of the videos, the bad files and one photo (a cat)."""
    folder = tmp_path / "library"
    (folder / "clips").mkdir(parents=True)
    for key in ("mp4", "webm", "damaged", "empty", "audio"):
        shutil.copy(clips[key], folder / "clips" / clips[key].name)
    shutil.copy(skimage_photo("chelsea.png"), folder / "chelsea.png")
    return folder


def scene_of(seconds: float) -> int:
    return int(seconds // SCENE_S)


# -- sampling -------------------------------------------------------------------------
def test_h264_is_sampled_at_its_cuts_from_keyframes_alone(clips):
    tally = Tally()
    sampled = list(sample(str(clips["mp4"]), VideoSettings(), tally=tally))
    assert [scene_of(f.time) for f in sampled] == [0, 1, 2]
    assert sampled[0].time == 0.0
    assert all(f.image.size == SIZE and f.image.mode == "RGB" for f in sampled)
    # x264 puts a keyframe at each cut: three frames decoded of 75.
    assert tally.decoded == 3 < 3 * SCENE_S * FPS


def test_vp9_without_keyframes_at_cuts_still_finds_each_scene(clips):
    sampled = list(sample(str(clips["webm"])))
    assert [scene_of(f.time) for f in sampled] == [0, 1, 2]
    # Each kept frame is the first of its scene, not a drifting frame of the scene before.
    assert [round(f.time, 1) for f in sampled] == [0.0, 2.5, 5.0]


def test_cap_floor_and_ceiling(clips):
    notes: list[str] = []
    capped = list(sample(str(clips["mp4"]), VideoSettings(max_frames=2), notes))
    assert len(capped) == 2 and "cap of 2 frames" in notes[0] and "indexed up to 2.5s of 7.5s" in notes[0]
    # A floor of one frame a second: a frame every second even inside a scene.
    floor = [f.time for f in sample(str(clips["mp4"]), VideoSettings(min_per_minute=60, max_per_minute=60))]
    assert len(floor) >= 7 and all(b - a >= 1.0 - 1e-6 for a, b in zip(floor, floor[1:]))
    # A ceiling of one frame every 4 s: the cut at 2.5 s is seen at the first keyframe after 4 s.
    ceiling = [f.time for f in sample(str(clips["mp4"]), VideoSettings(min_per_minute=1, max_per_minute=15))]
    assert ceiling == [0.0, 5.0]


def make_phone_video(path: Path, photos: list[str], seconds: float) -> Path:
    """As a phone records: H.264 with a keyframe every second and none added at a cut (x264's
    scene-cut detection off), so cuts between keyframes are seen in packet sizes alone."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "crf": "23", "sc_threshold": "0"})
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = FPS
        for name in photos:
            pixels = np.asarray(Image.open(skimage_photo(name)).convert("RGB").resize(SIZE))
            for i in range(round(seconds * FPS)):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(pixels, i, axis=1)), format="rgb24")
                out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def test_a_phone_video_is_sampled_from_a_few_of_its_keyframes(tmp_path):
    # Cuts at 3.5 s and 10.5 s fall between keyframes, the one at 7 s on a keyframe.
    photos, seconds = ["astronaut.png", "coffee.png", "rocket.jpg", "chelsea.png"], 3.5
    path = make_phone_video(tmp_path / "phone.mp4", photos, seconds)
    tally = Tally()
    sampled = [f.time for f in sample(str(path), VideoSettings(), tally=tally)]
    assert sorted({int(t // seconds) for t in sampled}) == [0, 1, 2, 3], sampled
    # Each kept frame is the first keyframe of its scene (a keyframe after a cut is inside the new scene).
    assert sampled == [0.0, 4.0, 7.0, 11.0]
    assert tally.keyframes == 14 and tally.decoded <= 7
    # Decoding every keyframe (the sampler before packet sizes) keeps the same frames at twice the decoding.
    every = Tally()
    assert [f.time for f in sample(str(path), VideoSettings(probe_every=0), tally=every)] == sampled
    assert every.decoded == every.keyframes == 14


@pytest.mark.parametrize("photos", [
    ["coffee.png", "chelsea.png", "rocket.jpg"],  # the middle scene's cut shows in no packet size
    ["rocket.jpg", "coffee.png", "chelsea.png"],  # the last scene's: no keyframe after it to show a change
    ["coffee.png", "hubble_deep_field.jpg", "astronaut.png"],  # both
])
def test_three_scenes_of_4s_cut_on_keyframes_keep_a_frame_each(tmp_path, photos):
    # The repro: x264 puts its keyframe of every second at each cut, of about the size of
    # the one before, and each scene is shorter than probe_every (10 s).
    from video_kit import make_video as make_kit_video

    path = make_kit_video(tmp_path / "three.mp4", photos, scene_seconds=4.0, codec="h264")
    tally = Tally()
    kept = [f.time for f in sample(str(path), VideoSettings(), tally=tally)]
    assert [int(t // 4.0) for t in kept] == [0, 1, 2], kept
    assert tally.keyframes == 12 and tally.decoded <= 6  # still a few keyframes of the 12, not all
    # The sampler before (no look back) lost a scene of these.
    assert len(list(sample(str(path), VideoSettings(look_back=False)))) < 3


def test_the_time_limit_grows_with_the_video():
    scaled = VideoSettings()
    assert (scaled.time_limit(None), scaled.time_limit(30.0), scaled.time_limit(300.0)) == (20.0, 20.0, 50.0)
    assert scaled.time_limit(10 * 3600.0) == scaled.longest_s == 300.0  # a backstop's bound
    assert VideoSettings(seconds=5.0).time_limit(300.0) == VideoSettings(seconds=5.0).longest_s == 5.0


def test_bad_videos_raise_named_errors(clips):
    with pytest.raises(DamagedVideo, match="damaged"):
        list(sample(str(clips["damaged"])))
    with pytest.raises(EmptyVideo, match="empty file"):
        list(sample(str(clips["empty"])))
    with pytest.raises(NoVideoStream, match="no video stream .*audio"):
        list(sample(str(clips["audio"])))


def test_frame_at_shows_that_moment(clips):
    photos = [np.asarray(Image.open(skimage_photo(n)).convert("RGB").resize(SIZE), np.float32) for n in SCENES]
    for seconds, scene in ((0.0, 0), (3.1, 1), (6.0, 2), (99.0, 2)):
        shown = np.asarray(frame_at(str(clips["webm"]), seconds), np.float32)
        distances = [np.abs(shown.mean(axis=(0, 1)) - p.mean(axis=(0, 1))).sum() for p in photos]
        assert int(np.argmin(distances)) == scene, (seconds, distances)
    assert probe(str(clips["mp4"]))["duration"] == pytest.approx(7.5, abs=0.2)


def test_opencv_doc_videos_sample():
    """Real AVI files (MPEG-4, MS-MPEG4, Cinepak) from Debian's opencv-doc, where installed."""
    avis = sorted(Path("/usr/share/doc/opencv-doc/examples/data").glob("*.avi"))
    if not avis:
        pytest.skip("Debian's opencv-doc is not installed")
    for path in avis:
        times = [f.time for f in sample(str(path))]
        duration = probe(str(path))["duration"]
        assert times[0] < 0.1 and times == sorted(times), path  # the first frame (an AVI may start at 1/fps)
        # The floor (4 a minute by default) holds to the end.
        assert all(b - a <= 15.0 + 1.0 for a, b in zip(times + [duration], (times + [duration])[1:])), (path, times)


# -- indexing (the plumbing aligner: no model) ----------------------------------------
def _index(tmp_path, library, aligner=None, settings=SEQUENTIAL):
    store = IndexStore.open(tmp_path / "idx", create=True)
    summary = indexer.run(store, aligner or ColorAligner(), [library], settings=settings)
    return store, summary


def test_videos_index_incrementally_move_and_keep_their_frames(tmp_path, library):
    aligner = ColorAligner()
    store, summary = _index(tmp_path, library, aligner)
    try:
        reasons = {Path(s["path"]).name: s["reason"] for s in summary.skipped}
        assert set(reasons) == {"damaged.mp4", "empty.mov", "voice.mp4"}
        assert "damaged" in reasons["damaged.mp4"] and "empty" in reasons["empty.mov"]
        assert "no video stream" in reasons["voice.mp4"]
        catalog = store.catalog
        assert summary.added == 3 and aligner.calls == 3 + 3 + 1  # 3 frames a video, 1 photo
        assert (summary.videos, summary.video_frames) == (2, 6) and "videos 2 (6 frames)" in summary.line()
        stored = catalog.db.execute("SELECT hash, n, time FROM frames ORDER BY hash, n").fetchall()
        assert len(stored) == 6 and sorted({scene_of(t) for _, _, t in stored}) == [0, 1, 2]
        assert catalog.indexed_count() == 3 + 2 + 2  # three files, and two later frames per video
        assert frames.counts(catalog.db.conn) == (2, 6)  # what `retrieval info` shows

        again = indexer.run(store, aligner, [library], settings=SEQUENTIAL)
        assert again.unchanged == 3 and again.encoded == 0 and aligner.calls == 7  # nothing decoded or encoded

        (library / "clips" / "scenes.mp4").rename(library / "moved.mp4")
        moved = indexer.run(store, aligner, [library], settings=SEQUENTIAL)
        assert moved.moved == 1 and moved.encoded == 0 and aligner.calls == 7
        assert catalog.count("frames") == 6
        new_id = catalog.db.execute("SELECT id FROM images WHERE path LIKE '%moved.mp4'").fetchone()[0]
        assert catalog.indexed_count() == 7

        # A copy shares its content's frames: one more file, no more frames, nothing encoded.
        shutil.copy(library / "moved.mp4", library / "copy.mp4")
        copied = indexer.run(store, aligner, [library], settings=SEQUENTIAL)
        assert copied.added == 1 and copied.encoded == 0 and catalog.count("frames") == 6
        assert catalog.indexed_count() == 10

        from retrieval.storage.health import check

        report = check(store.folder)
        assert not report.problems, report.problems
        # The moved video's frames are found under its new id.
        frame_two = new_id + 2 * frames.FRAME_STEP
        query = catalog.image_vectors_by_id([frame_two])[frame_two][None]
        hits = search_vectors(store, query, 3)[0]
        assert Path(hits[0].path).name in ("moved.mp4", "copy.mp4")  # the same content: a tie
        assert hits[0].media == "video" and scene_of(hits[0].time) == 2
    finally:
        store.close()


def test_results_group_by_video_and_moments_list_each(tmp_path, library):
    store, _ = _index(tmp_path, library)
    try:
        catalog = store.catalog
        video_id = catalog.db.execute("SELECT id FROM images WHERE path LIKE '%scenes.mp4'").fetchone()[0]
        second = video_id + frames.FRAME_STEP  # the coffee scene's frame
        query = catalog.image_vectors_by_id([second])[second][None]
        hits = search_vectors(store, query, 10)[0]
        ids = [h.id for h in hits]
        assert len(ids) == len(set(ids)) == 3  # each file once: two videos and the photo
        best = next(h for h in hits if h.id == video_id)
        assert best.media == "video" and scene_of(best.time) == 1 and best.rank == 1
        photo = next(h for h in hits if h.path.endswith("chelsea.png"))
        assert set(photo.as_dict()) == {"rank", "id", "score", "path"}  # photo hits as before
        assert hits[0].as_dict()["time"] == best.time

        moments = search_vectors(store, query, 10, moments=True)[0]
        of_video = [h for h in moments if h.id == video_id]
        assert len(moments) == 7 and len(of_video) == 3
        assert sorted(scene_of(h.time) for h in of_video) == [0, 1, 2]

        # A date sort and a cutoff order and cut files, each video still once.
        from retrieval.search.ordering import Order

        dated = search_vectors(store, query, 10, order=Order.parse(sort="date", min_score=best.score - 1e-6))[0]
        assert [h.id for h in dated] == [video_id] and dated[0].time == best.time
        by_date = search_vectors(store, query, 10, order=Order.parse(sort="date-asc", min_score=-1.0))[0]
        assert sorted(h.id for h in by_date) == sorted(ids)
        # k files even when one video's frames fill the first places.
        assert [h.id for h in search_vectors(store, query, 2)[0]] == ids[:2]
        # A filter on the file applies to its frames: a folder holds the videos, not the photo.
        folder = Filters.parse(folders=[str(library / "clips")])
        found = search_vectors(store, query, 10, filters=folder)[0]
        assert {Path(h.path).name for h in found} == {"scenes.mp4", "scenes.webm"}
        assert next(h for h in found if h.id == video_id).time == best.time
        moments_filtered = search_vectors(store, query, 10, filters=folder, moments=True)[0]
        assert len(moments_filtered) == 6
    finally:
        store.close()


def test_index_progress_counts_the_videos_frames_beside_the_files(tmp_path, library, capsys):
    from retrieval.progress import TqdmProgress

    store = IndexStore.open(tmp_path / "idx", create=True)
    try:
        indexer.run(store, ColorAligner(), [library], settings=SEQUENTIAL, progress=TqdmProgress(disable=False))
        drawn = capsys.readouterr().err
        # The bar counts files (3 indexed, 3 skipped) and says the videos' frames after them.
        assert "6/6" in drawn and "videos 2 (6 frames)" in drawn, drawn
        (library / "more").mkdir()
        shutil.copy(skimage_photo("coffee.png"), library / "more" / "coffee.png")
        indexer.run(store, ColorAligner(), [library], settings=SEQUENTIAL, progress=TqdmProgress(disable=False))
        drawn = capsys.readouterr().err
        assert "1/1" in drawn and "videos" not in drawn and "frames" not in drawn, drawn  # photos alone: as before
    finally:
        store.close()


def test_info_shows_videos_only_where_there_are_some():
    from retrieval.cli.index import info_rows

    assert ("videos", "2") in info_rows({"images": 3, "videos": 2, "video_frames": 6})
    assert ("video frames", "6") in info_rows({"images": 3, "videos": 2, "video_frames": 6})
    assert info_rows({"images": 3, "videos": 0, "video_frames": 0}) == [("images", "3")]


def test_export_carries_each_frame_time(tmp_path, library):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from retrieval.storage.exchange import export

    store, _ = _index(tmp_path, library)
    try:
        summary = export(store.catalog, tmp_path / "out")
        assert summary.images == 7
        table = pq.read_table(next((tmp_path / "out" / "metadata").glob("*.parquet"))).to_pydict()
        rows = sorted(zip(table["image_path"], table["media"], table["time"], table["frame"]), key=str)
        videos = [r for r in rows if r[1] == "video"]
        assert len(videos) == 6 and sorted(scene_of(r[2]) for r in videos if r[0].endswith(".mp4")) == [0, 1, 2]
        assert [r[1:] for r in rows if r[0].endswith("chelsea.png")] == [("photo", None, None)]
        vectors = np.load(next((tmp_path / "out" / "img_emb").glob("*.npy")))
        assert vectors.shape == (7, ColorAligner.dim)
    finally:
        store.close()


# -- the real aligner, end to end -----------------------------------------------------
@pytest.mark.slow
def test_caption_of_the_second_scene_finds_the_video_there(tmp_path, library):
    from retrieval.cli import main

    index = tmp_path / "idx"
    runner = CliRunner()
    result = runner.invoke(main, ["index", str(library), "--index", str(index), "--json", "--workers", "0"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert {Path(s["path"]).name for s in summary["skipped"]} == {"damaged.mp4", "empty.mov", "voice.mp4"}

    def search(*args: str) -> list[dict]:
        out = runner.invoke(main, ["search", *args, "--index", str(index), "--json"], catch_exceptions=False)
        assert out.exit_code == 0, out.output
        return json.loads(out.output)["results"]

    hits = search("a cup of coffee")
    videos = [h for h in hits if h.get("media") == "video"]
    assert len({h["id"] for h in hits}) == len(hits) and len(videos) == 2
    assert hits[0]["media"] == "video" and all(scene_of(h["time"]) == 1 for h in videos), hits
    photo = next(h for h in hits if h["path"].endswith("chelsea.png"))
    assert "time" not in photo and "media" not in photo

    # The scene's own photo as the query image finds the same moment.
    by_image = search("--image", str(skimage_photo("coffee.png")), "-k", "2")
    assert [scene_of(h["time"]) for h in by_image] == [1, 1]

    moments = search("a cup of coffee", "--moments")
    assert len(moments) == 7 and sum(h.get("media") == "video" for h in moments) == 6

    paths = runner.invoke(main, ["search", "a cup of coffee", "--index", str(index), "--paths", "-k", "1"]).output
    assert paths.strip().endswith(("scenes.mp4", "scenes.webm")) and "\t" not in paths
    human = runner.invoke(main, ["search", "a cup of coffee", "--index", str(index), "-k", "1"]).output
    assert " at 0:02.5" in human


def test_a_video_as_the_query_image_stands_for_its_frames(clips):
    from retrieval.search.query import Query, query_vector

    aligner = ColorAligner()
    vector = query_vector(aligner, Query(image=str(clips["mp4"])))
    frames_seen = [aligner.transform(f.image) for f in sample(str(clips["mp4"]))]
    mean = aligner.encode_images(np.stack(frames_seen)).mean(axis=0)
    assert vector.shape == (1, ColorAligner.dim)
    assert np.allclose(vector[0], mean / np.linalg.norm(mean), atol=1e-3)  # float16 pixels on the way


def test_a_phone_video_is_upright_dated_and_placed(tmp_path, library):
    """A portrait recording (a landscape frame with a display rotation), dated and placed in its
    container's metadata as phones do: sampled upright, and the date and place filters find it."""
    path = library / "portrait.mp4"
    with av.open(str(path), "w") as out:
        out.metadata["creation_time"] = "2021-07-04T18:30:00.000000Z"
        out.metadata["location"] = "+48.8584+002.2945/"
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(90)  # counterclockwise, as FFmpeg counts
        pixels = np.zeros((48, 64, 3), np.uint8)
        pixels[:, :32] = 255  # the left half white
        for _ in range(FPS):
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    [first] = list(sample(str(path)))
    upright = np.asarray(first.image, np.float32)
    assert first.image.size == (48, 64) and upright[32:].mean() > 200 > 50 > upright[:32].mean()
    from retrieval.media.video import recorded

    meta = recorded(str(path))
    assert (meta.taken, meta.taken_offset, meta.lat, meta.lon) == ("2021-07-04T18:30:00", "+00:00", 48.8584, 2.2945)

    store, _ = _index(tmp_path, library)
    try:
        query = np.ones((1, ColorAligner.dim), np.float32) / np.sqrt(ColorAligner.dim)
        for found in (Filters.parse(after="2021-07-04", before="2021-07-05"), Filters.parse(near="48.86,2.29,5")):
            hits = search_vectors(store, query, 10, filters=found)[0]
            assert [(Path(h.path).name, h.media) for h in hits] == [("portrait.mp4", "video")]
    finally:
        store.close()
