"""Torture suite for indexing: seeded SIGKILLs in every phase, readers during writes, bad inputs.

Kill points: the folder changes a little (files added, removed, renamed, rewritten, touched,
sometimes a new caption corpus), an index run starts in a child process, and the supervisor
SIGKILLs it at a seeded moment after the run reports entering the chosen phase (walking,
encoding, committing vectors, building the FAISS file, publishing, adding captions). The
invariants are checked after the kill and again after a re-run to completion:

- SQLite's integrity check passes;
- the catalog's files equal the folder's images, path, size and content hash (after a kill,
  the state of the last completed run or of the killed one if it had published);
- each image has a stored vector, and the vectors table holds one row per content;
- the published FAISS file holds exactly the catalog's ids, with the recorded checksum;
- a search returns only catalog rows;
- no decoding worker outlives the killed run.

Meanwhile reader processes search the index without pause; each answer must come from one
complete generation (the FAISS file's vector count equals the snapshot's image count and
every id is a row of that snapshot), and no search may fail.

Bad inputs: mutants of real JPEG, PNG, GIF, WebP, BMP and TIFF files (truncated, bit flips,
zeroed headers, false dimensions, wrong extensions), zero-byte files, directories named like
images, symlink loops, dangling links, FIFOs, sockets, unreadable files (the run drops root to
`nobody`, since chmod 000 does not stop root) and names that are not UTF-8 or hold newlines.
Each is loaded alone within its time limit and the whole corpus is indexed by a child run:
every file must end indexed or skipped with a reason.

    python -m benchmarks.torture --kills 200 --mutants 1000 --out torture.json
    python -m benchmarks.torture --kills 20 --mutants 300 --default-every 0   # quick

Run it from the repository root as a module: its child processes (forked from a server, or a
fresh interpreter for the bad inputs) import it as ``benchmarks.torture``.

Runs use a plumbing aligner (vectors from a coarse colour layout) where the model does not
matter; every ``--default-every``-th kill point uses the real packaged ``default`` aligner on
an index of its own.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import click
import numpy as np
from PIL import Image

from benchmarks import harness
from benchmarks.proctable import live_children

#: The checkout: the bad-input child runs ``python -m benchmarks.torture`` with it on its path.
ROOT = Path(__file__).resolve().parent.parent

PHASES = ["walk", "encode", "commit", "faiss", "publish", "captions"]
FORMATS = {".jpg": "JPEG", ".png": "PNG", ".gif": "GIF", ".webp": "WEBP", ".bmp": "BMP", ".tiff": "TIFF"}


# -- the aligner used where the model does not matter ---------------------------------------------
def plumbing_aligner():
    from retrieval.aligners.base import Aligner, normalize
    from retrieval.media.transform import ImageTransform

    class Plumbing(Aligner):
        spec = identity = "torture/color"
        dim = 48

        def __init__(self):
            self.transform = ImageTransform(size=16, mean=(0.5,) * 3, std=(0.5,) * 3)

        def encode_images(self, pixels):
            n = len(pixels)
            grid = pixels.reshape(n, 3, 4, 4, 4, 4).mean(axis=(3, 5)).reshape(n, -1)
            return normalize(grid + 1.5)

        def encode_texts(self, texts):
            seeds = [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") for t in texts]
            out = [np.random.default_rng(seed).normal(size=self.dim) for seed in seeds]
            return normalize(np.array(out, dtype=np.float32).reshape(len(texts), self.dim))

    return Plumbing()


def aligner_for(name: str):
    if name == "color":
        return plumbing_aligner()
    from retrieval.aligners import load_aligner

    return load_aligner(name)


# -- child: one index run that reports its phases ----------------------------------------------------
def child_index(index: str, folder: str, aligner: str, workers: int, captions: str | None, mark,
                decode_seconds: float = 30.0) -> int:
    """Index `folder` into `index`, calling `mark(phase)` as each phase starts."""
    from retrieval import ann
    from retrieval.ingest import pipeline as indexer
    from retrieval.ingest import source as local_source
    from retrieval.storage.catalog import Catalog
    from retrieval.storage.staging import Staging
    from retrieval.storage.store import IndexStore

    def wrap(owner, name, phase):
        real = getattr(owner, name)

        def wrapped(*a, **k):
            mark(phase)
            return real(*a, **k)

        setattr(owner, name, wrapped)

    real_walk = local_source.walk

    def walk(roots, ignored=None, *settings):
        for n, item in enumerate(real_walk(roots, ignored, *settings)):
            if n % 5 == 0:
                mark("walk")
            yield item

    local_source.walk = walk
    wrap(local_source, "encode_and_store", "encode")
    wrap(Catalog, "put_vectors", "commit")
    for name in ("build_streamed", "update", "write"):
        wrap(ann, name, "faiss")
    wrap(Staging, "apply", "publish")
    wrap(Catalog, "publishing", "publish")
    wrap(indexer, "_caption_rows", "captions")
    store = IndexStore.open(index, create=True)
    try:
        indexer.run(
            store, aligner_for(aligner), [folder], captions_file=captions,
            settings=indexer.IndexSettings(workers=workers, batch_size=4, chunk=4, decode_seconds=decode_seconds),
        )
    finally:
        store.close()
    mark("done")
    return 0


# Children are forked from a server that has imported the engine once: on a busy 2-core
# machine a fresh interpreter takes seconds just to import numpy, FAISS and Pillow, and the
# kill loop starts two runs per kill point. The server never runs FAISS's OpenMP threads,
# so forking from it is safe.
PRELOAD = ["numpy", "faiss", "PIL.Image", "sqlite_utils", "retrieval.ingest.pipeline", "retrieval.storage.store",
           "retrieval.storage.health", "retrieval.search.query", "retrieval.media.transform", "retrieval.aligners.base"]


@functools.cache
def context():
    """The forkserver context, its server preloading the engine (made once per process)."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _forked_index(conn, options: dict) -> None:
    import traceback

    try:
        child_index(mark=conn.send, **options)
    except BaseException:
        conn.send("error " + traceback.format_exc()[-2000:])
        raise SystemExit(1) from None


