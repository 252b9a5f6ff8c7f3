"""The indexing pipeline on Ray: the driver stages and commits, the cluster reads, decodes and encodes.

Who does what::

    driver (this process)       walk -> staging (SQLite temp tables) -> plan -> publish, as locally;
                                the single writer of the catalog: commits vectors as they arrive
    read tasks (CPU)            read and hash a chunk of files (plain paths or fsspec URLs)
    driver                      asks its catalog which of those contents already have a vector
    decode tasks (CPU)          decode and preprocess the new ones (decode.load_bytes, as locally);
                                with faces on, find the faces in the picture they decode; a new
                                video alone in its task, sampled into frames (decode.load_video)
    encoder actors (GPU or CPU) load the aligner once, embed batches, return vectors
    driver                      commits vectors, file rows and faces together

Only hashes, vectors, faces (boxes, scores, 128-d descriptors) and error rows come back to the
driver; file bytes and pixels travel from task to task inside the object store. The driver
never reads a file again for its faces, so a run over URLs that only the workers can read gets
its faces too (docs/people.md). The known-content check stays on the driver
(its catalog is a local SQLite file a remote worker cannot open), which costs one small
round trip per chunk and works the same when the driver joins through ``ray://``.

Why Ray core tasks and actors rather than Ray Data: the driver's known-content check sits
between reading and decoding, the driver commits whatever has arrived in one transaction,
and what is in flight is bounded per encoder; core tasks do all of this directly. Ray Data
also costs more per run: its fixed cost per job is several seconds on a small machine, core
tasks' a fraction of that (docs/scaling.md#e-ray-core-against-ray-data). The bench's part (a)
measures this module against the local path (docs/scaling.md#a-the-ray-path-against-the-local-path).

Failures: tasks are retried by Ray when their worker or node dies (``max_retries``), and
lost intermediate objects are rebuilt from lineage; encoder actors restart (``max_restarts``)
and their calls wait for the restart and are retried, on a surviving node, where their CPU
share leaves room to read (:func:`plan_encoders`). A run in which nothing arrives for
``RaySettings.stall_seconds`` ends in one line that says what is kept: Ray itself would wait
forever for resources no live node offers. A bad file is an error row, never an
exception. A killed driver loses only what was in flight: vectors are committed batch by
batch, keyed by content hash, and the next run skips contents already stored.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import socket
import sys
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import ExitStack, contextmanager, redirect_stdout
from datetime import datetime
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import ray

from retrieval.aligners.base import Aligner
from retrieval.aligners.faces import FaceFinder
from retrieval.ann.ondisk import AddShards
from retrieval.cluster.ray_shards import capacity
from retrieval.cluster.settings import RaySettings
from retrieval.errors import RetrievalError
from retrieval.ingest.faces import finder_for, store_found
from retrieval.ingest.settings import IndexSettings
from retrieval.ingest.source import Source, encode_frames
from retrieval.ingest.stream import batched, say_decoded
from retrieval.media.deadline import DecodeTimeout, time_limit
from retrieval.media.decode import Loaded, load_bytes, load_video
from retrieval.media.files import FileStat, SkipFile, WalkSettings, group, read_regular, walk, walk_extensions
from retrieval.media.video import VideoSettings, is_video
from retrieval.progress import Progress, note
from retrieval.storage.faces import scanned
from retrieval.storage.staging import Staging
from retrieval.storage.store import IndexStore

log = logging.getLogger(__name__)

#: Test hook: a decode task that finds this file (named by the environment variable) deletes
#: it and kills its own worker process, so tests can check that Ray retries the task.
CRASH_ONCE_ENV = "RETRIEVAL_RAY_CRASH_ONCE"
#: Protocols that name this machine's own files: indexed under plain paths, as the local path does.
LOCAL_PROTOCOLS = ("file", "local")
#: Seconds a decode task may run beyond its files' own limits (IndexSettings.decode_seconds
#: each, plus one) before the driver cancels it, killing its worker. More than the local
#: path's 10 s: on a busy cluster a task may wait in Ray's queue before it starts.
DECODE_SLACK_S = 60.0


# -- paths and URLs ----------------------------------------------------------------------
def is_url(path: str) -> bool:
    return "://" in str(path)


def root_name(root: str | Path) -> str:
    """How a root is written in the catalog: a resolved local path, or a normalized fsspec URL."""
    text = str(root)
    if not is_url(text):
        return str(Path(text).expanduser().resolve())
    if "::" in text:
        raise RetrievalError(f"{text}: chained fsspec URLs (with '::') are not supported; give the folder's own URL")
    fs, path = _filesystem(text)
    if _is_local(fs):
        return str(Path(path).resolve())
    return fs.unstrip_protocol(path.rstrip("/"))


def _filesystem(url: str):
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        # fsspec names the package a protocol needs (s3fs, gcsfs, ...).
        raise RetrievalError(f"cannot open {url}: {exc}") from None


def _is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return any(p in LOCAL_PROTOCOLS for p in protocols)


def walk_url(url: str, ignored: Counter[str] | None = None, settings: WalkSettings = WalkSettings()) -> Iterator[FileStat]:
    """:func:`retrieval.media.files.walk` through fsspec: the same files, in the same order, and the same ones `ignored`."""
    fs, top = _filesystem(url)
    name = (lambda p: p) if _is_local(fs) else (lambda p: fs.unstrip_protocol(p))
    if not fs.exists(top):
        raise RetrievalError(f"folder not found: {url}")
    if fs.isfile(top):
        yield _stat(name(top), fs.info(top))
        return
    readable = walk_extensions()
    # One folder listed at a time, depth first in name order (the local walk's order), instead of
    # one fs.walk over the tree: fsspec's walk hands its on_error to the top folder only, and a
    # sub-folder it cannot list comes out as an empty one, whose indexed files staging would then
    # take for deleted. Such a folder is named once and marked, as the local walk does.
    folders = [top]
    while folders:
        folder = folders.pop()
        errors: list[OSError] = []
        # An async filesystem's walk (s3fs, gcsfs) still yields the refused folder, empty.
        listed = next(iter(fs.walk(folder, maxdepth=1, detail=True, on_error=errors.append)), None)
        if errors or listed is None:
            reason = (errors[0].strerror or errors[0]) if errors else "no listing"
            log.warning("folder %s could not be read (%s): the photos indexed under it are kept as they are",
                        name(folder), reason)
            yield FileStat(name(folder), -1, 0.0, unlisted=True)
            continue
        dirpath, dirs, files = listed
        folders += [info["name"].rstrip("/") for d, info in sorted(dirs.items(), reverse=True) if not d.startswith(".")]
        names = []
        for fname in sorted(files):
            if fname.startswith("."):
                continue
            if (suffix := Path(fname).suffix.lower()) not in readable:
                if ignored is not None:
                    ignored[suffix] += 1
                continue
            names.append(fname)
        at = f"{dirpath.rstrip('/')}/"
        for fname, companions, motion in group(names, settings):  # RAW+JPEG pairs and Live Photos, as the local walk
            stat = _stat(name(at + fname), files[fname])
            yield FileStat(stat.path, stat.size, stat.mtime, tuple(name(at + c) for c in companions),
                           name(at + motion) if motion else None)


def _stat(path: str, info: dict) -> FileStat:
    # Object stores name their modification time differently (s3: LastModified, gcs: updated).
    mtime = next((info[k] for k in ("mtime", "LastModified", "updated", "created") if info.get(k)), 0.0)
    if isinstance(mtime, datetime):
        mtime = mtime.timestamp()
    elif isinstance(mtime, str):
        try:
            mtime = datetime.fromisoformat(mtime.replace("Z", "+00:00")).timestamp()
        except ValueError:
            mtime = 0.0
    return FileStat(path, int(info.get("size") or 0), float(mtime))


def read_bytes(path: str) -> bytes:
    """A file's bytes: plain paths as the local path reads them, URLs through fsspec (in the worker that needs them)."""
    if not is_url(path):
        return read_regular(path)  # never blocks on a FIFO; refuses a file that changes while read
    fs, fspath = fsspec.core.url_to_fs(path)
    return fs.cat_file(fspath)


