"""The filterable columns of one published generation, as numpy arrays, and filters evaluated on them.

A filter evaluated in SQL costs a B-tree walk per passing image when its ids are listed, and
estimating its share first costs a thousand lookups. Kept in
memory instead, the columns a filter reads (taken date, folder, camera, place, size as shown)
take about 40 bytes an image (40 MB at 1,000,000), are read once per generation, and any
filter becomes a boolean mask over the ids in a few milliseconds, whatever passes
(benchmarks/bench_filters.py; docs/photo-library.md#exactly-the-best-k-among-the-passing-images).

Reading them costs a pass over the ``images`` table, seconds at a million images
(docs/photo-library.md#the-figures-behind-the-thresholds), once per generation and process. So a
search never waits for it: the first filtered query of a generation starts the read on a
thread of its own (its own read-only connection, one consistent snapshot) and runs in SQL
as before; the queries after it find the columns ready. The columns are kept by a :class:`ColumnsCache`,
which a long-lived caller's searcher owns (the server, an opened Index: retrieval/search/searcher.py),
so they get fast filters; a search without one reads nothing behind it and runs in SQL.

Arrays are indexed by catalog id (ids are handed out in order and never reused, so the
largest id stays close to the number of images). Rows change only when an index run
publishes a new generation, so the arrays of a generation stay true until the next one:
:meth:`ColumnsCache.columns_for` reads them again when the catalog's generation is another one.

Every condition reproduces the SQL of :meth:`retrieval.search.filters.spec.Filters.clauses` exactly:
string order of canonical dates is time order, a folder is a path prefix, a camera is matched
by :func:`retrieval.search.filters.sql.camera_matches`, a place by the same great-circle distance
(retrieval/search/filters/geo.py).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.search.filters.geo import haversine_km, haversine_km_array, near_box
from retrieval.search.filters.sql import camera_matches
from retrieval.storage.catalog import Catalog

if TYPE_CHECKING:
    from retrieval.search.filters.spec import Filters

log = logging.getLogger(__name__)

_NO_DATE = np.iinfo(np.int64).min
#: What the indexer writes (retrieval/media/exif.py, staging.py): in this form string order is time order.
_CANONICAL_DATE = "[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9]"


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
    #: Whether the taken date came from EXIF (else it is the file's modification time); None as for `taken`.
    exif_dated: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        arrays = [self.present, self.width, self.height, self.folder_of, self.taken, self.camera_of, self.lat, self.lon,
                  self.exif_dated]
        return sum(a.nbytes for a in arrays if a is not None)

    def mask(self, filters: Filters) -> np.ndarray | None:
        """Which ids pass `filters` (a bool array indexed by id); None when these columns cannot say
        (a date not in canonical form, or no photo metadata), and the caller asks SQL."""
        if filters.dated and (self.taken is None or (filters.date_source == "exif" and self.exif_dated is None)):
            return None
        if (filters.camera and self.camera_of is None) or (filters.near and (self.lat is None or self.lon is None)):
            return None
        keep = self.present.copy()
        if filters.after and self.taken is not None:
            keep &= self.taken >= _seconds(filters.after)
        if filters.before and self.taken is not None:
            keep &= (self.taken < _seconds(filters.before)) & (self.taken != _NO_DATE)
        if filters.dated and filters.date_source == "exif" and self.exif_dated is not None:
            keep &= self.exif_dated
        if filters.folders:
            prefixes = tuple(f.rstrip(os.sep) + os.sep for f in filters.folders)
            keep &= _lookup([folder.startswith(prefixes) for folder in self.folders], self.folder_of)
        if filters.camera and self.camera_of is not None:
            keep &= _lookup([camera_matches(make, model, filters.camera) for make, model in self.cameras], self.camera_of)
        if filters.near and self.lat is not None and self.lon is not None:
            keep &= self._near(self.lat, self.lon, *filters.near)
        if filters.min_width:
            keep &= self.width >= filters.min_width
        if filters.min_height:
            keep &= self.height >= filters.min_height
        return keep

    def _near(self, lats: np.ndarray, lons: np.ndarray, lat: float, lon: float, km: float) -> np.ndarray:
        (south, north), lon_test = near_box(lat, lon, km)
        inside = (lats >= south) & (lats <= north)
        if lon_test is not None:
            kind, west, east = lon_test
            inside &= (lons >= west) | (lons <= east) if kind == "outside" else (lons >= west) & (lons <= east)
        ids = np.flatnonzero(inside)
        km_to = haversine_km_array(lats[ids], lons[ids], lat, lon)
        within = km_to <= km
        # numpy's sine may differ from math's in the last bit: at the boundary, ask the SQL function's own.
        for j in np.flatnonzero(np.abs(km_to - km) <= 1e-9 * max(km, 1.0)):
            i = int(ids[j])
            distance = haversine_km(float(lats[i]), float(lons[i]), lat, lon)
            within[j] = distance is not None and distance <= km
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


class ColumnsCache:
    """The columns of each catalog's last-read generation, read on a thread of their own; thread-safe.

    Entries are weakly keyed by catalog: one goes when its catalog does.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: catalog -> Columns of its last-read generation.
        self._cached: weakref.WeakKeyDictionary[Catalog, Columns] = weakref.WeakKeyDictionary()
        #: catalog -> the generation a reading thread is reading for it.
        self._reading: weakref.WeakKeyDictionary[Catalog, int] = weakref.WeakKeyDictionary()

    def columns_for(self, catalog: Catalog, wait: bool = False) -> Columns | None:
        """The columns of the catalog's current generation, or None while they are being read.

        Call inside the catalog's snapshot. With `wait`, a missing read is done now, on this
        thread and in this snapshot (tests, benchmarks); otherwise it starts on a thread of its own.
        """
        generation = catalog.generation
        with self._lock:
            cached = self._cached.get(catalog)
            if cached is not None and cached.generation == generation:
                return cached
            if not wait:
                if self._reading.get(catalog) != generation:
                    self._reading[catalog] = generation
                    threading.Thread(
                        target=self._read_behind,
                        args=(weakref.ref(catalog), catalog.path, generation, catalog.has_photo_meta),
                        name="filter-columns", daemon=True,
                    ).start()
                return None
        started = time.perf_counter()
        columns = read_columns(catalog.db.conn, generation, catalog.has_photo_meta)
        self._keep(catalog, columns, started)
        return columns

    def _read_behind(self, owner: weakref.ref[Catalog], path: Path, generation: int, photo_meta: bool) -> None:
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
            self._keep(catalog, columns, started)

    def _keep(self, catalog: Catalog, columns: Columns, started: float) -> None:
        with self._lock:
            cached = self._cached.get(catalog)
            if cached is None or cached.generation < columns.generation:
                self._cached[catalog] = columns
        log.info(
            "filter columns of generation %d: %d images, %.1f MB, read in %.2f s",
            columns.generation, int(columns.present.sum()), columns.nbytes / 1e6, time.perf_counter() - started,
        )

    def forget(self, catalog: Catalog) -> None:
        with self._lock:
            self._cached.pop(catalog, None)
            self._reading.pop(catalog, None)


