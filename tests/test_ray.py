"""The Ray path (retrieval.cluster) against the local path, on one Ray instance shared by this module.

Ray starts in about 5 s and stops in about 5 s here, so every test joins the same local
instance (2 CPUs). Encoder actors load the plumbing ColorAligner through a factory; Ray
workers cannot import tests/conftest.py, so that module is pickled by value.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import conftest
import numpy as np
import pytest
import ray
from conftest import ColorAligner, make_image

from retrieval.cluster import INSTALL_HINT, RaySettings, source
from retrieval.cluster.ray_index import CRASH_ONCE_ENV, walk_url
from retrieval.errors import RetrievalError
from retrieval.ingest import pipeline as indexer
from retrieval.media.files import walk
from retrieval.storage.store import IndexStore

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    """One local Ray instance for this module's tests; yields its address for other processes.

    Module-scoped: tests/test_ray_nodes.py runs its own multi-node cluster, and a process
    joins one Ray at a time. "local": a private instance, never a cluster this machine runs.
    """
    # Workers inherit this environment when the instance starts; the named file exists only
    # while the retry test wants a decode worker to die.
    os.environ[CRASH_ONCE_ENV] = str(tmp_path_factory.mktemp("ray-crash") / "crash-once")
    ray.cloudpickle.register_pickle_by_value(conftest)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _ray_source():
    return source(RaySettings(aligner_factory=ColorAligner))


def _run(index_dir, roots, ray_source=None, aligner=None, settings=None):
    store = IndexStore.open(str(index_dir), create=True)
    try:
        return indexer.run(store, aligner or ColorAligner(), roots, source=ray_source, settings=settings)
    finally:
        store.close()


def _catalog(index_dir) -> dict:
    """Everything a search or a later run depends on: rows with ids, vectors, skipped files."""
    with sqlite3.connect(Path(index_dir) / "catalog.db") as db:
        return {
            "images": db.execute("SELECT * FROM images ORDER BY id").fetchall(),  # photo metadata too
            "vectors": dict(db.execute("SELECT hash, vector FROM vectors")),
            # The perceptual hashes duplicates verify with: the Ray path stores them as the local one does.
            "sameness": dict(db.execute("SELECT hash, sameness FROM vectors")),
            "skipped": db.execute("SELECT path, size, mtime, reason FROM skipped ORDER BY path").fetchall(),
            "meta": dict(db.execute("SELECT key, value FROM meta WHERE key IN ('next_id', 'generation', 'model_identity')")),
        }


@pytest.fixture
def mixed_dir(tmp_path) -> Path:
    """Generated pictures in every format, a copy, and bad files of every kind."""
    folder = tmp_path / "mixed"
    for i in range(30):
        suffix = [".jpg", ".png", ".webp", ".bmp", ".gif", ".tiff"][i % 6]
        make_image(folder / f"sub{i % 3}" / f"img{i:02d}{suffix}", seed=i, size=(96, 64))
    (folder / "copy.jpg").write_bytes((folder / "sub0" / "img00.jpg").read_bytes())
    (folder / "not-an-image.jpg").write_bytes(b"this is text")
    (folder / "empty.png").write_bytes(b"")
    data = (folder / "sub0" / "img06.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / ".hidden.jpg").write_bytes(data)
    return folder


def test_the_ray_path_builds_the_same_catalog_as_the_local_path(ray_address, tmp_path, mixed_dir):
    local = _run(tmp_path / "local", [mixed_dir])
    ray_run = _run(tmp_path / "ray", [mixed_dir], _ray_source())
    assert _catalog(tmp_path / "ray") == _catalog(tmp_path / "local")
    assert ray_run.as_dict() | {"seconds": 0, "index": ""} == local.as_dict() | {"seconds": 0, "index": ""}
    reasons = {Path(s["path"]).name: s["reason"] for s in ray_run.skipped}
    assert reasons["not-an-image.jpg"] == "not an image" and reasons["empty.png"] == "empty file"
    assert reasons["truncated.jpg"].startswith(("truncated image", "corrupt image"))
    assert ray_run.added == 31 and ray_run.encoded == 30  # the copy shares its original's vector

    # A second Ray run finds nothing to do; an edit and a new file are picked up like locally.
    assert _run(tmp_path / "ray", [mixed_dir], _ray_source()).encoded == 0
    make_image(mixed_dir / "sub1" / "img01.png", seed=101, size=(96, 64))
    make_image(mixed_dir / "new.jpg", seed=102, size=(96, 64))
    again = _run(tmp_path / "ray", [mixed_dir], _ray_source())
    _run(tmp_path / "local", [mixed_dir])
    assert (again.added, again.updated, again.encoded) == (1, 1, 2)
    assert _catalog(tmp_path / "ray") == _catalog(tmp_path / "local")


def test_an_fsspec_url_is_walked_and_read_like_the_folder(ray_address, tmp_path, mixed_dir):
    assert list(walk_url(mixed_dir.as_uri())) == list(walk([mixed_dir]))
    _run(tmp_path / "local", [mixed_dir])
    _run(tmp_path / "url", [mixed_dir.as_uri()], _ray_source())
    assert _catalog(tmp_path / "url") == _catalog(tmp_path / "local")


def test_a_decode_worker_that_dies_is_retried(ray_address, tmp_path, mixed_dir):
    marker = Path(os.environ[CRASH_ONCE_ENV])
    marker.touch()
    _run(tmp_path / "ray", [mixed_dir], _ray_source())
    assert not marker.exists()  # a decode task's worker really died
    _run(tmp_path / "local", [mixed_dir])
    assert _catalog(tmp_path / "ray") == _catalog(tmp_path / "local")


def _driver_env(env) -> dict[str, str]:
    """`env` with tests/ on PYTHONPATH: a driver script run in its own process imports conftest."""
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))}


_DRIVER = """
import time
import conftest, ray
from conftest import ColorAligner
from retrieval.ingest import pipeline as indexer
from retrieval.cluster import RaySettings, source
from retrieval.storage.store import IndexStore