# -- the cluster's stages ----------------------------------------------------------------
# CPU shares: the encoder actor takes 1 CPU (its torch threads use the node's cores), a decode
# task half, a read task a quarter. Decoding beside the encoder on the same cores is what the
# local path found fastest (IndexSettings.workers: one decoding worker per core beside the
# encoder keeps the encoder busiest; docs/indexing.md#indexing-speed); whole-CPU decode tasks
# would let only one run beside a CPU encoder on a 2-CPU node. On nodes too small for that,
# the encoder asks for less (plan_encoders): encoders that hold every CPU leave the reads
# waiting forever, without an error.
READ_CPUS = 0.25
DECODE_CPUS = 0.5
#: What the encoders must leave free, on the smallest node and in the whole cluster: one read
#: and one decode at a time keep the pipeline moving.
ROOM_CPUS = READ_CPUS + DECODE_CPUS
#: The least CPU share an encoder asks for. Not 0: an actor that needs no CPU may be placed on
#: a head node kept free of work (0 CPUs).
MIN_ENCODER_CPUS = 0.25


@ray.remote(num_cpus=READ_CPUS, num_returns=2)
def read_chunk(paths: list[str]) -> tuple[list[Loaded], list[bytes | None]]:
    """Read and hash a chunk: rows for the driver (hash and photo metadata, or an error), bytes for the decoder.

    A video on a plain path is hashed in blocks, never read whole, and its decode task opens it
    by path, as a local worker does; one behind a URL travels as bytes, like a photo.
    """
    rows: list[Loaded] = []
    blobs: list[bytes | None] = []
    for path in paths:
        if is_video(path) and not is_url(path):
            rows.append(load_video(path, None))  # hash and recorded date/place, or why it is skipped
            blobs.append(None)
            continue
        try:
            data = read_bytes(path)
        except SkipFile as exc:
            rows.append(Loaded(path, error=str(exc)))
            blobs.append(None)
            continue
        except Exception as exc:  # noqa: BLE001  (any reader's failure is this file's error row)
            rows.append(Loaded(path, error=f"unreadable: {getattr(exc, 'strerror', None) or exc}"))
            blobs.append(None)
            continue
        row = load_bytes(path, data, None)  # no transform: hash and metadata only, as for known content locally
        rows.append(row)
        blobs.append(data if row.error is None else None)
    return rows, blobs


