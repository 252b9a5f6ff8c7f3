"""People: faces found, aligned and embedded with dlib's packaged models, stored by content, grouped
into people, and the user's corrections kept.

Real faces: the portraits in face_recognition's source archive (Barack Obama three times, Joe
Biden once), unpacked by `scripts/setup.sh --test` into .venv/share/face-photos, and
scikit-image's astronaut (Eileen Collins). Photos without people: scikit-image's coffee, rocket
and cat. The indexing tests use the plumbing aligner: faces do not depend on the image model.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ColorAligner, skimage_photo
from PIL import Image

from retrieval.cli import main
from retrieval.ingest import pipeline
from retrieval.ingest.faces import FAILED, scan, store_found
from retrieval.ingest.settings import IndexSettings
from retrieval.media.decode import decode, load_bytes
from retrieval.people.clustering import DEFAULT_THRESHOLD, group
from retrieval.storage.store import IndexStore

FACE_PHOTOS = Path(sys.prefix) / "share" / "face-photos"
SEQUENTIAL = IndexSettings(workers=0, batch_size=4)


def face_photo(name: str) -> Path:
    path = FACE_PHOTOS / name
    if not path.is_file():
        pytest.skip(f"{path} is missing: `bash scripts/setup.sh --test` unpacks face_recognition's photos there")
    return path


@pytest.fixture(scope="session")
def finder():
    """dlib's models, loaded once for the session."""
    from retrieval.aligners.faces import FaceFinder

    return FaceFinder().load()


def invoke(*args, ok=True, input=None):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, input=input)
    assert (result.exit_code == 0) == ok, result.output
    return result


def people_json(index) -> list[dict]:
    return json.loads(invoke("people", "--index", index, "--json").output)["people"]


def by_file(people: list[dict]) -> dict[str, int]:
    """File name -> the id of the person whose face is in it."""
    return {Path(face["path"]).name: person["id"] for person in people for face in person["faces"]}


def rotated_copy(source: Path, out: Path) -> Path:
    """`source` saved as a JPEG whose pixels are stored turned a quarter, with EXIF orientation 6
    saying how to show it upright: the way phones save photos taken in portrait."""
    upright = Image.open(source).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown after turning 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(out, quality=95, exif=exif)
    return out


# -- finding faces ------------------------------------------------------------------
def test_no_faces_in_photos_without_people_and_nothing_loaded_for_them():
    from retrieval.aligners.faces import FaceFinder

    fresh = FaceFinder()
    for name in ("coffee.png", "rocket.jpg", "chelsea.png"):
        assert fresh.find(Image.open(skimage_photo(name)).convert("RGB")) == [], name
    # No face, no alignment or descriptor: the costly models were never loaded.
    assert set(fresh._models) == {"hog"}


@pytest.mark.slow
def test_faces_in_an_exif_rotated_photo_are_found_upright_with_the_same_box(finder, tmp_path):
    original = Image.open(skimage_photo("astronaut.png")).convert("RGB")
    [face] = finder.find(original)
    x, y, w, h = face.box
    assert face.embedding.shape == (128,) and face.embedding.dtype == np.float32
    assert 150 < x < 210 and 60 < y < 110 and 70 < w < 110  # her face, top middle of the picture
    path = rotated_copy(skimage_photo("astronaut.png"), tmp_path / "turned.jpg")
    assert Image.open(path).size == (512, 512)
    loaded = load_bytes(str(path), path.read_bytes(), None, faces=finder)
    [found] = loaded.faces
    assert np.abs(np.array(found.box) - np.array(face.box)).max() <= 12
    assert np.linalg.norm(found.embedding - face.embedding) < 0.25  # the same face, not a sideways one


def test_a_finder_reaches_workers_with_its_detector_built_and_the_same_finds():
    import pickle

    from retrieval.aligners.faces import FaceFinder

    built = FaceFinder().prepare()
    copy = pickle.loads(pickle.dumps(built))
    # Building dlib's HOG detector costs each worker a quarter second; unpickling it, milliseconds.
    assert set(copy._models) == {"hog"}
    astronaut = Image.open(skimage_photo("astronaut.png")).convert("RGB")
    assert copy.detect(astronaut) == built.detect(astronaut) != []
    assert set(pickle.loads(pickle.dumps(FaceFinder()))._models) == set()


class Draft224:
    """A transform as `default`'s is to the decoder: JPEGs draft-decoded to a 224 px short side."""

    size = 224

    def __call__(self, image):
        return None


