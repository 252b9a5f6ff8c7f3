"""The filterable columns of one published generation, as numpy arrays, and filters evaluated on them.

A filter evaluated in SQL costs a B-tree walk per passing image when its ids are listed (about
a second for half a million), and estimating its share first costs a thousand lookups. Kept in
memory instead, the columns a filter reads (taken date, folder, camera, place, size as shown)
take about 40 bytes an image (40 MB at 1,000,000), are read once per generation, and any
filter becomes a boolean mask over the ids in a few milliseconds, whatever passes
(scripts/bench_filters.py; docs/photo-library.md).

Reading them costs a pass over the ``images`` table (about 1.5 s at 1,000,000 on a quiet
2-core machine, several times that on a busy one), once per generation and process. So a
search never waits for it: the first filtered query of a generation starts the read on a
thread of its own (its own read-only connection, one consistent snapshot) and runs in SQL
as before; the queries after it find the columns ready. A one-shot ``retrieval search`` thus
costs what it did, and a long-lived caller (the server, an opened Index) gets fast filters.

Arrays are indexed by catalog id (ids are handed out in order and never reused, so the
largest id stays close to the number of images). Rows change only when an index run
publishes a new generation, so the arrays of a generation stay true until the next one:
:func:`columns_for` reads them again when the catalog's generation is another one.

Every condition reproduces the SQL of :meth:`retrieval.search.filters.Filters.clauses` exactly:
string order of canonical dates is time order, a folder is a path prefix, a camera is matched
by :func:`retrieval.search.filters.camera_matches`, a place by the same great-circle distance.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.storage.catalog import Catalog

log = logging.getLogger(__name__)

#: Off: filters are always evaluated in SQL (the behaviour before; tests and benchmarks compare).
ENABLED = True

_NO_DATE = np.iinfo(np.int64).min
#: What the indexer writes (retrieval/media/exif.py, staging.py): in this form string order is time order.
_CANONICAL_DATE = "[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9]"

_lock = threading.Lock()
#: catalog -> Columns of its last-read generation; an entry goes when its catalog does.
_cached: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: catalog -> the generation a reading thread is reading for it.
_reading: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class Columns:
    """One generation's filterable columns, each an array indexed by image id."""

    generation: int
    present: np.ndarray
    #: Width and height as shown (EXIF orientations 5-8 swap them); -1 when unknown.
    width: np.ndarray
    height: np.ndarray
    #: Distinct parent folders (each ending in a separator), and each image's position among them.
    folders: list[str]
    folder_of: np.ndarray
    #: Taken date in seconds (numpy datetime64[s] as int64), _NO_DATE when there is none;
    #: None when the catalog has no photo metadata or holds a date not in canonical form.
    taken: np.ndarray | None
    #: Distinct (make, model) pairs, and each image's position among them (-1: none).
    cameras: list[tuple[str | None, str | None]]
    camera_of: np.ndarray | None
    #: Degrees; NaN where there is no position.
    lat: np.ndarray | None
    lon: np.ndarray | None

    @property
    def nbytes(self) -> int:
        arrays = [self.present, self.width, self.height, self.folder_of, self.taken, self.camera_of, self.lat, self.lon]
        return sum(a.nbytes for a in arrays if a is not None)

    def mask(self, filters) -> np.ndarray | None:
        """Which ids pass `filters` (a bool array indexed by id); None when these columns cannot say
        (a date not in canonical form), and the caller asks SQL."""
        if (filters.after or filters.before) and self.taken is None:
            return None
        keep = self.present.copy()
        if filters.after:
            keep &= self.taken >= _seconds(filters.after)
        if filters.before:
            keep &= (self.taken < _seconds(filters.before)) & (self.taken != _NO_DATE)
        if filters.folders:
            prefixes = tuple(f.rstrip(os.sep) + os.sep for f in filters.folders)
            keep &= _lookup([folder.startswith(prefixes) for folder in self.folders], self.folder_of)
        if filters.camera:
            from retrieval.search.filters import camera_matches

            keep &= _lookup([camera_matches(make, model, filters.camera) for make, model in self.cameras], self.camera_of)
        if filters.near:
            keep &= self._near(*filters.near)
        if filters.min_width:
            keep &= self.width >= filters.min_width
        if filters.min_height:
            keep &= self.height >= filters.min_height
        return keep

    def _near(self, lat: float, lon: float, km: float) -> np.ndarray:
        from retrieval.search.filters import EARTH_RADIUS_KM, haversine_km, near_box

        (south, north), lon_test = near_box(lat, lon, km)
        inside = (self.lat >= south) & (self.lat <= north)
        if lon_test is not None:
            kind, west, east = lon_test
            inside &= (self.lon >= west) | (self.lon <= east) if kind == "outside" else (self.lon >= west) & (self.lon <= east)
        ids = np.flatnonzero(inside)
        p1, p2 = np.radians(self.lat[ids]), math.radians(lat)
        a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * math.cos(p2) * np.sin(np.radians(lon - self.lon[ids]) / 2) ** 2
        km_to = 2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, np.sqrt(a)))
        within = km_to <= km
        # numpy's sine may differ from math's in the last bit: at the boundary, ask the SQL function's own.
        for j in np.flatnonzero(np.abs(km_to - km) <= 1e-9 * max(km, 1.0)):
            i = int(ids[j])
            within[j] = haversine_km(float(self.lat[i]), float(self.lon[i]), lat, lon) <= km
        out = np.zeros(len(self.present), bool)
        out[ids[within]] = True
        return out