@ray.remote(num_cpus=DECODE_CPUS)
def decode_chunk(
    rows: list[Loaded], blobs: list[bytes | None], wanted: list[int], transform, draft: bool, limit: float | None = None,
    faces: FaceFinder | None = None, stored: Container[int] = (), video: VideoSettings | None = None,
) -> list[Loaded]:
    """Decode and preprocess the files at positions `wanted`, exactly as the local loader does.

    A video is sampled into frames as `video` says (the run's ``IndexSettings.video``), within
    its own limit, which grows with its length (``load_video``); its frames come back as the
    local workers send them (float16 model inputs, with their times).

    With `faces` (a :class:`FaceFinder`, unpickled here with its detector built), the faces of
    each picture decoded are found too, as a local decoding worker finds them. The files at
    positions in `stored` have a vector already (an index that had faces off): decoded for
    their faces only, their pixels are dropped here, so that no encoder embeds them again.

    Each file within `limit` seconds (a SIGALRM in the task's thread, as in a local worker),
    or it becomes an error row. A decoder deaf to that (stuck inside one C call) is the
    driver's to stop: it cancels the task (:meth:`_Pipeline._overdue`).
    """
    _maybe_crash()
    out = []
    for i in wanted:
        row = _decode_one(rows[i], blobs[i], transform, draft, limit, faces, video)
        out.append(dataclasses.replace(row, pixels=None) if i in stored else row)
    return out


def _decode_one(
    row: Loaded, data: bytes | None, transform: Any, draft: bool, limit: float | None, faces: FaceFinder | None = None,
    video: VideoSettings | None = None,
) -> Loaded:
    if row.error is not None:  # the read failed: its row already says why
        return row
    if is_video(row.path):  # faces are looked for in photos only, as locally
        if data is None:  # a plain path (read_chunk): opened there, as a local worker opens it
            return load_video(row.path, transform, settings=video, time_limit_s=limit)
        return load_bytes(row.path, data, transform, video=video, time_limit_s=limit)
    if data is None:
        return row
    try:
        with time_limit(limit):
            return load_bytes(row.path, data, transform, draft=draft, digest=row.hash, faces=faces)
    except DecodeTimeout:
        return Loaded(row.path, error=f"decoding took longer than {limit:g}s (pathological image?)")


def _maybe_crash() -> None:
    marker = os.environ.get(CRASH_ONCE_ENV)
    if not marker:
        return
    try:
        os.unlink(marker)  # only one worker wins the unlink
    except OSError:
        return
    os._exit(1)


class Encoder:
    """One aligner, loaded once; embeds decoded chunks and returns only small things."""

    def __init__(self, factory: Callable[[], Aligner], threads: int | None = None):
        if threads:
            # Before torch is imported here: Ray sets OMP_NUM_THREADS to the actor's CPU share
            # (1), which would leave a CPU encoder on one core. (A runtime_env would do the same
            # but starts a worker of its own, seconds more per run.)
            os.environ["OMP_NUM_THREADS"] = str(threads)
        self.aligner = factory()

    def identity(self) -> str:
        return self.aligner.identity

    def encode(self, *chunks: list[Loaded]) -> tuple[list[Loaded], list[tuple[str, int, int]], np.ndarray, list[Moments]]:
        """Rows (no pixels; a video's times kept), then (hash, width, height) and vectors of each
        distinct decoded photo, then each distinct decoded video's frames (:data:`Moments`)."""
        items = [item for chunk in chunks for item in chunk]
        decoded = {item.hash: item for item in items if item.pixels is not None and item.hash is not None}
        stills = {h: it for h, it in decoded.items() if it.times is None}
        if stills:
            vectors = self.aligner.encode_images(np.stack([it.pixels for it in stills.values() if it.pixels is not None]))
        else:
            vectors = np.zeros((0, self.aligner.dim), np.float32)
        # As a local run encodes them (ingest.source.encode_frames): the same batches, so the same vectors.
        videos = [(h, list(it.times or []), encode_frames(self.aligner, it.pixels), it.width, it.height)
                  for h, it in decoded.items() if it.times is not None]
        rows = [dataclasses.replace(it, pixels=None) for it in items]
        return rows, [(h, it.width, it.height) for h, it in stills.items()], vectors, videos


#: A video's frames as an encoder returns them: (hash, times in seconds, their vectors, width, height).
Moments = tuple[str, list[float], np.ndarray, int, int]


# -- the driver --------------------------------------------------------------------------
#: The driver commits what has arrived once this many vectors wait, or COMMIT_SECONDS after
#: the first of them arrived, whichever comes first: a bound on the number of commits when
#: many small results arrive at once, and on what a killed driver loses. (With
#: synchronous=NORMAL a commit is cheap: in benchmarks/bench_ray.py (b) coalescing alone changed
#: the rate little; one transaction per commit and fewer checkpoints did the most.)
COMMIT_VECTORS = 2_048
COMMIT_SECONDS = 0.5
#: WAL pages (4 KB) between SQLite's copies of the log into the database while vectors
#: stream in: 64 MB instead of SQLite's 4 MB. Each copy ends with an fsync, the one wait
#: on the disk that synchronous=NORMAL leaves in the commit path.
STREAMING_CHECKPOINT_PAGES = 16_384


def commit(store: IndexStore, staging: Staging, rows: list[Loaded], encoded: list[tuple[str, np.ndarray, int, int]],
           detector: str | None = None, videos: Sequence[Moments] = ()) -> int:
    """The single writer's step: store vectors of contents not yet stored, the faces the workers
    found (with `detector`, the finder's name, when faces are on) and record the rows, in one transaction.

    The staging rows live in a temporary table, which a killed driver loses anyway; the
    vectors and faces are what a killed driver keeps.
    """
    with store.catalog.transaction():
        stored = store_videos(store, rows, videos) + store_and_record(store, staging, rows, encoded)
        if detector is not None:
            store_found(store.catalog, rows, detector)
        return stored


