"""What every benchmark needs besides its own workload: setup, timing, metadata, report, CLI.

- ``machine()`` and ``load()``: what ran the benchmark and how busy it was (the machines these
  run on are shared, so every figure is recorded beside the load average);
- ``measure()`` (a ``Run``): wall time, CPU time and load average before and after a stage;
  ``timed()`` and ``percentiles()`` for repeated calls;
- ``centers()`` and ``clustered()``: synthetic unit vectors grouped like real embeddings (random
  unit vectors have no neighbourhood structure, the worst case for any approximate index);
  the same seed gives the same vectors, so figures from different benchmarks and days compare;
- ``insert_rows()`` and ``fill_catalog()``: a real index folder of those vectors;
  ``dev_captions()``: real text queries (the dev set's captions);
- ``report()``: the JSON file and a markdown table (printed too);
- ``command()``: a benchmark's ``main`` as a click command with ``--out`` and ``--quick``.

Imports of faiss and ``retrieval`` happen inside the functions that need them, so that a
benchmark that needs neither (a load generator, a checksum rate) starts fast, and so that
worker processes spawned by a benchmark re-import little.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import click
import numpy as np
from click.core import ParameterSource

if TYPE_CHECKING:
    from retrieval.storage.store import IndexStore

DIM = 384  # the default aligner's dimension

#: Distributions whose versions are worth recording beside a figure (those installed).
VERSIONS = {"numpy": ("numpy",), "faiss": ("faiss-cpu", "faiss-gpu", "faiss"), "torch": ("torch",),
            "open_clip": ("open_clip_torch",)}

F = TypeVar("F", bound=Callable[..., Any])


# -- the machine ---------------------------------------------------------------------------
def cores() -> int:
    """CPU cores this process may run on (fewer than os.cpu_count() in a container or under taskset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _version(candidates: Sequence[str]) -> str | None:
    for name in candidates:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, OS, Python and library versions, and the time (UTC) of the run.

    Versions come from the installed distributions' metadata, so nothing heavy is imported
    for them; a library that is not installed is left out.
    """
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "arch": platform.machine(),
        "cores": cores(),
        "memory_gb": _memory_gb(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    for key, candidates in VERSIONS.items():
        version = _version(candidates)
        if version is not None:
            info[key] = version
    info["utc"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return info


def summary() -> str:
    """The one-line machine description the reports have always carried: "x86_64, 2 cores"."""
    return f"{platform.machine()}, {cores()} cores"


def load() -> float:
    """The 1-minute load average, rounded to two decimals: how busy the shared machine was."""
    return round(os.getloadavg()[0], 2)


def note(message: str) -> None:
    """Progress on stderr, so that stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


# -- timing --------------------------------------------------------------------------------
def _busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux), None elsewhere."""
    try:
        with open("/proc/stat") as fh:
            ticks = [int(x) for x in fh.readline().split()[1:]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Run:
    """Wall time, CPU time and the load average around a stage: ``with measure() as run: ...``.

    ``cpu_s`` is this process's CPU time; ``children_cpu_s`` that of its finished child
    processes (workers); ``others_cpu_s`` the rest of the machine's busy CPU time over the
    stage, so a reader sees how much other work may have slowed the figure.
    """

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.load_before = self.load_after = 0.0
        self.wall_s = self.cpu_s = self.children_cpu_s = 0.0
        self.others_cpu_s: float | None = None

    def __enter__(self) -> Run:
        self.load_before = load()
        self._busy = _busy_cpu_s()
        self._children = _children_cpu_s()
        self._cpu = time.process_time()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = time.process_time() - self._cpu
        self.children_cpu_s = _children_cpu_s() - self._children
        busy = _busy_cpu_s()
        if busy is not None and self._busy is not None:
            self.others_cpu_s = max(0.0, busy - self._busy - self.cpu_s - self.children_cpu_s)
        self.load_after = load()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"wall_s": round(self.wall_s, 3), "cpu_s": round(self.cpu_s, 3),
                               "children_cpu_s": round(self.children_cpu_s, 3),
                               "load_before": self.load_before, "load_after": self.load_after}
        if self.others_cpu_s is not None:
            out["others_cpu_s"] = round(self.others_cpu_s, 1)
        if self.label:
            out = {"label": self.label, **out}
        return out


def measure(label: str = "") -> Run:
    """A ``Run`` to use as a context manager around the stage to time."""
    return Run(label)


def timed(fn: Callable[[], object], repeat: int = 1, warmup: int = 0) -> list[float]:
    """Seconds taken by each of `repeat` calls of `fn` (after `warmup` untimed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def percentiles(samples: Iterable[float], points: Sequence[int] = (50, 99)) -> dict[str, float]:
    """``{"p50": ..., "p99": ...}`` of `samples`, in their unit (numpy's linear interpolation)."""
    values = np.asarray(list(samples), dtype=np.float64)
    return {f"p{p}": float(np.percentile(values, p)) for p in points}


# -- synthetic vectors and catalogs --------------------------------------------------------
def centers(count: int = 1000, dim: int = DIM, seed: int = 0, normalize: bool = True) -> np.ndarray:
    """Cluster centres for ``clustered``: `count` Gaussian points, made unit length by default."""
    points = np.random.default_rng(seed).normal(0, 1, (count, dim)).astype(np.float32)
    if normalize:
        import faiss

        faiss.normalize_L2(points)
    return points


def clustered(n: int, dim: int, seed: int, centers: np.ndarray) -> np.ndarray:
    """Unit vectors around `centers` (cosine to their centre about 0.8, as photos of one subject)."""
    import faiss

    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, len(centers), n)] + rng.normal(0, 0.75 / np.sqrt(dim), (n, dim)).astype(np.float32)
    faiss.normalize_L2(x)
    return x