class SlowColorAligner(ColorAligner):
    # Defined in __main__, so Ray ships it to the actors by value.
    def encode_images(self, pixels):
        time.sleep(0.3)
        return super().encode_images(pixels)

if __name__ == "__main__":
    ray.cloudpickle.register_pickle_by_value(conftest)
    ray.init(address={address!r}, logging_level="WARNING", log_to_driver=False)
    settings = indexer.IndexSettings(batch_size=4)
    indexer.run(IndexStore.open({index!r}, create=True), ColorAligner(), [{folder!r}], settings=settings,
                source=source(RaySettings(aligner_factory=SlowColorAligner, chunk=2)))
"""


@pytest.mark.slow
def test_a_sigkilled_driver_resumes_to_the_same_catalog(ray_address, tmp_path):
    folder = tmp_path / "many"
    for i in range(48):
        make_image(folder / f"{i:03d}.jpg", seed=i, size=(160, 120))
    killed = tmp_path / "killed"
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER.format(address=ray_address, index=str(killed), folder=str(folder)))
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True, env=_driver_env(os.environ))
    deadline, stored = time.time() + 120, 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        try:
            with sqlite3.connect(killed / "catalog.db", timeout=1) as db:
                stored = db.execute("SELECT count(*) FROM vectors").fetchone()[0]
        except sqlite3.OperationalError:
            continue
        if stored >= 8:
            break
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = _catalog(killed)
    assert kept["images"] == [] and 8 <= len(kept["vectors"]) < 48  # nothing published, encoded work kept
    resumed = _run(killed, [folder], _ray_source())
    assert resumed.added == 48 and resumed.encoded == 48 - len(kept["vectors"])
    _run(tmp_path / "clean", [folder])
    assert _catalog(killed) == _catalog(tmp_path / "clean")


@pytest.mark.slow
def test_cli_with_the_default_aligner_matches_the_local_path(ray_address, tmp_path, photo_dir):
    """The real command joins the cluster; real photos and a real video, the real packaged aligner."""
    from click.testing import CliRunner
    from video_kit import make_video

    from retrieval.api import build_index
    from retrieval.cli import main

    make_image(photo_dir / "small.jpg", seed=7, size=(40, 30))
    (photo_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    make_video(photo_dir / "scenes.mp4", ["astronaut.png", "coffee.png", "rocket.jpg"], scene_seconds=2.0,
               size=(160, 120), codec="h264")
    out = subprocess.run(
        [sys.executable, "-m", "retrieval", "index", str(photo_dir), "--index", str(tmp_path / "ray"),
         "--ray", ray_address, "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    local = build_index([photo_dir], index=str(tmp_path / "local"))
    assert summary["added"] == local.added == 8 and [s["path"] for s in summary["skipped"]] == [str(photo_dir / "broken.png")]
    assert summary["videos"] == local.videos == 1 and summary["video_frames"] == local.video_frames >= 3
    ray_cat, local_cat = _catalog(tmp_path / "ray"), _catalog(tmp_path / "local")
    assert [r[:5] for r in ray_cat["images"]] == [r[:5] for r in local_cat["images"]]  # ids, paths, sizes, hashes
    assert ray_cat["skipped"] == local_cat["skipped"] and ray_cat["meta"] == local_cat["meta"]
    for digest, blob in local_cat["vectors"].items():
        a, b = np.frombuffer(blob, "<f4"), np.frombuffer(ray_cat["vectors"][digest], "<f4")
        assert float(a @ b) >= 0.9999  # batches differ in size, so float sums may differ in the last bits
    # A video's frames are encoded in the same batches both ways (ingest.source.encode_frames).
    _same_frames(_frames(tmp_path / "ray"), _frames(tmp_path / "local"))

    def moments(index: Path) -> list[tuple]:
        out = CliRunner().invoke(main, ["search", "a cup of coffee", "--moments", "--index", str(index), "--json"],
                                 catch_exceptions=False)
        assert out.exit_code == 0, out.output
        return [(h["id"], h["path"], h.get("time"), round(h["score"], 4)) for h in json.loads(out.output)["results"]]

    found = moments(tmp_path / "ray")
    assert found == moments(tmp_path / "local")
    video = [t for _, path, t, _ in found if path.endswith("scenes.mp4")]
    assert len(video) == local.video_frames and 2.0 <= video[0] < 4.0  # its best moment: the coffee scene


def test_without_ray_installed_the_cli_says_how_to_install_it(tmp_path, image_dir):
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from retrieval.cli import main\n"
        f"main(['index', {str(image_dir)!r}, '--index', {str(tmp_path / 'idx')!r}, '--ray'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert INSTALL_HINT in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("address", ["/some/folder", "photos"])
def test_a_folder_taken_for_the_address_is_a_usage_error(tmp_path, image_dir, address):
    out = subprocess.run(
        [sys.executable, "-m", "retrieval", "index", "--ray", address, str(image_dir), "--index", str(tmp_path / "i")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2 and "FOLDER before a bare --ray" in out.stderr


def test_a_url_without_ray_is_a_usage_error(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "retrieval", "index", "s3://bucket/photos", "--index", str(tmp_path / "i")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2 and "add --ray" in out.stderr


def test_only_the_cluster_package_imports_ray():
    root = TESTS.parent / "retrieval"
    offenders = [
        str(p.relative_to(root)) for p in root.rglob("*.py")
        if "cluster" not in p.parts and any(
            line.strip().startswith(("import ray", "from ray")) for line in p.read_text().splitlines()
        )
    ]
    assert offenders == []


# -- on-disk shards as Ray tasks ---------------------------------------------------------------
def test_on_disk_shards_built_as_ray_tasks_match_the_one_process_build(ray_address, tmp_path, caplog):
    import faiss
    from test_ondisk import DIM, clustered, fill

    from retrieval import ann
    from retrieval.ann import ondisk
    from retrieval.cluster.ray_shards import add_shards

    store = IndexStore.open(tmp_path / "idx", create=True)
    fill(store, clustered(3000, seed=1))
    built = {}
    caplog.set_level(logging.INFO, logger="retrieval.cluster.ray_shards")
    for gen, adder in ((1, None), (2, add_shards)):
        path = store.faiss_path("images", gen)
        chunks = functools.partial(store.catalog.image_vectors, 500)
        _, info = ondisk.build(chunks, 3000, DIM, path, shard_rows=1000, add_shards=adder)
        built[gen] = (ann.read(path), info)
    assert sum("built on Ray" in r.getMessage() for r in caplog.records) == 3  # 3,000 rows in runs of 1,000
    assert built[1][1].nprobe == built[2][1].nprobe
    queries = clustered(100, seed=2)
    results = []
    for index, _ in built.values():
        faiss.extract_index_ivf(index).nprobe = 16
        results.append(index.search(queries, 10))
    assert np.array_equal(results[0][1], results[1][1]) and np.array_equal(results[0][0], results[1][0])
    # Same shards in the same order: FAISS's merge writes the same lists file.
    lists = [ondisk.lists_path(store.faiss_path("images", g)).read_bytes() for g in (1, 2)]
    assert lists[0] == lists[1]
    store.close()


def test_index_on_disk_with_ray_adds_the_shards_on_ray(ray_address, tmp_path, mixed_dir, monkeypatch):
    from retrieval.ann import ondisk
    from retrieval.search.query import search_vectors

    settings = indexer.IndexSettings(on_disk=True)
    _run(tmp_path / "local", [mixed_dir], settings=settings)

    def not_here(*args):
        raise AssertionError("the shards were built in the driver's process")

    monkeypatch.setattr(ondisk, "add_shards_here", not_here)
    # The test's Ray is one node, where shards stay in the driver's process unless asked.
    _run(tmp_path / "ray", [mixed_dir], source(RaySettings(aligner_factory=ColorAligner, shards_on_ray=True)),
         settings=settings)
    assert _catalog(tmp_path / "ray") == _catalog(tmp_path / "local")
    stores = [IndexStore.open(str(tmp_path / way)) for way in ("local", "ray")]
    try:
        assert all((st.folder / "images-1.ivfdata").exists() for st in stores)
        queries = np.stack(list(stores[0].catalog.vectors_by_hash(
            [row.hash for row in stores[0].catalog.files().values()]).values()))
        local, on_ray = (search_vectors(st, queries, k=5) for st in stores)
        assert [[(h.id, h.path) for h in hits] for hits in local] == [[(h.id, h.path) for h in hits] for hits in on_ray]
    finally:
        for st in stores:
            st.close()


def _slow_loading_aligner(seconds: float):
    """ColorAligner whose model takes `seconds` to load (defined here: Ray ships it by value)."""

    class SlowLoading(ColorAligner):
        def __init__(self):
            time.sleep(seconds)
            super().__init__()

    return SlowLoading


def test_files_are_decoded_ahead_while_the_encoder_loads_its_model(ray_address, tmp_path, caplog):
    # Without decoding ahead the driver stops reading once two groups wait for the encoder:
    # with batches of 4 and chunks of 2, about 25 of these 60 files before the model is up.
    folder = tmp_path / "pics"
    for i in range(60):
        make_image(folder / f"{i:02d}.png", seed=i, size=(32, 24))
    caplog.set_level(logging.INFO, logger="retrieval.cluster.ray_index")
    settings = indexer.IndexSettings(batch_size=4)
    ray_source = source(RaySettings(aligner_factory=_slow_loading_aligner(8.0), chunk=2))
    summary = _run(tmp_path / "ray", [folder], ray_source, settings=settings)
    assert summary.added == 60 and summary.encoded == 60
    ready = [r for r in caplog.records if r.getMessage().startswith("encoders ready")]
    assert len(ready) == 1 and ready[0].args[1] == 60, [r.getMessage() for r in ready]
    _run(tmp_path / "local", [folder], settings=settings)
    assert _catalog(tmp_path / "ray") == _catalog(tmp_path / "local")


# -- the per-file decode limit inside Ray tasks --------------------------------------------------
def _slow_on_magic_size(block_alarm: bool):
    """A transform that is pathologically slow on 77-pixel-wide images (as tests/test_faults.py's).

    `block_alarm` also blocks SIGALRM, as a decoder stuck inside one C call would be deaf to
    it: then only the driver's deadline, which cancels the task and its worker, saves the run.
    """
    from retrieval.media.transform import ImageTransform

    class SlowOnMagicSize(ImageTransform):
        def __call__(self, image):
            if image.size[0] == 77:
                import signal

                if block_alarm:
                    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
                time.sleep(600)
            return super().__call__(image)

    return SlowOnMagicSize(size=16, mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.mark.parametrize("block_alarm", [False, True], ids=["slow-decode", "stuck-decoder"])
def test_a_pathological_image_in_a_ray_decode_task_is_skipped_within_its_limit(ray_address, tmp_path, monkeypatch,
                                                                                block_alarm):
    from retrieval.cluster import ray_index

    # Deadlines count from submission, so they include starting a new worker for the task
    # after the stuck one was killed: seconds on this loaded machine.
    monkeypatch.setattr(ray_index, "DECODE_SLACK_S", 10.0)
    folder = tmp_path / "pics"
    for i in range(20):
        make_image(folder / f"{i:02d}.png", seed=i)
    make_image(folder / "10-slow.png", seed=99, size=(77, 40))
    aligner = ColorAligner()
    aligner.transform = _slow_on_magic_size(block_alarm)  # defined here: Ray ships it by value
    started = time.monotonic()
    summary = _run(tmp_path / "idx", [folder], _ray_source(), aligner=aligner,
                   settings=indexer.IndexSettings(decode_seconds=0.5))
    took = time.monotonic() - started
    assert summary.added == 20 and [Path(s["path"]).name for s in summary.skipped] == ["10-slow.png"]
    reason = summary.skipped[0]["reason"]
    assert ("worker was replaced" in reason) if block_alarm else reason.startswith("decoding took longer than 0.5s")
    assert took < 120, took  # the 600 s decode was cut short


# -- joining a running cluster by address --------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_address_where_nothing_answers_ends_in_one_line(tmp_path, image_dir, scheme):
    out = subprocess.run(
        [sys.executable, "-m", "retrieval", "index", str(image_dir), "--index", str(tmp_path / "i"),
         "--ray", f"{scheme}127.0.0.1:{_free_port()}"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "nothing answers at 127.0.0.1:" in out.stderr


_JOIN_DRIVER = """
import conftest, ray
from conftest import ColorAligner
from retrieval.ingest import pipeline as indexer
from retrieval.cluster import RaySettings, source
from retrieval.storage.store import IndexStore

ray.cloudpickle.register_pickle_by_value(conftest)
settings = indexer.IndexSettings(on_disk=True)
if __name__ == "__main__":  # spawned decoding processes (faces, on this machine) import this script again
    ray_source = source(RaySettings(address={address!r}, aligner_factory=ColorAligner, shards_on_ray=True))
    try:
        indexer.run(IndexStore.open({index!r}, create=True), ColorAligner(), [{folder!r}], settings=settings,
                    source=ray_source)
        print("nodes", len(ray.nodes()) if ray.is_initialized() else "closed")
    finally:
        ray_source.close()
"""


@pytest.mark.slow
def test_a_driver_joins_a_running_head_with_auto_and_with_ray_client(tmp_path, mixed_dir):
    """`ray start --head` in its own temp folder; drivers join it as `auto` (RAY_ADDRESS) and as ray://."""
    ray_bin = Path(sys.executable).parent / "ray"
    temp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # short: Ray's socket paths have a length limit
    gcs, client = _free_port(), _free_port()
    # Ray 2.60's head turns token authentication on by default; drivers send the token when told to.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": ""}
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--num-cpus", "2", "--port", str(gcs),
         "--ray-client-server-port", str(client), "--temp-dir", str(temp), "--include-dashboard", "false",
         "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", client), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, "ray start --head exited"
                time.sleep(1)
        _run(tmp_path / "local", [mixed_dir], settings=indexer.IndexSettings(on_disk=True))
        for way, address, extra in (("auto", "auto", {"RAY_ADDRESS": f"127.0.0.1:{gcs}"}),
                                    ("client", f"ray://127.0.0.1:{client}", {})):
            script = tmp_path / f"{way}.py"
            script.write_text(_JOIN_DRIVER.format(address=address, index=str(tmp_path / way), folder=str(mixed_dir)))
            out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                                 env={**_driver_env(env), **extra})
            assert out.returncode == 0, out.stderr[-3000:]
            assert _catalog(tmp_path / way) == _catalog(tmp_path / "local"), way
            assert (tmp_path / way / "images-1.ivfdata").exists()
    finally:
        _stop_head(head, temp)