def store_and_record(store: IndexStore, staging: Staging, rows: list[Loaded],
                     encoded: list[tuple[str, np.ndarray, int, int]]) -> int:
    """Vectors of contents not yet stored, then the rows; each write in its own transaction unless one is open.

    :func:`commit` wraps it in one; on its own it is the driver before 2026-12-02, which
    benchmarks/bench_ray.py (b) measures against it.
    """
    fresh: dict[str, tuple] = {}
    if encoded:
        missing = store.catalog.missing_hashes(h for h, *_ in encoded)
        fresh = {h: (h, v, w, ht) for h, v, w, ht in encoded if h in missing}
        if fresh:
            # Each content's perceptual hash rides on its decoded row, where this commit has it.
            sameness = {r.hash: r.sameness for r in rows if r.hash}
            store.catalog.put_vectors(list(fresh.values()), [sameness.get(h) for h in fresh])
    if rows:
        staging.record(rows)
    return len(fresh)


def store_videos(store: IndexStore, rows: list[Loaded], videos: Sequence[Moments]) -> int:
    """Each video content not yet stored, its frames with their times, as a local run stores
    them (``Catalog.put_video``: the same frames rows, so the same FAISS ids); how many were stored."""
    if not videos:
        return 0
    missing = store.catalog.missing_hashes(h for h, *_ in videos)
    sameness = {r.hash: r.sameness for r in rows if r.hash}
    fresh = {h: (h, times, vectors, w, ht) for h, times, vectors, w, ht in videos if h in missing}
    for digest, times, vectors, width, height in fresh.values():
        store.catalog.put_video(digest, times, vectors, width, height, sameness.get(digest))
    return len(fresh)


@contextmanager
def streaming_checkpoints(store: IndexStore, pages: int = STREAMING_CHECKPOINT_PAGES) -> Iterator[None]:
    """Copy the WAL into the database every `pages` pages while the driver streams vectors in."""
    conn = store.catalog.db.conn
    before = int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
    conn.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA wal_autocheckpoint={before}")


@contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Ray as asked: an instance already started in this process, a new private local one, or a cluster.

    While joined, what Ray's driver prints goes to stderr: its error listener writes cluster
    events ("(raylet) A worker died ...", "Raylet is terminated ...") to sys.stdout from a
    thread of its own, even with log_to_driver=False, and stdout may carry a command's JSON.
    """
    if ray.is_initialized():
        yield
        return
    _probe(address)
    with redirect_stdout(sys.stderr):
        _start(address)
        try:
            yield
        finally:
            ray.shutdown()


def _start(address: str | None) -> None:
    """Start or join Ray; a failure is one line that says where and, for a joined cluster, what to check."""
    try:
        _init(address)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        hint = ""
        if address and not os.environ.get("RAY_AUTH_MODE"):
            # Ray 2.60's `ray start --head` turns token authentication on, and a joining driver
            # sends its token only when told to (measured with a local head, docs/scaling.md).
            hint = ("; if the cluster uses token authentication, set RAY_AUTH_MODE=token "
                    "(the token in ~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise RetrievalError(f"could not start or join {where}: {_reason(exc)}{hint}") from None


def _init(address: str | None, attempts: int = 3) -> None:
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Ray's client warns before it raises; the error says it once
                # No address: a private instance ("local"). ray.init(None) would join the cluster
                # this machine last started (the ray_current_cluster file that `ray start` writes).
                ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
            return
        except ConnectionAbortedError as exc:
            # Ray's client server starts a process per driver; on a busy head that start can
            # fail ("Starting Ray client server failed"), and a second try has succeeded here.
            if attempt == attempts or not str(address).startswith("ray://"):
                raise
            log.warning("the Ray client server could not start a session (%s); trying again", _reason(exc))
            ray.shutdown()  # whatever the failed attempt set up in this process
            time.sleep(2.0 * attempt)


def _reason(exc: Exception) -> str:
    """The line of a (possibly multi-line, traceback-carrying) Ray error that says what went wrong."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] if len(lines) == 1 or not lines[0].endswith(":") else f"{lines[0]} {lines[-1]}"


#: Seconds to wait for the cluster's port to answer before giving up on an address.
PROBE_SECONDS = 10.0
#: The Ray client server's port when a ray:// address names none.
CLIENT_PORT = 10001


def _probe(address: str | None) -> None:
    """Fail in one line, at once, when nothing listens at the cluster's address.

    ray.init would otherwise retry an unreachable HOST:PORT for minutes
    (docs/scaling.md#running-it), printing its C++ core's warnings meanwhile.
    """
    if address is None:
        return
    target = address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto") or ""
        except ConnectionError as exc:
            raise RetrievalError(f"could not join the Ray cluster at auto: {str(exc).splitlines()[0]}") from None
        except Exception:  # noqa: BLE001  (a private helper of Ray's that may change: let ray.init decide)
            return
    host, port = _host_port(target)
    if host is None:
        return
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise RetrievalError(
            f"could not join the Ray cluster at {address}: nothing answers at {host}:{port} ({why}); "
            "is the Ray head running there, and is the port open from this machine?"
        ) from None