# -- readers ---------------------------------------------------------------------------------------------
def child_reader(index: str, stop: str, report: str) -> int:
    """Search without pause until `stop` exists; write counts to `report`."""
    from retrieval import ann
    from retrieval.search.query import search_vectors
    from retrieval.storage.store import IndexStore

    rng = np.random.default_rng(os.getpid())
    searches, errors, inconsistent, generations = 0, [], 0, set()
    while not os.path.exists(stop):
        if not os.path.exists(os.path.join(index, "catalog.db")):
            time.sleep(0.05)
            continue
        try:
            store = IndexStore.open(index)
            try:
                dim = store.catalog.dim
                if not dim:
                    time.sleep(0.05)
                    continue
                query = rng.normal(size=(1, dim)).astype(np.float32)
                query /= np.linalg.norm(query)
                catalog = store.catalog
                # One snapshot: the generation's FAISS file must hold exactly its catalog's ids.
                with catalog.snapshot():
                    gen = catalog.generation
                    if gen:
                        ids = {r[0] for r in catalog.db.execute("SELECT id FROM images")}
                        published = ann.read(store.faiss_path("images", gen), mmap=True)
                        _, found = ann.search(published, query, 10)
                        if published.ntotal != len(ids) or not {int(i) for i in found[0] if i >= 0} <= ids:
                            inconsistent += 1
                # And the public search path, which takes its own snapshot: no error, and as many
                # hits as the index holds up to k (ids it could not map to rows would be dropped).
                hits = search_vectors(store, query, 10)[0]
                if gen and len(hits) != min(10, len(ids)) and catalog.generation == gen:
                    inconsistent += 1
                generations.add(gen)
                searches += 2
            finally:
                store.close()
        except Exception as exc:  # every failure is a finding, reported, never hidden
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
    Path(report).write_text(json.dumps(
        {"searches": searches, "errors": errors, "inconsistent": inconsistent, "generations": len(generations)}
    ))
    return 0


# -- the folder being indexed ---------------------------------------------------------------------------
def real_photos() -> list[Path]:
    """Real photos shipped by installed packages (scikit-image's public-domain samples)."""
    import skimage

    data = Path(skimage.__file__).parent / "data"
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png",
             "hubble_deep_field.jpg", "ihc.png", "page.png", "text.png", "moon.png", "horse.png"]
    return [data / n for n in names if (data / n).exists()]