def _stop_head(head: subprocess.Popen, temp: Path) -> None:
    """SIGTERM to `ray start --block` stops what it started; anything of that head left after a minute is killed by id."""
    head.terminate()
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(temp) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:
            continue
    shutil.rmtree(temp, ignore_errors=True)


# -- a cluster that stops moving, or prints (issue 24, items 25 and 26) ---------------------------
@pytest.mark.parametrize(("requested", "gpus", "nodes", "planned"), [
    (None, 0, [1.0], (1, 0.25)),            # `ray start --head --num-cpus=1`: the encoder leaves 0.75 to read
    (2, 0, [1.0], (1, 0.25)),               # a second encoder would hold the last CPU
    (None, 0, [0.0, 1.0, 1.0], (1, 0.25)),  # a 0-CPU head, two 1-CPU workers: room on either survivor
    (2, 0, [2.0], (1, 1.0)),                # two whole-CPU encoders would hold every CPU
    (4, 0, [4.0, 4.0], (4, 1.0)),
    (None, 2, [8.0, 8.0], (2, 1.0)),        # one per GPU
])
def test_encoders_never_hold_the_cpus_that_reads_need(requested, gpus, nodes, planned):
    from retrieval.cluster.ray_index import ROOM_CPUS, plan_encoders

    count, share = plan_encoders(requested, gpus, nodes)
    assert (count, share) == planned
    assert sum(nodes) - count * share >= ROOM_CPUS and min(c for c in nodes if c) - share >= ROOM_CPUS