def _lookup(table: list[bool], positions: np.ndarray) -> np.ndarray:
    """Per image, the entry of `table` at its position (-1 positions: False)."""
    hits = np.flatnonzero(np.asarray(table, bool))
    if len(hits) > 8:
        return np.append(np.asarray(table, bool), False)[positions]
    # A few cameras or folders: comparisons of small integers, several times cheaper than a
    # gather (which widens every position to 64 bits first).
    out = np.zeros(len(positions), bool)
    for hit in hits.tolist():
        out |= positions == hit
    return out


def _seconds(when: str) -> int:
    return int(np.datetime64(when, "s").astype(np.int64))


def columns_for(catalog: Catalog, wait: bool = False) -> Columns | None:
    """The columns of the catalog's current generation, or None while they are being read (or off).

    Call inside the catalog's snapshot. With `wait`, a missing read is done now, on this
    thread and in this snapshot (tests, benchmarks); otherwise it starts on a thread of its own.
    """
    if not ENABLED:
        return None
    generation = catalog.generation
    with _lock:
        cached = _cached.get(catalog)
        if cached is not None and cached.generation == generation:
            return cached
        if not wait:
            if _reading.get(catalog) != generation:
                _reading[catalog] = generation
                threading.Thread(
                    target=_read_behind, args=(weakref.ref(catalog), catalog.path, generation, catalog.has_photo_meta),
                    name="filter-columns", daemon=True,
                ).start()
            return None
    started = time.perf_counter()
    columns = read_columns(catalog.db.conn, generation, catalog.has_photo_meta)
    _keep(catalog, columns, started)
    return columns


def _read_behind(owner: weakref.ref, path: Path, generation: int, photo_meta: bool) -> None:
    """Read the columns of `generation` on this thread with a connection of its own."""
    from retrieval.storage.readonly import connect_readonly

    started = time.perf_counter()
    try:
        conn = connect_readonly(path)
        try:
            conn.execute("BEGIN")
            row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            # A newer generation was published meanwhile: the next query asks for that one.
            columns = read_columns(conn, generation, photo_meta) if row and int(row[0]) == generation else None
            conn.execute("COMMIT")
        finally:
            conn.close()
    except Exception as exc:  # the searches go on in SQL; the next generation tries again
        log.warning("could not read the filter columns of %s: %s", path, exc)
        columns = None
    catalog = owner()
    if catalog is not None and columns is not None:
        _keep(catalog, columns, started)