def generated(path: Path, seed: int, size=(48, 36)) -> Path:
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 256, (2, 2, 3)).astype(np.float32)
    ys, xs = np.linspace(0, 1, size[1])[:, None, None], np.linspace(0, 1, size[0])[None, :, None]
    top = corners[0, 0] * (1 - xs) + corners[0, 1] * xs
    bottom = corners[1, 0] * (1 - xs) + corners[1, 1] * xs
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((top * (1 - ys) + bottom * ys).astype(np.uint8)).save(path, format=FORMATS[path.suffix])
    return path


class Folder:
    """A folder of images that changes a little before each kill point (seeded)."""

    def __init__(self, root: Path, rng: random.Random, start: int, photos: bool = True):
        self.root, self.rng, self.seed = root, rng, 10_000
        if photos:
            (root / "photos").mkdir(parents=True, exist_ok=True)
            for i, photo in enumerate(real_photos()):
                img = Image.open(photo).convert("RGB")
                img.thumbnail((320, 320))
                img.save(root / f"photos/p{i:02d}.jpg", quality=90)
        for _ in range(start):
            self.add()

    def images(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix in FORMATS)

    def add(self) -> None:
        self.seed += 1
        suffix = self.rng.choice(list(FORMATS))
        generated(self.root / f"d{self.rng.randrange(4)}" / f"g{self.seed}{suffix}", self.seed)

    def mutate(self) -> None:
        for _ in range(self.rng.randint(1, 4)):
            self.add()
        files = self.images()
        for action in self.rng.sample(["remove", "rename", "rewrite", "touch", "copy"], 3):
            if len(files) < 8:
                break
            path = self.rng.choice(files)
            if not path.exists():
                continue
            if action == "remove":
                path.unlink()
            elif action == "rename":
                path.rename(path.with_name("r" + path.name))
            elif action == "rewrite":
                self.seed += 1
                generated(path, self.seed)
            elif action == "touch":
                os.utime(path)
            elif action == "copy":
                shutil.copyfile(path, path.with_name("c" + path.name))

    def expected(self) -> dict[str, tuple[int, str]]:
        from retrieval.media.files import content_hash

        return {str(p): (p.stat().st_size, content_hash(p.read_bytes())) for p in self.images()}


# -- invariants ------------------------------------------------------------------------------------------------
def catalog_state(index: Path) -> dict[str, tuple[int, str]]:
    with sqlite3.connect(f"file:{index / 'catalog.db'}?mode=ro", uri=True) as db:
        return {p: (s, h) for p, s, h in db.execute("SELECT path, size, hash FROM images")}


def check_invariants(index: Path, aligner_dim: int | None, allowed: list[dict]) -> list[str]:
    """Violations of the invariants for the index at `index`; `allowed` lists the catalog states it may be in."""
    from retrieval.search.query import search_vectors
    from retrieval.storage import health
    from retrieval.storage.store import IndexStore

    if not (index / "catalog.db").exists():
        return []
    out = []
    report = health.check(index)
    out += [f"check: {p}" for p in report.problems]
    with sqlite3.connect(f"file:{index / 'catalog.db'}?mode=ro", uri=True) as db:
        if db.execute("SELECT count(*) FROM images WHERE hash NOT IN (SELECT hash FROM vectors)").fetchone()[0]:
            out.append("an image has no stored vector")
        if db.execute("SELECT count(*) - count(DISTINCT hash) FROM vectors").fetchone()[0]:
            out.append("a content has more than one vector")
        gen = db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
    state = catalog_state(index)
    if gen and int(gen[0]) > 0 and allowed and state not in allowed:
        expected = allowed[-1]
        missing = sorted(set(expected) - set(state))[:3]
        extra = sorted(set(state) - set(expected))[:3]
        out.append(f"catalog differs from the folder: missing {missing}, extra {extra}")
    if gen and int(gen[0]) > 0 and aligner_dim:
        store = IndexStore.open(index)
        try:
            rng = np.random.default_rng(0)
            queries = rng.normal(size=(3, aligner_dim)).astype(np.float32)
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
            ids = {r[0] for r in store.catalog.db.execute("SELECT id FROM images")}
            for hits in search_vectors(store, queries, 10):
                if not {h.id for h in hits} <= ids:
                    out.append("a search returned an id that is not a catalog row")
        finally:
            store.close()
    return out


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(pid)
        except OSError:
            continue
    return out