def _host_port(target: str) -> tuple[str | None, int]:
    client = target.startswith("ray://")
    target = target.removeprefix("ray://").rstrip("/")
    head, _, port = target.rpartition(":")
    host: str | None = head
    if not port.isdigit():
        host, port = (target, str(CLIENT_PORT)) if client else (None, "0")
    return ((host or "").strip("[]") or None), int(port)


class RaySource(Source):
    """The :class:`retrieval.ingest.source.Source` whose work is done on Ray; it builds on-disk shards there too."""

    def __init__(self, settings: RaySettings | None = None):
        self.settings = settings or RaySettings()
        self._session: ExitStack | None = None
        self._encoders: Encoders | None = None

    def start(self, spec: str) -> None:
        """Join Ray and let the encoder actors load model `spec` while this process loads its own copy.

        Optional (``build_index`` calls it before loading the driver's model); :meth:`encode`
        starts them otherwise. The driver needs the model only for its identity, transform and captions.
        """
        self._connect()
        if self._encoders is None:
            self._encoders = Encoders(spec, self.settings)

    def _connect(self) -> None:
        if self._session is None:
            self._session = ExitStack()
            self._session.enter_context(connected(self.settings.address))

    def _release_encoders(self) -> None:
        """Stop the encoder actors now: their CPUs (and their model's memory) go back to the cluster."""
        if self._encoders is not None:
            for actor in self._encoders.actors:
                ray.kill(actor, no_restart=True)
        self._encoders = None

    def close(self) -> None:
        """Stop the encoders and leave (or stop) Ray; ``build_index`` calls it after publishing."""
        self._release_encoders()
        if self._session is not None:
            self._session.close()
            self._session = None

    def roots(self, roots: Sequence[str | Path]) -> list[str]:
        return [root_name(r) for r in roots]

    def walk(
        self, roots: Sequence[str | Path], ignored: Counter[str] | None = None, settings: WalkSettings = WalkSettings(),
    ) -> Iterator[FileStat]:
        for root in roots:
            yield from (walk_url(str(root), ignored, settings) if is_url(str(root)) else walk([root], ignored, settings))

    def encode(
        self, store: IndexStore, aligner: Aligner, staging: Staging, known: Container[str],
        settings: IndexSettings, progress: Progress,
    ) -> int:
        try:
            if not staging.todo_count():
                return 0  # nothing changed: no cluster work
            self.start(aligner.spec)
            encoders = self._encoders
            assert encoders is not None  # start() made them
            # Built here, so that no decode task builds dlib's detector again (retrieval.aligners.faces).
            finder = finder_for(settings).prepare() if settings.faces else None
            return _Pipeline(store, aligner, staging, settings, self.settings, encoders, progress, finder).run()
        except ray.exceptions.RayError as exc:
            raise _lost(exc) from None
        finally:
            # Ray stays joined: an on-disk index builds its shards on it when the run publishes.
            self._release_encoders()

    def shard_builder(self) -> AddShards:
        return self.add_shards

    def load_faces(self, paths: Sequence[str], finder: FaceFinder, settings: IndexSettings) -> Iterator[Loaded]:
        """Indexed files decoded for their faces alone, by the cluster's read and decode tasks (so
        a URL that only the workers can read is looked at too): what a run's face scan calls for
        files no decode task looked at in this run (an index that had faces off)."""
        self._connect()
        try:
            yield from _faces_of(paths, finder, settings, self.settings)
        except ray.exceptions.RayError as exc:
            raise _lost(exc) from None

    def add_shards(
        self, trained: Path, parts: Iterator[Iterator[tuple[np.ndarray, np.ndarray]]], work: Path, n: int
    ) -> list[Path]:
        """:data:`retrieval.ann.ondisk.AddShards`: an on-disk index's shards, built as Ray tasks (ray_shards)."""
        from retrieval.ann import ondisk
        from retrieval.cluster.ray_shards import add_shards

        self._connect()
        on_ray = self.settings.shards_on_ray
        if on_ray is None:
            on_ray = sum(1 for node in ray.nodes() if node.get("Alive")) > 1
        if not on_ray:
            log.info("one-node Ray cluster: the shards are added in this process (RaySettings.shards_on_ray)")
            return ondisk.add_shards_here(trained, parts, work, n)
        try:
            return add_shards(trained, parts, work, n, self.settings.stall_seconds)
        except ray.exceptions.RayError as exc:
            raise _lost(exc) from None


def _faces_of(paths: Sequence[str], finder: FaceFinder, settings: IndexSettings, rs: RaySettings) -> Iterator[Loaded]:
    """Read and decode `paths` (transform None: faces only) as Ray tasks; rows in order, with
    at most two tasks per cluster CPU in flight. A task that has not finished within
    `stall_seconds` of being waited for ends the run in one line (the scan's commits are kept)."""
    finder_ref = ray.put(finder)
    in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending: deque = deque()

    def oldest() -> list[Loaded]:
        try:
            return ray.get(pending.popleft(), timeout=rs.stall_seconds)
        except ray.exceptions.GetTimeoutError:
            raise RetrievalError(
                f"the Ray cluster looked for no face for {rs.stall_seconds:g}s; the faces found so far are kept: "
                "run the same command again, with the cluster's capacity back, to go on") from None

    for chunk in batched(paths, rs.chunk):
        refs: Any = read_chunk.remote(chunk)  # num_returns=2: two refs, which Ray's annotations don't say
        rows_ref, blobs_ref = refs
        pending.append(decode_chunk.remote(rows_ref, blobs_ref, list(range(len(chunk))), None, settings.draft,
                                           settings.decode_seconds, finder_ref))
        if len(pending) >= in_flight:
            yield from oldest()
    while pending:
        yield from oldest()