def _keep(catalog: Catalog, columns: Columns, started: float) -> None:
    with _lock:
        cached = _cached.get(catalog)
        if cached is None or cached.generation < columns.generation:
            _cached[catalog] = columns
    log.info(
        "filter columns of generation %d: %d images, %.1f MB, read in %.2f s",
        columns.generation, int(columns.present.sum()), columns.nbytes / 1e6, time.perf_counter() - started,
    )


def forget(catalog: Catalog) -> None:
    with _lock:
        _cached.pop(catalog, None)
        _reading.pop(catalog, None)


def read_columns(conn, generation: int, meta: bool) -> Columns:
    """The columns from `conn` (a connection to the catalog, inside a read transaction); `meta`:
    whether the catalog has the photo metadata columns (schema 2)."""
    extra = ", orientation, taken, camera_make, camera_model, lat, lon" if meta else ""
    rows = conn.execute(f"SELECT id, path, coalesce(width, -1), coalesce(height, -1){extra} FROM images").fetchall()
    top = max((r[0] for r in rows), default=0) + 1
    cols = list(zip(*rows)) if rows else [()] * (10 if meta else 4)
    ids = np.asarray(cols[0], np.int64)
    present = np.zeros(top, bool)
    present[ids] = True
    width, height = _by_id(top, ids, cols[2], np.int32, -1), _by_id(top, ids, cols[3], np.int32, -1)
    folders, folder_of = _positions(top, ids, [p.rpartition(os.sep)[0] + os.sep if os.sep in p else "" for p in cols[1]])
    out = Columns(generation, present, width, height, folders, folder_of, None, [], None, None, None)
    if not meta:
        return out
    turned = np.isin(_by_id(top, ids, [o or 0 for o in cols[4]], np.int8, 0), [5, 6, 7, 8])
    out.width, out.height = np.where(turned, height, width), np.where(turned, width, height)
    odd = conn.execute(f"SELECT count(*) FROM images WHERE taken NOT GLOB '{_CANONICAL_DATE}'").fetchone()[0]
    if odd:
        log.info("%d taken dates are not in canonical form: date filters run in SQL", odd)
    else:
        taken = np.array(cols[5], "datetime64[s]").astype(np.int64)  # None -> NaT, the smallest int64
        out.taken = _by_id(top, ids, taken, np.int64, _NO_DATE)
    out.cameras, out.camera_of = _positions(top, ids, list(zip(cols[6], cols[7])), none=(None, None))
    out.lat = _by_id(top, ids, np.array(cols[8], np.float64), np.float64, np.nan)
    out.lon = _by_id(top, ids, np.array(cols[9], np.float64), np.float64, np.nan)
    return out


def _by_id(top: int, ids: np.ndarray, values, dtype, fill) -> np.ndarray:
    out = np.full(top, fill, dtype)
    out[ids] = np.asarray(values, dtype) if not isinstance(values, np.ndarray) else values.astype(dtype)
    return out


def _positions(top: int, ids: np.ndarray, values: list, none=None) -> tuple[list, np.ndarray]:
    """The distinct values, and each id's position among them (-1 for `none` and absent ids)."""
    distinct: dict = {}
    positions = np.fromiter((distinct.setdefault(v, len(distinct)) for v in values), np.int32, count=len(values))
    table = list(distinct)
    if none in distinct:
        gone = distinct[none]
        positions = np.where(positions == gone, -1, positions - (positions > gone)).astype(np.int32)
        table.pop(gone)
    # The smallest integers that hold the positions: comparing them reads less memory.
    dtype = np.int8 if len(table) < 127 else np.int16 if len(table) < 32_767 else np.int32
    return table, _by_id(top, ids, positions, dtype, -1)