# -- one kill point ----------------------------------------------------------------------------------------------
def run_child(index: Path, folder: Path, aligner: str, workers: int, captions: Path | None,
              kill: tuple[str, int, float] | None, timeout: float = 600) -> dict:
    """Run an index child; with `kill` = (phase, nth, delay) SIGKILL it `delay` s after its nth mark of `phase`."""
    options = {"index": str(index), "folder": str(folder), "aligner": aligner, "workers": workers,
               "captions": str(captions) if captions else None}
    ctx = context()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_forked_index, args=(send, options))
    proc.start()
    send.close()
    seen: Counter = Counter()
    result = {"killed_in": None, "workers_left": [], "error": None}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not receive.poll(max(0.0, deadline - time.monotonic())):
            result["error"] = f"no progress within {timeout}s"
            break
        try:
            phase = receive.recv()
        except EOFError:
            break
        if phase.startswith("error "):
            result["error"] = phase[6:]
            continue
        seen[phase] += 1
        if kill and phase == kill[0] and seen[phase] >= kill[1]:
            time.sleep(kill[2])
            workers = live_children(proc.pid)
            proc.kill()  # SIGKILL
            proc.join()
            result["killed_in"] = phase
            end = time.monotonic() + 10
            while alive(workers) and time.monotonic() < end:
                time.sleep(0.05)
            result["workers_left"] = alive(workers)
            break
    if proc.is_alive() and result["error"]:
        proc.kill()
    proc.join()
    receive.close()
    result["rc"] = proc.exitcode if not result["killed_in"] else -signal.SIGKILL
    result["phases"] = dict(seen)
    return result


def kill_loop(work: Path, kills: int, seed: int, default_every: int, readers: int, log=harness.note) -> dict:
    rng = random.Random(seed)
    setups = {"color": (work / "color-folder", work / "color-index")}
    folders = {"color": Folder(setups["color"][0], random.Random(seed), start=24)}
    dims = {"color": 48}
    if default_every:
        setups["default"] = (work / "default-folder", work / "default-index")
        folders["default"] = Folder(setups["default"][0], random.Random(seed + 1), start=6, photos=False)
    stop = work / "stop-readers"
    reader_procs = [
        context().Process(target=child_reader, args=(str(setups["color"][1]), str(stop), str(work / f"reader-{i}.json")))
        for i in range(readers)
    ]
    for proc in reader_procs:
        proc.start()
    figures = {"kill_points": 0, "killed_by_phase": Counter(), "finished_before_kill": 0, "violations": [],
               "completions": 0, "default_aligner_kill_points": 0, "workers_outlived_parent": 0}
    states: dict[str, list] = defaultdict(list)
    started = time.monotonic()
    try:
        for n in range(kills):
            which = "default" if default_every and n % default_every == default_every - 1 else "color"
            folder_path, index = setups[which]
            folder = folders[which]
            folder.mutate()
            captions = None
            phase = PHASES[n % len(PHASES)]
            if phase == "captions" or rng.random() < 0.15:
                captions = work / f"captions-{n}.txt"
                captions.write_text("\n".join(f"caption {rng.randrange(50)} of run {n}" for _ in range(rng.randint(3, 12))))
            kill = (phase, rng.randint(1, 3) if phase in ("walk", "encode", "commit") else 1, rng.uniform(0, 0.05))
            workers = rng.choice([0, 1, 2])
            before = states[which][-1:] or []
            killed = run_child(index, folder_path, which, workers, captions, kill)
            figures["kill_points"] += 1
            figures["default_aligner_kill_points"] += which == "default"
            if killed["killed_in"]:
                figures["killed_by_phase"][killed["killed_in"]] += 1
            else:
                figures["finished_before_kill"] += 1
                if killed["rc"] != 0:
                    figures["violations"].append(f"kill point {n}: run failed: {killed.get('error')}")
            if killed["workers_left"]:
                figures["workers_outlived_parent"] += len(killed["workers_left"])
                figures["violations"].append(f"kill point {n}: workers {killed['workers_left']} outlived the killed run")
            now = folder.expected()
            for v in check_invariants(index, dims.get(which), before + [now]):
                figures["violations"].append(f"kill point {n} ({which}, after kill in {phase}): {v}")
            done = run_child(index, folder_path, which, rng.choice([0, 1, 2]), None, None)
            figures["completions"] += done["rc"] == 0
            if done["rc"] != 0:
                figures["violations"].append(f"kill point {n}: completion failed: {done.get('error')}")
            if which == "default" and "default" not in dims:
                dims["default"] = aligner_for("default").dim
            for v in check_invariants(index, dims.get(which), [now]):
                figures["violations"].append(f"kill point {n} ({which}, after completion): {v}")
            states[which] = [now]
            if (n + 1) % 10 == 0 or n + 1 == kills:
                log(f"kill points {n + 1}/{kills}, violations {len(figures['violations'])}, "
                    f"{time.monotonic() - started:.0f}s, load {harness.load():.1f}")
    finally:
        stop.touch()
        for proc in reader_procs:
            proc.join(120)
    reports = [json.loads((work / f"reader-{i}.json").read_text()) for i in range(readers)]
    figures["readers"] = {
        "processes": readers,
        "searches": sum(r["searches"] for r in reports),
        "errors": sum(len(r["errors"]) for r in reports),
        "inconsistent_answers": sum(r["inconsistent"] for r in reports),
        "generations_seen": max([r["generations"] for r in reports], default=0),
        "first_errors": [e for r in reports for e in r["errors"]][:5],
    }
    if figures["readers"]["errors"] or figures["readers"]["inconsistent_answers"]:
        figures["violations"].append(f"readers: {figures['readers']}")
    figures["killed_by_phase"] = dict(figures["killed_by_phase"])
    figures["seconds"] = round(time.monotonic() - started, 1)
    return figures