def insert_rows(store: IndexStore, vectors: np.ndarray, first: int = 0) -> None:
    """Catalog rows for `vectors`: image i is /photos/i.jpg with id i + 1, in one transaction.

    `first` numbers this batch's first vector, so that a large catalog can be filled in batches.
    """
    from retrieval.storage.catalog import to_blob

    with store.catalog.transaction() as conn:
        for start in range(0, len(vectors), 50_000):
            part = range(start, min(start + 50_000, len(vectors)))
            conn.executemany("INSERT INTO vectors (hash, vector, width, height) VALUES (?, ?, 640, 480)",
                             ((f"h{first + i}", to_blob(vectors[i])) for i in part))
            conn.executemany("INSERT INTO images (id, path, size, mtime, hash, width, height) VALUES (?, ?, 1, 0, ?, 640, 480)",
                             ((first + i + 1, f"/photos/{first + i:07d}.jpg", f"h{first + i}") for i in part))


def fill_catalog(folder: Path, vectors: np.ndarray, index: Any) -> IndexStore:
    """A real index folder of this size: catalog rows + the FAISS file of generation 1."""
    from retrieval import ann
    from retrieval.aligners import load_aligner
    from retrieval.storage.store import IndexStore

    aligner = load_aligner("default")
    store = IndexStore.open(folder, create=True)
    store.bind_model(aligner)
    insert_rows(store, vectors)
    store.catalog.set_meta(generation=1, next_id=len(vectors) + 1, index_factory=ann.factory_for(len(vectors)))
    ann.write(index, store.faiss_path("images", 1))
    return store


def dev_captions() -> list[str]:
    """The dev set's hand-written captions (v2: every first caption, then every second): real text queries."""
    from retrieval.evaluation.devset import SETS

    with open(SETS["v2"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["caption_1"] for r in rows] + [r["caption_2"] for r in rows]


# -- the report ----------------------------------------------------------------------------
def table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of `rows`: the first row's keys are the columns, values printed as given."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def report(name: str, data: Any, rows: Sequence[dict[str, Any]], out: Path | None, title: str = "") -> str:
    """Write `data` as JSON and `rows` as a markdown table beside it; print the table; return it.

    `out` is the JSON file (``bench-out/search.json``: the table goes to ``search.md``) or a
    folder (then ``NAME.json`` and ``NAME.md`` in it); None only prints.
    """
    text = "\n\n".join(part for part in (title, table(rows)) if part) + "\n"
    if out is not None:
        path = out if out.suffix == ".json" else out / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))
        path.with_suffix(".md").write_text(text)
    print(text, end="")
    return text


# -- the command line ----------------------------------------------------------------------
def command(out: str | None = None, quick: dict[str, Any] | None = None) -> Callable[[F], click.Command]:
    """Make a benchmark's ``main`` a click command; its help is the module docstring.

    `out`: the default of an ``--out`` option (the JSON report), passed to main as a Path.
    `quick`: option values that ``--quick`` puts in place of their defaults (a value given on
    the command line still wins): the smallest run that proves the benchmark works.
    """

    def decorate(fn: F) -> click.Command:
        # "\b" keeps click from rewrapping a paragraph: the docstrings hold lists and commands.
        doc = "\n\n".join("\b\n" + part for part in (sys.modules[fn.__module__].__doc__ or "").strip().split("\n\n"))

        @functools.wraps(fn)
        def main(**kwargs: Any) -> Any:
            if kwargs.pop("quick", False) and quick:
                ctx = click.get_current_context()
                for key, value in quick.items():
                    if ctx.get_parameter_source(key) in (ParameterSource.DEFAULT, None):
                        kwargs[key] = value
            return fn(**kwargs)

        wrapped: Callable[..., Any] = main
        if quick:
            wrapped = click.option("--quick", is_flag=True,
                                   help="Smallest run, to check that it works: "
                                   + ", ".join(f"{k}={v}" for k, v in quick.items()) + ".")(wrapped)
        if out is not None:
            wrapped = click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path(out),
                                   show_default=True, help="JSON report (a markdown table is written beside it).")(wrapped)
        return click.command(help=doc, short_help=doc.split("\n")[1] if doc else None,
                             context_settings={"max_content_width": 110})(wrapped)

    return decorate