def _lost(exc: Exception) -> RetrievalError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
    return RetrievalError(
        f"the Ray cluster lost work it could not retry ({type(exc).__name__}: {detail}); "
        "what was committed is kept: run the same command again to resume"
    )


class Encoders:
    """The encoder actors of one run: one per GPU, or `encoders` CPU actors, each loading the model once."""

    def __init__(self, spec: str, rs: RaySettings):
        self.started = time.monotonic()
        factory = rs.aligner_factory or functools.partial(_load_aligner, spec)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        nodes = _cpu_nodes()
        count, share = plan_encoders(rs.encoders, gpus, nodes)
        # A call waits out its actor's restarts (a model load can take a minute on a busy node);
        # only an actor that has used up its restarts fails the run. A restarted actor is placed
        # on a surviving node, where its share leaves room to read (plan_encoders).
        options: dict[str, Any] = {"max_restarts": 3, "max_task_retries": -1, "num_cpus": share}
        threads = None
        if gpus:
            options.update(num_gpus=1)
        else:
            threads = rs.encoder_threads or _threads(count, nodes)
        log.info("starting %d encoder actor(s) (%s, %g CPU each)", count,
                 "GPU" if gpus else f"CPU, {threads} threads each", share)
        # Any: Ray's annotations type an actor's methods as plain callables, without `.remote`.
        actor: Any = ray.remote(Encoder).options(**options)
        self.actors = [actor.remote(factory, threads) for _ in range(count)]
        self.identities = [a.identity.remote() for a in self.actors]


def plan_encoders(requested: int | None, gpus: int, node_cpus: Sequence[float]) -> tuple[int, float]:
    """How many encoder actors to start, and the CPU share each asks for.

    One per GPU (at most `requested`), or `requested` CPU actors (default one). Each asks for
    1 CPU where the smallest node keeps :data:`ROOM_CPUS` beside it, less on smaller nodes,
    because an actor restarted after a lost node may land on any survivor. No more actors
    than leave ROOM_CPUS free in the whole cluster: with every CPU held by encoders, the
    reads they wait for would never be scheduled.
    """
    cpus = [c for c in node_cpus if c > 0] or [1.0]
    share = min(1.0, max(MIN_ENCODER_CPUS, min(cpus) - ROOM_CPUS))
    wanted = min(gpus, requested or gpus) if gpus else max(1, requested or 1)
    fits = max(1, math.floor((sum(cpus) - ROOM_CPUS) / share + 1e-9))
    if wanted > fits:
        log.warning("%d encoder actors would leave no CPU to read and decode with (%g CPUs in the cluster): "
                    "starting %d", wanted, sum(cpus), fits)
    return min(wanted, fits), share