def _hanging_aligner():
    """ColorAligner whose encoder never returns, as one waiting for a CPU that never frees (shipped by value)."""

    class Hangs(ColorAligner):
        def encode_images(self, pixels):
            time.sleep(600)
            return super().encode_images(pixels)

    return Hangs


def test_a_run_that_stops_moving_ends_in_one_line_and_a_rerun_completes(ray_address, tmp_path, mixed_dir):
    started = time.monotonic()
    with pytest.raises(RetrievalError) as err:
        _run(tmp_path / "ray", [mixed_dir], source(RaySettings(aligner_factory=_hanging_aligner(), stall_seconds=4)))
    took = time.monotonic() - started
    message = str(err.value)
    assert "\n" not in message and "made no progress for 4s" in message, message
    assert "vectors this run stored are kept: run the same command again" in message
    assert took < 60, took
    _run(tmp_path / "ray", [mixed_dir], _ray_source())
    _run(tmp_path / "local", [mixed_dir])
    assert _catalog(tmp_path / "ray") == _catalog(tmp_path / "local")


_JSON_DRIVER = """
import dataclasses, time
import conftest, ray
import retrieval.aligners, retrieval.cluster
from conftest import ColorAligner
from retrieval.cli import main
from retrieval.cluster import ray_index

class SlowColorAligner(ColorAligner):
    # Defined in __main__, so Ray ships it to the actors by value.
    def encode_images(self, pixels):
        time.sleep(0.1)
        return super().encode_images(pixels)

def close_later(self, close=ray_index.RaySource.close):
    time.sleep(3)  # Ray's error listener polls from a thread of its own: time to print what it got
    close(self)

ray.cloudpickle.register_pickle_by_value(conftest)
retrieval.aligners.load_aligner = lambda spec="default", device=None: ColorAligner()
make_source = retrieval.cluster.source
retrieval.cluster.source = lambda rs: make_source(dataclasses.replace(rs, aligner_factory=SlowColorAligner, chunk=2))
ray_index.RaySource.close = close_later
# Guarded: the faces of a cluster's run are looked for on this machine, by spawned decoding
# processes, which import this script again as their __main__.
if __name__ == "__main__":
    main(["index", {folder!r}, "--index", {index!r}, "--ray", {address!r}, "--json", "--batch-size", "4"])
"""