# -- bad inputs ------------------------------------------------------------------------------------------------
def sources(work: Path) -> dict[str, bytes]:
    """Valid files of each format, from real photos (and one generated picture per format)."""
    out = {}
    photos = real_photos()
    for i, (suffix, fmt) in enumerate(FORMATS.items()):
        img = Image.open(photos[i % len(photos)]).convert("RGB")
        img.thumbnail((200, 200))
        path = work / f"source{suffix}"
        img.save(path, format=fmt)
        out[suffix] = path.read_bytes()
    return out


def _false_dimensions(data: bytes, suffix: str, rng: random.Random) -> bytes:
    """Claim a huge size in the header (a decompression bomb), or a wrong one."""
    import struct
    import zlib

    big = rng.choice([60_000, 30_000, 12_000, 1])
    b = bytearray(data)
    if suffix == ".png":
        b[16:24] = struct.pack(">II", big, big)
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    elif suffix == ".gif":
        b[6:10] = struct.pack("<HH", min(big, 65535), min(big, 65535))
    elif suffix == ".bmp":
        b[18:26] = struct.pack("<ii", big, big)
    elif suffix == ".jpg":
        at = b.find(b"\xff\xc0")
        if at < 0:
            at = b.find(b"\xff\xc2")
        if at >= 0:
            b[at + 5 : at + 9] = struct.pack(">HH", min(big, 65535), min(big, 65535))
    elif suffix == ".webp":
        at = b.find(b"VP8 ")
        if at >= 0:
            b[at + 14 : at + 18] = struct.pack("<HH", min(big, 16383), min(big, 16383))
    else:  # TIFF: ImageWidth / ImageLength tags in the first IFD
        little = b[:2] == b"II"
        fmt = "<" if little else ">"
        (ifd,) = struct.unpack(fmt + "I", b[4:8])
        (count,) = struct.unpack(fmt + "H", b[ifd : ifd + 2])
        for k in range(count):
            entry = ifd + 2 + 12 * k
            tag, kind = struct.unpack(fmt + "HH", b[entry : entry + 4])
            if tag in (256, 257):
                value = struct.pack(fmt + ("H" if kind == 3 else "I"), min(big, 65535))
                b[entry + 8 : entry + 8 + len(value)] = value
    return bytes(b)