def read_columns(conn: sqlite3.Connection, generation: int, meta: bool) -> Columns:
    """The columns from `conn` (a connection to the catalog, inside a read transaction); `meta`:
    whether the catalog has the photo metadata columns (schema 2)."""
    extra = ", orientation, taken, camera_make, camera_model, lat, lon, taken_source" if meta else ""
    rows = conn.execute(f"SELECT id, path, coalesce(width, -1), coalesce(height, -1){extra} FROM images").fetchall()
    top = max((r[0] for r in rows), default=0) + 1
    cols = list(zip(*rows)) if rows else [()] * (11 if meta else 4)
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
        out.exif_dated = _by_id(top, ids, [source == "exif" for source in cols[10]], np.bool_, False)
    out.cameras, out.camera_of = _positions(top, ids, list(zip(cols[6], cols[7])), none=(None, None))
    out.lat = _by_id(top, ids, np.array(cols[8], np.float64), np.float64, np.nan)
    out.lon = _by_id(top, ids, np.array(cols[9], np.float64), np.float64, np.nan)
    return out


def _by_id(top: int, ids: np.ndarray, values: Sequence[Any] | np.ndarray, dtype: Any, fill: Any) -> np.ndarray:
    out = np.full(top, fill, dtype)
    out[ids] = np.asarray(values, dtype) if not isinstance(values, np.ndarray) else values.astype(dtype)
    return out


def _positions(top: int, ids: np.ndarray, values: Sequence[Any], none: Any = None) -> tuple[list[Any], np.ndarray]:
    """The distinct values, and each id's position among them (-1 for `none` and absent ids)."""
    distinct: dict[Any, int] = {}
    positions = np.fromiter((distinct.setdefault(v, len(distinct)) for v in values), np.int32, count=len(values))
    table = list(distinct)
    if none in distinct:
        gone = distinct[none]
        positions = np.where(positions == gone, -1, positions - (positions > gone)).astype(np.int32)
        table.pop(gone)
    # The smallest integers that hold the positions: comparing them reads less memory.
    dtype = np.int8 if len(table) < 127 else np.int16 if len(table) < 32_767 else np.int32
    return table, _by_id(top, ids, positions, dtype, -1)