def test_ray_json_stays_valid_json_while_ray_prints_cluster_events(ray_address, tmp_path, mixed_dir):
    # A decode worker dies (the marker file): Ray's driver prints "(raylet) A worker died ..." from
    # its error listener, to sys.stdout, as it prints "Raylet is terminated" when a node dies.
    Path(os.environ[CRASH_ONCE_ENV]).touch()
    script = tmp_path / "cli.py"
    script.write_text(_JSON_DRIVER.format(folder=str(mixed_dir), index=str(tmp_path / "idx"), address=ray_address))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         env=_driver_env(os.environ))
    assert out.returncode == 0, out.stderr[-3000:]
    assert not Path(os.environ[CRASH_ONCE_ENV]).exists()  # a worker did die
    assert "(raylet)" in out.stderr  # Ray printed, to stderr
    assert json.loads(out.stdout)["added"] == 31


def _faces(index_dir) -> tuple[dict, list]:
    """Each content's faces (box, score, descriptor), and the people as groups of contents."""
    with sqlite3.connect(Path(index_dir) / "catalog.db") as db:
        rows = db.execute("SELECT hash, x, y, w, h, score, embedding, person_id FROM faces ORDER BY hash, x, y").fetchall()
        scans = dict(db.execute("SELECT hash, detector FROM face_scans"))
    found: dict = {}
    people: dict = {}
    for digest, x, y, w, h, score, blob, person in rows:
        found.setdefault(digest, []).append(((x, y, w, h), score, np.frombuffer(blob, np.float32)))
        people.setdefault(person, set()).add(digest)
    return {"faces": found, "scans": scans}, sorted(sorted(group) for group in people.values())