MUTANT_KINDS = ["truncated", "bit_flips", "zeroed_header", "false_dimensions", "wrong_extension", "zero_bytes",
                "directory", "symlink_loop", "dangling_link", "fifo", "socket", "unreadable", "non_utf8_name",
                "newline_name", "valid"]


def make_mutants(folder: Path, n: int, seed: int, srcs: dict[str, bytes]) -> dict[str, str]:
    """`n` bad inputs in `folder`; returns {path as bytes-escaped str: kind} for every file made."""
    rng = random.Random(seed)
    kinds: dict[str, str] = {}
    folder.mkdir(parents=True, exist_ok=True)
    sockets = []
    for i in range(n):
        kind = MUTANT_KINDS[i % len(MUTANT_KINDS)]
        suffix = rng.choice(list(FORMATS))
        data = srcs[suffix]
        path = folder / f"{i:05d}-{kind}{suffix}"
        if kind == "truncated":
            path.write_bytes(data[: rng.randrange(1, len(data))])
        elif kind == "bit_flips":
            b = bytearray(data)
            for _ in range(rng.randint(1, 40)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(b))
        elif kind == "zeroed_header":
            path.write_bytes(b"\0" * rng.randint(4, 64) + data[64:])
        elif kind == "false_dimensions":
            path.write_bytes(_false_dimensions(data, suffix, rng))
        elif kind == "wrong_extension":
            other = rng.choice([s for s in FORMATS if s != suffix])
            path.write_bytes(srcs[other] if rng.random() < 0.7 else b"plain text, not an image\n" * 20)
        elif kind == "zero_bytes":
            path.write_bytes(b"")
        elif kind == "directory":
            path.mkdir()
            (path / f"inside{suffix}").write_bytes(data)
            kinds[str(path / f"inside{suffix}")] = "valid_in_directory"
            continue
        elif kind == "symlink_loop":
            other = folder / f"{i:05d}-loop-b{suffix}"
            os.symlink(other.name, path)
            os.symlink(path.name, other)
            kinds[str(other)] = kind
        elif kind == "dangling_link":
            os.symlink(f"nowhere-{i}{suffix}", path)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "socket":
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(path))
            sockets.append(sock)
        elif kind == "unreadable":
            path.write_bytes(data)
            path.chmod(0)
        elif kind == "non_utf8_name":
            raw = os.fsencode(folder) + b"/" + f"{i:05d}-".encode() + b"\xff\xfe-caf\xe9" + suffix.encode()
            with open(raw, "wb") as fh:
                fh.write(data)
            path = Path(os.fsdecode(raw))
        elif kind == "newline_name":
            path = folder / f"{i:05d}-new\nline{suffix}"
            path.write_bytes(data)
        else:
            path.write_bytes(data)
        kinds[str(path)] = kind
    for sock in sockets:
        sock.close()  # the socket file stays; nothing listens
    return kinds


def child_mutants(folder: str, index: str, kinds_file: str, report: str, decode_seconds: float) -> int:
    """Load each mutant alone (timed), then index the folder; as `nobody` when started as root."""
    from PIL import Image as PILImage

    # Imported while the files are readable.
    from retrieval.ingest import pipeline as indexer
    from retrieval.media.decode import load
    from retrieval.media.files import walk
    from retrieval.storage import integrity, readonly  # noqa: F401
    from retrieval.storage.store import IndexStore

    PILImage.init()  # every decoder plugin, now
    kinds = json.loads(Path(kinds_file).read_text())
    aligner = plumbing_aligner()  # imports retrieval.aligners: before `nobody`, like the imports above
    if os.geteuid() == 0:
        # chmod 000 does not stop root; `nobody` it stops. Python itself, and this checkout, may
        # live where `nobody` cannot read (a root-only pyenv, a private temporary folder), hence
        # every import before this point and no worker processes below.
        os.setgid(65534)
        os.setuid(65534)
    per_file, slowest = {}, 0.0
    for stat in walk([folder]):
        started = time.monotonic()
        try:
            item = load(stat.path, aligner.transform, time_limit_s=decode_seconds)
            outcome = "indexed" if item.pixels is not None else "skipped"
            reason = item.error
        except Exception as exc:  # a crash is a violation, reported as such
            outcome, reason = "crash", f"{type(exc).__name__}: {exc}"
        took = time.monotonic() - started
        slowest = max(slowest, took)
        per_file[stat.path] = {"outcome": outcome, "reason": reason, "seconds": round(took, 4)}
    store = IndexStore.open(index, create=True)
    try:
        summary = indexer.run(store, aligner, [folder],
                              settings=indexer.IndexSettings(workers=0, decode_seconds=decode_seconds))
        indexed = set(store.catalog.files())
    finally:
        store.close()
    skipped = {s["path"]: s["reason"] for s in summary.skipped}
    Path(report).write_text(json.dumps({
        "kinds": kinds, "per_file": per_file, "indexed": sorted(indexed), "skipped": skipped,
        "slowest_load_s": slowest, "index_seconds": summary.seconds,
    }))
    return 0