@pytest.mark.slow
def test_a_face_too_small_in_the_models_draft_is_found_in_it_enlarged(finder):
    from retrieval.aligners.faces import FaceFinder, FaceSettings

    # A face about 15% of a 3200 px photo's long side: 48 px in its 1/8 draft (400 px long),
    # under HOG's 80 px window; enlarged to 480 px, found, without decoding the file again.
    face = Image.open(skimage_photo("astronaut.png")).convert("RGB").crop((130, 30, 320, 220)).resize((900, 900))
    canvas = Image.new("RGB", (3200, 2000), (90, 120, 150))
    canvas.paste(face, (1300, 700))
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    [found] = load_bytes("group.jpg", data, Draft224(), draft=True, faces=finder).faces
    x, y, w, h = found.box
    assert 1400 < x < 1700 and 850 < y < 1100 and 380 < w < 600  # in the full photo's pixels
    as_drafted = FaceFinder(FaceSettings(enlarge_below=0))
    assert load_bytes("group.jpg", data, Draft224(), draft=True, faces=as_drafted).faces == []


@pytest.mark.slow
def test_the_same_person_is_closer_than_the_threshold_and_another_is_not(finder):
    def embedding(name):
        image, _ = decode(face_photo(name).read_bytes())
        [face] = finder.find(image)
        return face.embedding

    obama, obama2, obama3, biden = (embedding(n) for n in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"))
    assert max(np.linalg.norm(obama - obama2), np.linalg.norm(obama - obama3)) < DEFAULT_THRESHOLD
    assert np.linalg.norm(obama - biden) > 0.7
    assert group(np.stack([obama, biden, obama2, obama3])).tolist() == [0, 1, 0, 0]


@pytest.mark.slow
def test_dlibs_face_descriptor_run_by_numpy_and_torch_gives_dlibs_numbers(finder):
    from retrieval.aligners.face_resnet import NumpyFaceResNet
    from retrieval.aligners.face_resnet_torch import TorchFaceResNet
    from retrieval.aligners.faces import FaceFinder, FaceSettings

    by_dlib, by_torch = FaceFinder(FaceSettings(descriptor="dlib")), FaceFinder(FaceSettings(descriptor="torch"))
    pictures = [decode(face_photo(name).read_bytes())[0] for name in ("obama.jpg", "obama2.jpg", "biden.jpg")]
    pictures.append(Image.open(skimage_photo("astronaut.png")).convert("RGB"))
    pair = Image.new("RGB", (1000, 500), "white")  # two faces: one batch of two chips
    for i, picture in enumerate(pictures[1:3]):
        pair.paste(picture.resize((500, round(500 * picture.height / picture.width))), (500 * i, 0))
    for picture in [*pictures, pair]:
        dlibs = by_dlib.find(picture)
        assert len(dlibs) == (2 if picture is pair else 1)
        for ours in (finder.find(picture), by_torch.find(picture)):
            assert [f.box for f in ours] == [f.box for f in dlibs]
            # Measured: at most 4e-7 apart on these faces (float rounding); people are about 0.5 apart.
            assert np.abs(np.stack([f.embedding for f in ours]) - np.stack([f.embedding for f in dlibs])).max() < 1e-4
    assert isinstance(finder._models["resnet"], NumpyFaceResNet)  # the default
    assert isinstance(by_torch._models["resnet"], TorchFaceResNet)


def test_a_damaged_face_descriptor_file_is_one_clear_error(tmp_path):
    from retrieval.aligners.face_resnet import load_face_resnet
    from retrieval.aligners.face_resnet_torch import load_torch_face_resnet
    from retrieval.aligners.faces import FaceFinder, FaceSettings, models_folder
    from retrieval.errors import ModelError

    data = (models_folder() / "dlib_face_recognition_resnet_model_v1.dat").read_bytes()
    cases = {
        "empty": b"",
        "cut in its header": data[:40],
        "cut in a tensor": data[: len(data) // 2],
        "cut in its last bytes": data[:-3],
        "with bytes after it": data + b"\x00\x00",
        "a layer renamed": data.replace(b"\x05relu_", b"\x05relx_", 1),
        "another model": (models_folder() / "shape_predictor_5_face_landmarks.dat").read_bytes(),
    }
    for case, content in cases.items():
        path = tmp_path / "resnet.dat"
        path.write_bytes(content)
        for loader in (load_face_resnet, load_torch_face_resnet):
            with pytest.raises(ModelError) as caught:
                loader(path)
            message = str(caught.value)
            assert str(path) in message and "face-recognition" in message and "\n" not in message, (case, message)
    with pytest.raises(ModelError, match="cannot read"):
        load_face_resnet(tmp_path / "missing.dat")
    with pytest.raises(ModelError, match="unknown face descriptor"):
        FaceFinder(FaceSettings(descriptor="onnx"))


@pytest.mark.slow
def test_a_crowd_is_capped_largest_first_and_small_faces_are_left_out(tmp_path):
    from retrieval.aligners.faces import FaceFinder, FaceSettings

    face = Image.open(skimage_photo("astronaut.png")).convert("RGB").crop((130, 30, 320, 220))
    crowd = Image.new("RGB", (6 * 190, 4 * 190), "white")
    for i in range(24):  # 24 faces, one row of them larger
        crowd.paste(face, ((i % 6) * 190, (i // 6) * 190))
    capped = FaceFinder(FaceSettings(detect_side=1140, max_faces=5)).find(crowd)
    assert len(capped) == 5
    assert [f.box[2] * f.box[3] for f in capped] == sorted((f.box[2] * f.box[3] for f in capped), reverse=True)
    assert FaceFinder(FaceSettings(detect_side=1140, min_face=0.5)).detect(crowd) == []


def test_a_detector_failure_costs_the_photo_its_faces_only(tmp_path, caplog):
    from retrieval.ingest.stream import load_stream

    def broken(image):
        raise RuntimeError("dlib said no")

    path = tmp_path / "a.png"
    Image.open(skimage_photo("astronaut.png")).save(path)
    loaded = load_bytes(str(path), path.read_bytes(), ColorAligner().transform, faces=broken)
    assert loaded.pixels is not None and loaded.faces == [] and "dlib said no" in loaded.face_error
    with caplog.at_level("WARNING"):
        [streamed] = load_stream([str(path)], ColorAligner().transform, frozenset(), SEQUENTIAL, faces=broken)
    assert [r.levelname for r in caplog.records if "face detector failed" in r.getMessage()] == ["WARNING"]
    store = IndexStore.open(tmp_path / "idx", create=True)
    store.catalog.migrate()
    assert store_found(store.catalog, [streamed], "hog@640") == 0
    assert store.catalog.db.execute("SELECT detector FROM face_scans").fetchall() == [(FAILED,)]


# -- indexing, people and corrections -------------------------------------------------
@pytest.fixture
def portraits(tmp_path) -> Path:
    folder = tmp_path / "portraits"
    folder.mkdir()
    for name in ("obama.jpg", "obama3.jpg", "biden.jpg"):
        shutil.copyfile(face_photo(name), folder / name)
    shutil.copyfile(skimage_photo("coffee.png"), folder / "coffee.png")
    return folder


@pytest.mark.slow
def test_index_groups_people_and_the_users_corrections_last(tmp_path, portraits):
    index = tmp_path / "idx"
    store = IndexStore.open(index, create=True)
    summary = pipeline.run(store, ColorAligner(), [portraits], settings=SEQUENTIAL)
    store.close()
    assert summary.faces == 3
    info = json.loads(invoke("info", "--index", index, "--json").output)
    assert (info["faces"], info["people"]) == (3, 2)
    assert any(line.split() == ["people", "2"] for line in invoke("info", "--index", index).output.splitlines())
    people = people_json(index)
    files = by_file(people)
    assert set(files) == {"obama.jpg", "obama3.jpg", "biden.jpg"}  # nobody in the coffee
    assert files["obama.jpg"] == files["obama3.jpg"] != files["biden.jpg"]
    obama, biden = files["obama.jpg"], files["biden.jpg"]
    assert [p["count"] for p in people] == [2, 1]
    assert all(len(face["box"]) == 4 and face["image_id"] > 0 for p in people for face in p["faces"])

    invoke("people", "name", obama, "Barack", "--index", index)
    refused = invoke("people", "name", biden, "barack", "--index", index, ok=False)
    assert refused.output.count("\n") == 1 and "already called 'Barack'" in refused.output
    assert "no person 999" in invoke("people", "name", 999, "X", "--index", index, ok=False).output
    invoke("people", "name", biden, "Joe", "--index", index)

    # A new photo of him joins the named person; a file moved keeps its faces without a new scan.
    shutil.copyfile(face_photo("obama2.jpg"), portraits / "obama2.jpg")
    (portraits / "sub").mkdir()
    (portraits / "obama3.jpg").rename(portraits / "sub" / "moved.jpg")
    catalog = sqlite3.connect(index / "catalog.db")
    faces_before = catalog.execute("SELECT id, hash FROM faces ORDER BY id").fetchall()
    store = IndexStore.open(index)
    pipeline.run(store, ColorAligner(), [portraits], settings=SEQUENTIAL)
    store.close()
    assert catalog.execute("SELECT id, hash FROM faces ORDER BY id").fetchall()[:3] == faces_before
    files = by_file(people_json(index))
    assert files["obama2.jpg"] == files["moved.jpg"] == obama and "obama3.jpg" not in files
    # Regrouping from scratch never renumbers or renames what the user named.
    invoke("people", "regroup", "--index", index)
    named = {p["name"]: p for p in people_json(index)}
    assert named["Barack"]["id"] == obama and named["Barack"]["count"] == 3 and named["Joe"]["id"] == biden

    # Move a face to a new person (a split), then merge it back; hide a person.
    face_id = next(f["face_id"] for f in named["Barack"]["faces"] if Path(f["path"]).name == "obama2.jpg")
    invoke("people", "move", face_id, "new", "--index", index)
    split = by_file(people_json(index))["obama2.jpg"]
    assert split not in (obama, biden)
    invoke("people", "regroup", "--index", index)  # a moved face stays where the user put it
    assert by_file(people_json(index))["obama2.jpg"] == split
    invoke("people", "merge", "Barack", split, "--index", index)
    assert by_file(people_json(index))["obama2.jpg"] == obama
    invoke("people", "hide", "Joe", "--index", index)
    assert [p["name"] for p in people_json(index)] == ["Barack"]
    assert "(hidden)" in invoke("people", "--all", "--index", index).output

    # check, backup and export cover the faces.
    assert "faces: 4 faces" in invoke("check", "--index", index).output
    invoke("backup", "--index", index, tmp_path / "copy")
    assert sqlite3.connect(tmp_path / "copy" / "catalog.db").execute("SELECT count(*) FROM faces").fetchone() == (4,)
    invoke("export", "--index", index, tmp_path / "out", "--faces")
    assert np.load(tmp_path / "out" / "faces" / "face_emb.npy").shape == (4, 128)
    invoke("people", "--index", index, "--sheet", tmp_path / "people.png")
    assert Image.open(tmp_path / "people.png").size[0] >= 320

    # forget asks first; then every face and name is gone and later runs find none.
    assert invoke("people", "forget", "--index", index, input="n\n", ok=False).exit_code == 1
    invoke("people", "forget", "--yes", "--index", index)
    assert people_json(index) == []
    (portraits / "again.jpg").write_bytes(face_photo("obama.jpg").read_bytes() + b"\0")
    store = IndexStore.open(index)
    assert pipeline.run(store, ColorAligner(), [portraits], settings=SEQUENTIAL).faces is None
    store.close()
    assert catalog.execute("SELECT count(*) FROM faces").fetchone() == (0,)


@pytest.mark.slow
def test_people_scan_adds_faces_to_an_index_made_without_them_and_resumes(tmp_path, portraits):
    index = tmp_path / "idx"
    store = IndexStore.open(index, create=True)
    off = IndexSettings(workers=0, batch_size=1, faces=False)
    assert pipeline.run(store, ColorAligner(), [portraits], settings=off).faces is None
    assert store.catalog.count("faces") == 0 and store.catalog.get_meta("faces") is False

    class Interrupted(Exception):
        pass

    class StopAfterOne:
        def start(self, total, label):
            pass

        def advance(self, n=1):
            raise Interrupted

        def close(self):
            pass

    with pytest.raises(Interrupted):
        scan(store, off, StopAfterOne())
    assert store.catalog.count("face_scans") == 1  # the first photo's scan was committed
    store.close()
    out = invoke("people", "scan", "--index", index, "--workers", 0).output
    assert out.startswith("scanned 3 photos")  # the other three, not the first again
    files = by_file(people_json(index))
    assert files["obama.jpg"] == files["obama3.jpg"] != files["biden.jpg"]
    assert "scanned 0 photos" in invoke("people", "scan", "--index", index).output
    # Faces are on for the index from now on: a new photo is looked at while indexing.
    shutil.copyfile(face_photo("obama2.jpg"), portraits / "obama2.jpg")
    store = IndexStore.open(index)
    pipeline.run(store, ColorAligner(), [portraits], settings=SEQUENTIAL)
    store.close()
    assert by_file(people_json(index))["obama2.jpg"] == files["obama.jpg"]


def test_people_commands_on_an_index_without_faces_say_so(tmp_path, image_dir):
    index = tmp_path / "idx"
    store = IndexStore.open(index, create=True)
    pipeline.run(store, ColorAligner(), [image_dir], settings=IndexSettings(workers=0, faces=False))
    store.close()
    assert "faces are off" in invoke("people", "--index", index).output
    info = json.loads(invoke("info", "--index", index, "--json").output)
    assert (info["faces"], info["people"]) == (0, 0)
    text = invoke("info", "--index", index).output
    assert "images" in text and not any(line.split()[0] in ("faces", "people") for line in text.splitlines())
    assert invoke("people", "--index", index, "--json").output.strip().startswith('{\n  "people": []')
    assert "no person named 'Alice'" in invoke("people", "hide", "Alice", "--index", index, ok=False).output
    assert "no face 3" in invoke("people", "move", 3, "new", "--index", index, ok=False).output


def test_videos_are_recorded_as_looked_at_without_faces(tmp_path):
    from retrieval.media.decode import Loaded

    store = IndexStore.open(tmp_path / "idx", create=True)
    store.catalog.migrate()
    assert store_found(store.catalog, [Loaded("clip.mp4", hash="abc", times=[0.0, 2.0])], "hog@640") == 0
    assert store.catalog.db.execute("SELECT hash, faces, detector FROM face_scans").fetchall() == [("abc", 0, "video")]
    store.close()


@pytest.mark.slow
def test_faces_turned_on_for_an_index_made_without_them_look_at_its_unchanged_photos(tmp_path, portraits):
    index = tmp_path / "idx"
    store = IndexStore.open(index, create=True)
    try:
        pipeline.run(store, ColorAligner(), [portraits], settings=IndexSettings(workers=0, faces=False))
        pipeline.run(store, ColorAligner(), [portraits], settings=SEQUENTIAL)  # the index remembers: still off
        assert store.catalog.count("face_scans") == 0
        summary = pipeline.run(store, ColorAligner(), [portraits], settings=IndexSettings(workers=0, faces=True))
        assert (summary.unchanged, summary.encoded, summary.faces) == (4, 0, 3)  # looked at, not re-encoded
        assert store.catalog.count("face_scans") == 4 and store.catalog.get_meta("faces") is True
    finally:
        store.close()
    files = by_file(people_json(index))
    assert files["obama.jpg"] == files["obama3.jpg"] != files["biden.jpg"]


def _at(*coordinates: tuple[int, float]) -> np.ndarray:
    """A 128-d descriptor with the given (axis, value) coordinates, zero elsewhere."""
    out = np.zeros(128, np.float32)
    for axis, value in coordinates:
        out[axis] = value
    return out


def test_a_face_joins_a_persons_mean_within_the_looser_distance_incrementally(tmp_path):
    from types import SimpleNamespace

    from retrieval.people.clustering import DEFAULT_JOIN_THRESHOLD, ClusterSettings, cluster
    from retrieval.people.naming import name
    from retrieval.storage.faces import FaceScan, put_scans

    assert DEFAULT_THRESHOLD < 0.53 < DEFAULT_JOIN_THRESHOLD
    # Alice: two faces 0.45 apart; her third face is 0.53 from their mean but 0.58 from each of
    # them (a changed expression). Bob: one face; a stranger 0.53 from him stays a stranger.
    alice1, alice2, alice3 = _at(), _at((1, 0.45)), _at((1, 0.225), (2, 0.53))
    bob, stranger = _at((3, 5.0)), _at((3, 5.0), (4, 0.53))
    assert min(np.linalg.norm(alice3 - alice1), np.linalg.norm(alice3 - alice2)) > 0.57
    assert group(np.stack([alice1, alice2, alice3, bob, stranger])).tolist() == [0, 0, 0, 1, 2]
    assert group(np.stack([alice1, alice2, alice3, bob, stranger]), join_threshold=0).tolist() == [0, 0, 1, 2, 3]

    def put(catalog, faces):
        put_scans(catalog, [FaceScan(f"h{k}-{len(faces)}", [SimpleNamespace(box=(0, 0, 9, 9), score=1.0, embedding=e)], "test")
                            for k, e in enumerate(faces)])

    def people_of(catalog):
        return [row[0] for row in catalog.db.execute("SELECT person_id FROM faces ORDER BY id")]

    for settings, alice_gets_it in ((ClusterSettings(), True), (ClusterSettings(join_threshold=0), False)):
        store = IndexStore.open(tmp_path / f"idx{alice_gets_it}", create=True)
        catalog = store.catalog
        put(catalog, [alice1, alice2, bob])
        cluster(catalog, settings)
        first = people_of(catalog)
        assert first[0] == first[1] != first[2]
        name(catalog, first[0], "Alice")
        put(catalog, [alice3, stranger])  # a later run's new faces join or start people; the named keep theirs
        summary = cluster(catalog, settings)
        now = people_of(catalog)
        assert now[:3] == first
        assert (now[3] == first[0]) is alice_gets_it and now[4] not in first
        assert summary.joined == int(alice_gets_it) and summary.new_people == 2 - int(alice_gets_it)
        store.close()