def _same_faces(got, want) -> None:
    (got_found, got_people), (want_found, want_people) = got, want
    assert got_found["scans"] == want_found["scans"] and got_people == want_people
    assert got_found["faces"].keys() == want_found["faces"].keys()
    for digest, faces in want_found["faces"].items():
        assert [f[0] for f in got_found["faces"][digest]] == [f[0] for f in faces]  # the same boxes
        for (_, score, descriptor), (_, want_score, want_descriptor) in zip(got_found["faces"][digest], faces):
            assert abs(score - want_score) < 1e-4 and np.abs(descriptor - want_descriptor).max() < 1e-4


@pytest.mark.slow
def test_ray_workers_find_faces_and_the_driver_reads_no_file_again(ray_address, tmp_path, monkeypatch):
    from test_people import face_photo

    from retrieval.ingest import faces as ingest_faces
    from retrieval.ingest.settings import IndexSettings

    folder = tmp_path / "portraits"
    folder.mkdir()
    for name in ("obama.jpg", "obama3.jpg", "biden.jpg"):
        shutil.copyfile(face_photo(name), folder / name)
    make_image(folder / "nobody.png", seed=3, size=(96, 64))
    touched = [folder / "obama.jpg", folder / "nobody.png"]

    def faces_turned_on(index, ray_source=None):
        """An index made with faces off, then run with faces on after two files were touched: the
        touched ones (known contents) are decoded again for their faces, the others scanned."""
        _run(index, [folder], ray_source, settings=IndexSettings(faces=False))
        for path in touched:
            os.utime(path, (time.time() + 10, path.stat().st_mtime + 10))
        return _run(index, [folder], ray_source, settings=IndexSettings(faces=True))

    _run(tmp_path / "local", [folder])
    local = _faces(tmp_path / "local")
    assert len(local[0]["faces"]) == 3 and len(local[0]["scans"]) == 4 and len(local[1]) == 2
    faces_turned_on(tmp_path / "local-on")

    def no_reading(*args, **kwargs):
        raise AssertionError("the driver read files again to find their faces")

    # The driver's face scan reads files through load_stream; the workers are other processes.
    monkeypatch.setattr(ingest_faces, "load_stream", no_reading)
    summary = _run(tmp_path / "ray", [folder], _ray_source())
    assert summary.faces == 3
    _same_faces(_faces(tmp_path / "ray"), local)

    again = faces_turned_on(tmp_path / "ray-on", _ray_source())
    assert (again.unchanged, again.encoded, again.faces) == (4, 0, 3), again.as_dict()  # none encoded again
    _same_faces(_faces(tmp_path / "ray-on"), _faces(tmp_path / "local-on"))