def bad_inputs(work: Path, n: int, seed: int, decode_seconds: float) -> dict:
    if os.geteuid() != 0:
        work.mkdir(parents=True, exist_ok=True)
        return _bad_inputs(work, n, seed, decode_seconds)
    # As root the loads run as `nobody`, who must reach the folder: every parent directory
    # must be open to it, which a private temporary folder (pytest's) is not.
    work = Path(tempfile.mkdtemp(prefix="torture-bad-", dir="/tmp"))
    os.chmod(work, 0o755)
    try:
        return _bad_inputs(work, n, seed, decode_seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bad_inputs(work: Path, n: int, seed: int, decode_seconds: float) -> dict:
    folder = work / "mutants"
    kinds = make_mutants(folder, n, seed, sources(work))
    index = work / "mutants-index"
    kinds_file, report_file = work / "kinds.json", work / "mutants-report.json"
    kinds_file.write_text(json.dumps(kinds))
    if os.geteuid() == 0:  # let `nobody` write its index and report here
        for path in (work, folder, *folder.iterdir()):
            if not path.is_symlink():
                os.chown(path, 65534, 65534)
    cmd = [sys.executable, "-m", "benchmarks.torture", "child-mutants", "--folder", str(folder), "--index", str(index),
           "--kinds", str(kinds_file), "--report", str(report_file), "--decode-seconds", str(decode_seconds)]
    # The child imports this module by name wherever it was started from: the checkout goes first on its path.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    figures = {"mutants": len(kinds), "violations": [], "seconds": round(time.monotonic() - started, 1),
               "unreadable_tested_as": "nobody (dropped from root)" if os.geteuid() == 0 else "this user"}
    if proc.returncode != 0 or "Traceback" in proc.stderr:
        figures["violations"].append(f"mutant run failed: {proc.stderr[-1500:]}")
        return figures
    report = json.loads(report_file.read_text())
    per_file, indexed, skipped = report["per_file"], set(report["indexed"]), report["skipped"]
    by_kind: dict[str, Counter] = defaultdict(Counter)
    printable = {os.fsencode(p).decode("utf-8", "backslashreplace"): p for p in kinds}
    for path, kind in kinds.items():
        loaded = per_file.get(path)
        if loaded is None:
            by_kind[kind]["not_walked"] += 1
            if kind not in ("non_utf8_name",):
                figures["violations"].append(f"{kind}: {path!r} was never seen by the walk")
            continue
        if loaded["outcome"] == "crash":
            figures["violations"].append(f"{kind}: {path!r} crashed the loader: {loaded['reason']}")
        # The limit's alarm is raised between the decoder's slices: one slice of a huge image
        # took up to 1.7 s on a 2-core machine at load 20, hence the margin.
        if loaded["seconds"] > decode_seconds * 1.25 + 1.0:
            figures["violations"].append(f"{kind}: {path!r} took {loaded['seconds']}s, over its limit")
        in_catalog = path in indexed
        reason = skipped.get(path) or skipped.get(os.fsencode(path).decode("utf-8", "backslashreplace"))
        # Counted by how the index run ended it (a name that is not UTF-8 loads alone, but the
        # catalog cannot store it, so the run skips it with that reason).
        by_kind[kind]["indexed" if in_catalog else "skipped" if reason else "lost"] += 1
        if in_catalog == bool(reason):
            figures["violations"].append(f"{kind}: {path!r} is {'both indexed and skipped' if in_catalog else 'neither indexed nor skipped'}")
    del printable
    figures["by_kind"] = {k: dict(v) for k, v in sorted(by_kind.items())}
    figures["reasons"] = dict(Counter(r.split(":")[0].split(" (")[0] for r in skipped.values()).most_common())
    figures["slowest_load_s"] = round(report["slowest_load_s"], 3)
    figures["decode_limit_s"] = decode_seconds
    figures["index_seconds"] = round(report["index_seconds"], 1)
    return figures