def _cpu_nodes() -> list[float]:
    """CPUs of each live node that has any (a head node kept free of work has none)."""
    return [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU")]


def _threads(count: int, nodes: Sequence[float]) -> int:
    """Torch threads per CPU encoder: the smallest node's CPUs shared by the encoders placed on it."""
    nodes = list(nodes) or [1.0]
    return max(1, int(min(nodes) // math.ceil(count / len(nodes))))


@dataclasses.dataclass
class _Decode:
    """A decode task the driver watches: what it was given, and when the driver gives up on it."""

    rows: list[Loaded]
    blobs_ref: object
    wanted: list[int]
    deadline: float
    #: Positions among `wanted` whose content has a vector already: decoded for faces only.
    stored: frozenset[int] = frozenset()
    #: What it weighs in an encoder's group: its files, or a whole group for a video (_Pipeline._decode).
    weight: int = 1
    #: For a video's task, until when its sampling may run: the run is not stalled before then (_Pipeline._stall_at).
    sampling_until: float = 0.0


class _Pipeline:
    """One run's flow: read -> (driver: known?) -> decode -> encode -> (driver: commit)."""

    def __init__(
        self, store: IndexStore, aligner: Aligner, staging: Staging, settings: IndexSettings, ray_settings: RaySettings,
        encoders: Encoders, progress: Progress, finder: FaceFinder | None = None,
    ):
        self.store, self.aligner, self.staging, self.progress = store, aligner, staging, progress
        self.settings, self.ray_settings = settings, ray_settings
        # Faces on: the decode tasks find them. The finder is put in the object store once
        # (pickled with its detector built, as the local workers get it), not once per task.
        self.detector = finder.settings.name if finder is not None else None
        self.finder_ref = ray.put(finder) if finder is not None else None
        self.started = encoders.started
        self.encoders, self.identities = encoders.actors, encoders.identities
        self.loading = set(self.identities)  # identity calls of actors still loading their model
        self.checked = False
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.read_limit = max(2, 2 * cpus)
        self.encoded = 0
        self.decoded = 0  # files decoded so far
        self.decoding: dict = {}  # decode ref -> _Decode
        # What has arrived and waits for the next commit (COMMIT_VECTORS, COMMIT_SECONDS).
        self.rows: list[Loaded] = []
        self.vectors: list[tuple] = []
        self.videos: list[Moments] = []
        self.since: float | None = None
        # When a result last arrived: with none for RaySettings.stall_seconds the run ends (_stalled).
        self.moved = time.monotonic()
        # Videos committed and their frames, for the progress bar's note (as LocalSource.encode shows them).
        self.sampled = (0, 0)

    def _check_identity(self) -> None:
        """Before the first commit: every actor must have loaded the driver's model."""
        if self.checked:
            return
        try:
            identities = ray.get(self.identities, timeout=self.ray_settings.stall_seconds)
        except ray.exceptions.GetTimeoutError:
            raise self._stalled() from None
        for got in identities:
            if got != self.aligner.identity:
                raise RetrievalError(
                    f"an encoder on the cluster loaded {got!r}, not {self.aligner.identity!r}: "
                    "install the same model files on every node"
                )
        self.checked = True

    def run(self) -> int:
        with streaming_checkpoints(self.store):
            return self._run()

    def _run(self) -> int:
        rs, batch = self.ray_settings, self.settings.batch_size
        chunks = batched(self.staging.todo_paths(), rs.chunk)
        reading: dict = {}  # rows ref -> blobs ref
        encoding: dict = {}  # result ref -> encoder index
        busy = [0] * len(self.encoders)
        groups: deque[list] = deque()  # decoded refs waiting for an encoder
        group: list = []
        group_files, first = 0, True
        more = True
        while True:
            while more and len(reading) + len(self.decoding) < self.read_limit and len(groups) < self._ahead(batch):
                chunk = next(chunks, None)
                if chunk is None:
                    more = False
                    break
                refs: Any = read_chunk.remote(chunk)  # num_returns=2: two refs, which Ray's annotations don't say
                rows_ref, blobs_ref = refs
                reading[rows_ref] = blobs_ref
            upstream = more or reading or self.decoding
            if group and (group_files >= (rs.chunk if first else batch) or not upstream):
                groups.append(group)
                group, group_files, first = [], 0, False
            while groups and min(busy) < 2:
                idx = busy.index(min(busy))
                encoding[self.encoders[idx].encode.remote(*groups.popleft())] = idx
                busy[idx] += 1
            in_flight = bool(reading or self.decoding or encoding)
            self._maybe_commit(force=not in_flight)
            if not in_flight and not groups and not group and not more:
                log.info("%d encoded in %.1fs on Ray", self.encoded, time.monotonic() - self.started)
                return self.encoded
            if not in_flight:
                continue
            # An actor's identity call returns once its model is loaded: the driver wakes then to
            # stop decoding ahead (_ahead).
            waited = [*reading, *self.decoding, *encoding, *self.loading]
            ready, _ = ray.wait(waited, num_returns=1, timeout=self._wait_seconds())
            if not ready and time.monotonic() >= self._stall_at():
                raise self._stalled()
            if ready:
                self.moved = time.monotonic()
                ready, _ = ray.wait(waited, num_returns=len(waited), timeout=0)
            for ref in ready:
                if ref in self.loading:
                    self.loading.discard(ref)  # its result (or error) is read in _check_identity
                    if not self.loading:
                        log.info("encoders ready %.1fs after they were asked for; %d files decoded meanwhile",
                                 time.monotonic() - self.started, self.decoded)
                elif ref in reading:
                    self._after_read(self._get(ref), reading.pop(ref))
                elif ref in self.decoding:
                    # Ready decodes only: an encoder call never waits on a decode that may hang.
                    group.append(ref)
                    task = self.decoding.pop(ref)
                    group_files += task.weight
                    self.decoded += len(task.wanted)
                    if group_files >= batch:  # a video fills a group alone: one video's frames per encoder call
                        groups.append(group)
                        group, group_files, first = [], 0, False
                else:
                    busy[encoding.pop(ref)] -= 1
                    got_rows, meta, vecs, videos = self._get(ref)
                    self._arrived(got_rows, [(h, v, w, ht) for (h, w, ht), v in zip(meta, vecs)], videos)
            self._overdue()

    def _get(self, ref: Any) -> Any:
        """A ready result. Bounded too: one kept on a node lost since is rebuilt, which may never end."""
        try:
            return ray.get(ref, timeout=self.ray_settings.stall_seconds)
        except ray.exceptions.GetTimeoutError:
            raise self._stalled() from None

    def _ahead(self, batch: int) -> int:
        """Decoded groups that may wait for an encoder: two per encoder, more while some still load their model."""
        ahead = self.ray_settings.decode_ahead_files  # RaySettings says why
        return 2 * len(self.encoders) + math.ceil(ahead * len(self.loading) / max(1, batch))

    def _arrived(self, rows: list[Loaded], vectors: Sequence[tuple] = (), videos: Sequence[Moments] = ()) -> None:
        if self.since is None:
            self.since = time.monotonic()
        self.rows += rows
        self.vectors += vectors
        self.videos += videos

    def _wait_seconds(self) -> float | None:
        """How long the driver may wait for results: until the next commit, decode or no-progress deadline is due."""
        due = [d.deadline for d in self.decoding.values()]
        if self.since is not None:
            due.append(self.since + COMMIT_SECONDS)
        due.append(self._stall_at())
        return max(0.0, min(due) - time.monotonic())

    def _stall_at(self) -> float:
        """When a run in which nothing arrives counts as stalled: `stall_seconds` after the last
        result, or later while a video may still be sampled within its own limit (which grows with
        its length, past `stall_seconds` for a long video on a busy node)."""
        sampling = max((d.sampling_until for d in self.decoding.values()), default=0.0)
        return max(self.moved + self.ray_settings.stall_seconds, sampling)

    def _stalled(self) -> RetrievalError:
        """The one line that ends a run in which nothing arrived for RaySettings.stall_seconds.

        Ray waits forever for resources no live node offers (a lost node, encoders holding
        every CPU) and says nothing; the driver says what is kept and how to go on.
        """
        return RetrievalError(
            f"the Ray cluster made no progress for {self.ray_settings.stall_seconds:g}s: no file read and no vector "
            f"stored{capacity()}; the {self.encoded} vectors this run stored are kept: run the same command again, "
            "with the cluster's capacity back, to resume"
        )

    def _maybe_commit(self, force: bool = False) -> None:
        """Commit what has arrived once enough has, or once the first of it has waited long enough."""
        if self.since is None:
            return
        waiting = len(self.vectors) + sum(len(times) for _, times, *_ in self.videos)
        if not (force or waiting >= COMMIT_VECTORS or time.monotonic() - self.since >= COMMIT_SECONDS):
            return
        if (self.vectors or self.videos) and not self.checked:
            self._check_identity()
            log.info("first vectors %.1fs after the encoders were asked for", time.monotonic() - self.started)
        rows, vectors, videos = self.rows, self.vectors, self.videos
        self.rows, self.vectors, self.videos, self.since = [], [], [], None
        for row in rows:
            say_decoded(row)
        self.encoded += commit(self.store, self.staging, rows, vectors, self.detector, videos)
        sampled = [len(row.times) for row in rows if row.times is not None]
        if sampled:  # a run of photos alone draws as before
            self.sampled = (self.sampled[0] + len(sampled), self.sampled[1] + sum(sampled))
            note(self.progress, f"videos {self.sampled[0]} ({self.sampled[1]} frames)")
        self.progress.advance(len(rows))

    def _after_read(self, rows: list[Loaded], blobs_ref) -> None:
        """Rows that are final now (errors, contents already stored) wait for a commit; a decode task takes the rest.

        With faces on, a content stored without its faces looked for (an index that had faces
        off) is decoded for them, as the local path decodes it, and not encoded again.
        """
        hashes = [r.hash for r in rows if r.hash]
        missing = self.store.catalog.missing_hashes(hashes) if hashes else set()
        unscanned: set[str] = set()
        if self.finder_ref is not None and hashes:
            unscanned = set(hashes) - missing - scanned(self.store.catalog, hashes)
            # A video's frames are not looked at for faces (as locally): the run's face scan records it.
            unscanned -= {r.hash for r in rows if r.hash and is_video(r.path)}
        wanted = [i for i, r in enumerate(rows) if r.hash in missing or r.hash in unscanned]
        decoding = set(wanted)
        self._arrived([r for i, r in enumerate(rows) if i not in decoding])
        # Each video in a task of its own: it runs within its own limit, and its frames (up to
        # VideoSettings.max_frames of them) reach an encoder in a call of their own.
        photos = [i for i in wanted if not is_video(rows[i].path)]
        if photos:
            self._decode(rows, blobs_ref, photos, frozenset(i for i in photos if rows[i].hash in unscanned))
        for i in wanted:
            if is_video(rows[i].path):
                self._decode(rows, blobs_ref, [i])

    def _allowed(self, rows: list[Loaded], wanted: list[int]) -> float:
        """Seconds a decode task of these files may take, as the local pool allows (retrieval.media.workers):
        a photo the decode limit, a video the longest its sampling may run, and one more photo's limit."""
        per_file = self.settings.decode_seconds or 60.0
        per_video = max(per_file, self.settings.video.longest_s + 10.0)
        return sum(per_video if is_video(rows[i].path) else per_file for i in wanted) + per_file

    def _decode(self, rows: list[Loaded], blobs_ref, wanted: list[int], stored: frozenset[int] = frozenset()) -> None:
        limit = self.settings.decode_seconds
        ref = decode_chunk.remote(rows, blobs_ref, wanted, self.aligner.transform, self.settings.draft, limit,
                                  self.finder_ref, stored, self.settings.video)
        now, allowed = time.monotonic(), self._allowed(rows, wanted)
        video = any(is_video(rows[i].path) for i in wanted)
        weight = self.settings.batch_size if video else len(wanted)
        self.decoding[ref] = _Decode(rows, blobs_ref, wanted, now + allowed + DECODE_SLACK_S, stored, weight,
                                     now + allowed if video else 0.0)

    def _overdue(self) -> None:
        """Decode tasks past their deadline: a decoder stuck where the task's own limit cannot reach.

        As the local path's worker pool does (retrieval.media.workers): the task is cancelled, which
        kills its worker; each of its files is decoded again alone, and a file that overruns
        alone too becomes an error row.
        """
        now = time.monotonic()
        for ref, task in [(r, t) for r, t in self.decoding.items() if t.deadline <= now]:
            del self.decoding[ref]
            ray.cancel(ref, force=True)
            if len(task.wanted) > 1:
                log.warning("a decode task of %d files overran its limit: decoding them one by one", len(task.wanted))
                for i in task.wanted:
                    self._decode(task.rows, task.blobs_ref, [i], task.stored & {i})
                continue
            path = task.rows[task.wanted[0]].path
            seconds = self._allowed(task.rows, task.wanted) + DECODE_SLACK_S
            log.warning("%s: decoding did not finish within %.0fs; skipped", path, seconds)
            self._arrived([Loaded(path, error=f"decoding did not finish within {seconds:g}s (the worker was replaced)")])


def _load_aligner(spec: str) -> Aligner:
    from retrieval.aligners import load_aligner

    return load_aligner(spec)
