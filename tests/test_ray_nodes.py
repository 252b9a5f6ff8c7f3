"""The Ray path on a cluster that loses a machine mid-run (issue 24, items 25 and 27).

A ``ray.cluster_utils.Cluster`` in this process: a head with 0 CPUs, where the driver runs,
and 1-CPU worker nodes, added and removed as each test needs. It has its own module-scoped
fixture; tests/test_ray.py's instance is module-scoped too, so the two are never joined at
once. Ray's temp folder (RAY_TMPDIR) is private to this module: the cluster writes its address
to ``ray_current_cluster`` there, not where other Ray users of this machine would find it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import conftest
import pytest
import ray
from conftest import ColorAligner, make_image
from ray.cluster_utils import Cluster
from test_ray import _catalog, _run

from retrieval.cluster import RaySettings, source
from retrieval.errors import RetrievalError
from retrieval.ingest import pipeline as indexer
from retrieval.storage.store import IndexStore

pytestmark = pytest.mark.slow

#: How long a run may go without progress before it ends (RaySettings.stall_seconds): long
#: enough for a lost node to be noticed and an encoder restarted on this shared machine.
STALL_S = 45.0


@pytest.fixture(scope="module")
def cluster():
    temp = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))  # short: Ray's socket paths have a length limit
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(temp)
    ray.cloudpickle.register_pickle_by_value(conftest)
    if ray.is_initialized():
        ray.shutdown()
    # Dead nodes are noticed within about 3 s instead of Ray's default 15 s or more.
    config = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": config})
    ray.init(address=nodes.address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()
        if before is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = before
        shutil.rmtree(temp, ignore_errors=True)


def _workers(nodes: Cluster, count: int) -> list:
    """Exactly `count` 1-CPU worker nodes, alive and counted by the cluster."""
    while len(nodes.worker_nodes) > count:
        nodes.remove_node(next(iter(nodes.worker_nodes)))
    while len(nodes.worker_nodes) < count:
        nodes.add_node(num_cpus=1)
    deadline = time.monotonic() + 60
    while ray.cluster_resources().get("CPU", 0) != count:
        assert time.monotonic() < deadline, ray.cluster_resources()
        time.sleep(0.5)
    return list(nodes.worker_nodes)


def _noting_aligner(notes: Path):
    """ColorAligner that notes the node each encoder loads on, and encodes slowly (shipped by value)."""

    class Noting(ColorAligner):
        def __init__(self):
            super().__init__()
            with open(notes, "a") as out:
                out.write(ray.get_runtime_context().get_node_id() + "\n")

        def encode_images(self, pixels):
            time.sleep(0.4)
            return super().encode_images(pixels)

    return Noting


class _RemoveNodeAt:
    """A Progress that removes a node, without a graceful shutdown, once `after` files are committed."""

    def __init__(self, nodes: Cluster, after: int, pick):
        self.nodes, self.after, self.pick = nodes, after, pick
        self.done, self.label = 0, ""
        self.removal: threading.Thread | None = None
        self.removed = None
        self.removed_at = float("inf")

    def start(self, total, label):
        self.label = label

    def advance(self, n=1):
        if self.label != "indexing":  # the walk counts files too
            return
        self.done += n
        if self.removal is None and self.done >= self.after:
            self.removed = self.pick()
            self.removal = threading.Thread(target=self._remove)
            self.removal.start()

    def _remove(self):
        self.nodes.remove_node(self.removed, allow_graceful=False)
        self.removed_at = time.monotonic()

    def close(self):
        pass


def _folder(tmp_path: Path, n: int = 48) -> Path:
    folder = tmp_path / "pics"
    for i in range(n):
        make_image(folder / f"{i:02d}.png", seed=i, size=(48, 32))
    make_image(folder / "copy.png", seed=0, size=(48, 32))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return folder


def _run_or_stop(index_dir: Path, folder: Path, aligner_factory, progress=None) -> str | None:
    """Index on the cluster: None when the run completed, else the one line it ended with, within a bound."""
    settings = RaySettings(aligner_factory=aligner_factory, chunk=2, stall_seconds=STALL_S)
    started = time.monotonic()
    store = IndexStore.open(str(index_dir), create=True)
    try:
        indexer.run(store, ColorAligner(), [folder], source=source(settings),
                    settings=indexer.IndexSettings(batch_size=4), progress=progress)
        message = None
    except RetrievalError as exc:
        message = str(exc)
        assert "\n" not in message and "run the same command again" in message, message
    finally:
        store.close()
    assert time.monotonic() - started < STALL_S + 120
    return message


def _lose_a_node(cluster: Cluster, tmp_path: Path, which: str) -> None:
    workers = _workers(cluster, 2)
    folder = _folder(tmp_path)
    notes = tmp_path / "encoder-nodes"

    def pick():
        encoder_node = notes.read_text().split()[-1]
        hosts = [w for w in workers if (w.node_id == encoder_node) == (which == "encoder")]
        return hosts[0]

    progress = _RemoveNodeAt(cluster, after=8, pick=pick)
    stopped = _run_or_stop(tmp_path / "ray", folder, _noting_aligner(notes), progress)
    ended = time.monotonic()
    assert progress.removal is not None, "the run ended before a node was removed"
    progress.removal.join()
    assert progress.removed_at < ended, "the node was gone only after the run"
    if stopped is not None:  # ended in one line: with the capacity back, a re-run completes
        _workers(cluster, 2)
        assert _run_or_stop(tmp_path / "ray", folder, _noting_aligner(notes)) is None
    _run(tmp_path / "local", [folder], settings=indexer.IndexSettings(batch_size=4))
    assert _catalog(tmp_path / "ray") == _catalog(tmp_path / "local")
    loaded_on = notes.read_text().split()
    if which == "encoder":
        assert len(set(loaded_on)) >= 2  # the encoder was restarted on the surviving node
    logging.getLogger(__name__).info("%s node removed: %s", which, stopped or "the run completed")
    assert stopped is None, stopped  # re-placed on the survivor, as planned (plan_encoders)


def test_a_run_survives_losing_the_node_of_its_encoder(cluster, tmp_path):
    _lose_a_node(cluster, tmp_path, "encoder")


def test_a_run_survives_losing_a_node_that_only_reads(cluster, tmp_path):
    _lose_a_node(cluster, tmp_path, "reads")


def test_a_one_cpu_cluster_reads_beside_its_encoder(cluster, tmp_path):
    """Issue 24's `ray start --head --num-cpus=1`: the encoder held the only CPU, and nothing was ever read."""
    _workers(cluster, 1)
    folder = _folder(tmp_path, n=16)
    assert _run_or_stop(tmp_path / "ray", folder, _noting_aligner(tmp_path / "notes")) is None
    _run(tmp_path / "local", [folder], settings=indexer.IndexSettings(batch_size=4))
    assert _catalog(tmp_path / "ray") == _catalog(tmp_path / "local")


def test_no_address_starts_a_private_instance_and_auto_joins_the_cluster(cluster, tmp_path):
    """`--ray` alone must not join the cluster this machine last started (its ray_current_cluster file)."""
    from retrieval.cli.index import _ray_settings

    assert _ray_settings("local", None, ()).address is None  # what a bare --ray passes on
    assert (Path(os.environ["RAY_TMPDIR"]) / "ray" / "ray_current_cluster").exists()
    ray.shutdown()  # the driver leaves the cluster, which keeps running
    try:
        joined = {}
        for address in (None, "auto"):
            ray_source = source(RaySettings(address=address, aligner_factory=ColorAligner))
            ray_source.start(ColorAligner.spec)
            joined[address] = ray.get_runtime_context().gcs_address
            ray_source.close()
            assert not ray.is_initialized()
        assert joined["auto"] == cluster.address
        assert joined[None] != cluster.address
    finally:
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