# -- main ---------------------------------------------------------------------------------------------------------
@click.group(invoke_without_command=True, help=__doc__, context_settings={"max_content_width": 100})
@click.option("--kills", type=int, default=200, show_default=True, help="Seeded kill points.")
@click.option("--mutants", type=int, default=1000, show_default=True, help="Bad inputs made and indexed.")
@click.option("--seed", type=int, default=11, show_default=True)
@click.option("--readers", type=int, default=2, show_default=True, help="Processes searching during the kill loop.")
@click.option("--default-every", type=int, default=20, show_default=True,
              help="Every Nth kill point uses the real default aligner (0: never).")
@click.option("--decode-seconds", type=float, default=10.0, show_default=True, help="Decode time limit per bad input.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to work in (default: a temporary one, removed afterwards).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures as JSON here.")
@click.pass_context
def main(ctx: click.Context, kills: int, mutants: int, seed: int, readers: int, default_every: int,
         decode_seconds: float, work: Path | None, out: Path | None) -> None:
    if ctx.invoked_subcommand is None:
        ctx.exit(supervise(kills, mutants, seed, readers, default_every, decode_seconds, work, out))


@main.command("child-mutants", hidden=True)
@click.option("--folder", required=True)
@click.option("--index", required=True)
@click.option("--kinds", "kinds_file", required=True)
@click.option("--report", required=True)
@click.option("--decode-seconds", type=float, default=10.0)
def child_mutants_command(folder: str, index: str, kinds_file: str, report: str, decode_seconds: float) -> None:
    """The bad-input run, in a fresh interpreter (it may drop root to `nobody`)."""
    child_mutants(folder, index, kinds_file, report, decode_seconds)


def supervise(kills: int, mutants: int, seed: int, readers: int, default_every: int, decode_seconds: float,
              work_dir: Path | None, out: Path | None) -> int:
    work = Path(work_dir or tempfile.mkdtemp(prefix="torture-"))
    work.mkdir(parents=True, exist_ok=True)
    figures = {"date": time.strftime("%Y-%m-%d %H:%M"), "seed": seed, "cpus": harness.cores(),
               "load_average_at_start": harness.load(), "host": harness.machine()}
    try:
        if mutants:
            figures["bad_inputs"] = bad_inputs(work / "bad", mutants, seed, decode_seconds)
            print(json.dumps({"bad_inputs": {k: v for k, v in figures["bad_inputs"].items() if k != "violations"}}, indent=1))
        if kills:
            figures["kill_loop"] = kill_loop(work / "kills", kills, seed, default_every, readers)
        figures["load_average_at_end"] = harness.load()
    finally:
        if not work_dir:
            shutil.rmtree(work, ignore_errors=True)
    violations = figures.get("bad_inputs", {}).get("violations", []) + figures.get("kill_loop", {}).get("violations", [])
    figures["violations"] = len(violations)
    if out:
        out.write_text(json.dumps(figures, indent=2, default=str))
    print(json.dumps({k: v for k, v in figures.items() if k != "bad_inputs"}, indent=1, default=str))
    for line in violations[:30]:
        print("VIOLATION", line)
    print(f"{figures.get('kill_loop', {}).get('kill_points', 0)} kill points, "
          f"{figures.get('bad_inputs', {}).get('mutants', 0)} bad inputs, {len(violations)} violations")
    return 1 if violations else 0


if __name__ == "__main__":
    main()