# -- videos on Ray --------------------------------------------------------------------------------
def _frames(index_dir) -> dict:
    """Every sampled frame: (hash, n) -> (time, vector), and the videos' file ids."""
    with sqlite3.connect(Path(index_dir) / "catalog.db") as db:
        frames = {(h, n): (t, np.frombuffer(v, "<f4")) for h, n, t, v in db.execute("SELECT hash, n, time, vector FROM frames")}
        videos = dict(db.execute("SELECT path, id FROM images WHERE path LIKE '%.mp4'"))
    return {"frames": frames, "videos": videos}


def _same_frames(got: dict, want: dict, tolerance: float = 1e-5) -> None:
    assert got["videos"] == want["videos"] and got["frames"].keys() == want["frames"].keys()
    for key, (t, vector) in want["frames"].items():
        assert got["frames"][key][0] == t
        assert 1.0 - float(vector @ got["frames"][key][1]) <= tolerance, key


@pytest.fixture
def video_dir(tmp_path) -> Path:
    """Two photos, a real H.264 video of three scenes (a keyframe a second, as a phone writes),
    a damaged copy of it and an empty one."""
    from video_kit import make_video

    folder = tmp_path / "clips"
    make_image(folder / "a.jpg", seed=1, size=(96, 64))
    make_image(folder / "b.png", seed=2, size=(96, 64))
    clip = make_video(folder / "scenes.mp4", ["astronaut.png", "coffee.png", "rocket.jpg"], scene_seconds=2.0,
                      size=(160, 120), codec="h264")
    (folder / "damaged.mp4").write_bytes(clip.read_bytes()[: clip.stat().st_size // 3])
    (folder / "empty.mov").write_bytes(b"")
    return folder


class _Notes:
    """A Progress that keeps what the run shows beside its count."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def start(self, total, label) -> None: ...
    def advance(self, n=1) -> None: ...
    def close(self) -> None: ...

    def note(self, text: str) -> None:
        self.notes.append(text)


def test_ray_samples_videos_and_stores_their_frames_as_a_local_run_does(ray_address, tmp_path, video_dir):
    from retrieval.search.query import search_vectors

    local = _run(tmp_path / "local", [video_dir])
    shown = _Notes()
    store = IndexStore.open(str(tmp_path / "ray"), create=True)
    try:
        on_ray = indexer.run(store, ColorAligner(), [video_dir], source=_ray_source(), progress=shown)
    finally:
        store.close()
    assert (on_ray.videos, on_ray.video_frames) == (local.videos, local.video_frames) and local.videos == 1
    assert local.video_frames >= 3 and shown.notes[-1] == f"videos 1 ({local.video_frames} frames)"
    reasons = {Path(s["path"]).name: s["reason"] for s in on_ray.skipped}
    assert reasons == {Path(s["path"]).name: s["reason"] for s in local.skipped}
    assert "FFmpeg cannot read" in reasons["damaged.mp4"] and reasons["empty.mov"] == "empty file (0 bytes)"
    assert _catalog(tmp_path / "ray") == _catalog(tmp_path / "local")  # ids, rows, first frames' vectors
    _same_frames(_frames(tmp_path / "ray"), _frames(tmp_path / "local"))

    # The same moments come back, under the same FAISS ids (a frame n of file i is i + n * 2^40).
    stores = [IndexStore.open(str(tmp_path / way)) for way in ("local", "ray")]
    try:
        video_id = _frames(tmp_path / "local")["videos"][str(video_dir / "scenes.mp4")]
        second = video_id + 2**40
        query = stores[0].catalog.image_vectors_by_id([second])[second][None]
        found = [[(h.id, h.time, round(h.score, 5)) for h in search_vectors(st, query, 10, moments=True)[0]]
                 for st in stores]
        assert found[0] == found[1] and len(found[0]) == 2 + local.video_frames
    finally:
        for st in stores:
            st.close()


def test_a_video_read_as_bytes_from_a_url_is_sampled_as_the_local_file_is(tmp_path, video_dir):
    """What a decode task does with a video behind a URL (bytes from fsspec), without a server."""
    from retrieval.cluster import ray_index
    from retrieval.media.decode import Loaded, load_bytes, load_video
    from retrieval.media.video import VideoSettings

    transform = ColorAligner().transform
    settings = VideoSettings(max_frames=2)
    clip = video_dir / "scenes.mp4"
    url = "https://example.org/clips/scenes.mp4"
    read = load_bytes(url, clip.read_bytes(), None)  # the read task's row: hash and recorded metadata
    local = load_video(str(clip), transform, settings=settings)
    assert read.hash == local.hash and read.error is None and read.times is None
    got = ray_index._decode_one(read, clip.read_bytes(), transform, True, 30.0, video=settings)
    assert got.path == url and got.times == local.times and len(got.times or []) == 2  # the run's settings apply
    assert got.pixels is not None and local.pixels is not None and np.array_equal(got.pixels, local.pixels)
    assert got.pixels.dtype == np.float16 and got.notes == local.notes
    damaged = (video_dir / "damaged.mp4").read_bytes()
    bad = ray_index._decode_one(Loaded("https://example.org/damaged.mp4", hash="x"), damaged, transform, True, 30.0)
    assert bad.error == load_video(str(video_dir / "damaged.mp4"), transform).error
    assert not list(Path(tempfile.gettempdir()).glob("retrieval-video-*"))  # the temporary copies are gone


def _hanging_shard_task():
    """A shard task that never returns, as one waiting for a node that is gone (shipped by value)."""

    @ray.remote(num_cpus=1)
    def hangs(trained, chunk_refs):
        time.sleep(600)

    return hangs


def test_a_shard_build_that_stops_moving_ends_in_one_line_and_a_rerun_completes(ray_address, tmp_path, mixed_dir,
                                                                                  monkeypatch):
    from retrieval.cluster import ray_shards

    settings = indexer.IndexSettings(on_disk=True)
    monkeypatch.setattr(ray_shards, "build_shard_task", _hanging_shard_task())
    hanging = source(RaySettings(aligner_factory=ColorAligner, shards_on_ray=True, stall_seconds=3))
    started = time.monotonic()
    with pytest.raises(RetrievalError) as err:
        _run(tmp_path / "ray", [mixed_dir], hanging, settings=settings)
    took = time.monotonic() - started
    message = str(err.value)
    assert "\n" not in message and message.startswith("the Ray cluster built no index shard for 3s"), message
    assert "the catalog's committed rows are kept" in message and "run the same command again" in message
    assert took < 90, took
    monkeypatch.undo()
    again = _run(tmp_path / "ray", [mixed_dir], source(RaySettings(aligner_factory=ColorAligner, shards_on_ray=True)),
                 settings=settings)
    assert again.encoded == 0  # the vectors of the run that stalled were kept
    _run(tmp_path / "local", [mixed_dir], settings=settings)
    assert _catalog(tmp_path / "ray") == _catalog(tmp_path / "local")


def _slow_on_video_frames(seconds: float):
    """A transform that takes `seconds` on each 160 x 120 picture (the test video's frames; shipped by value)."""
    from retrieval.media.transform import ImageTransform

    class SlowOnFrames(ImageTransform):
        def __call__(self, image):
            if image.size == (160, 120):
                time.sleep(seconds)
            return super().__call__(image)

    return SlowOnFrames(size=16, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_a_video_sampled_for_longer_than_stall_seconds_is_not_a_stall(ray_address, tmp_path, video_dir):
    aligner = ColorAligner()
    aligner.transform = _slow_on_video_frames(1.0)  # 3 or more frames: past the 2 s without a result
    summary = _run(tmp_path / "ray", [video_dir], source(RaySettings(aligner_factory=ColorAligner, stall_seconds=2)),
                   aligner=aligner)
    assert summary.videos == 1 and summary.video_frames >= 3
