"""Search filters: taken date, folder, camera, place and size, AND-combined.

A filter is SQL over the catalog's ``images`` rows. The results of a filtered search are
exactly the best k among the images that pass (not the best k overall with the failures
dropped, which returns too few). How they are found depends on how many pass, as vector
databases do it (thresholds measured by scripts/bench_filters.py, see docs/photo-library.md).

The filter is evaluated on the generation's columns kept in memory (retrieval/search/filter_columns.py):
a boolean mask over the ids in a few milliseconds, which counts exactly how many pass. Then:

- few (at most ``Plan.exact_max``, by index type): their vectors are read from the index's
  own flat codes (the catalog's for 8-bit codes) and scored exactly;
- more: the FAISS index is searched restricted to the mask (an ``IDSelectorBitmap`` made from
  it, no id list); an IVF index probes more lists in proportion to 1/share.

Where the columns cannot answer (a catalog holding dates not in canonical form, or the
columns turned off), the filter runs in SQL, chosen the same way on an estimated share:

- few (at most ``Plan.exact_max``, by index type): their vectors are read from the catalog and scored
  exactly, whatever the index type;
- more (at most ``Plan.restrict_max``): the FAISS index is searched restricted to their ids
  (an ``IDSelector``); an IVF index probes more lists in proportion;
- most: the index returns more candidates than asked for, enough for k of them to pass
  on the estimated share, and the candidates are checked in SQL; too few pass, fetch more.
  This never lists the passing ids, which costs more than the search when half a million pass.

    >>> Filters.parse(after="2023-06-01", before="2023-09-01").after
    '2023-06-01T00:00:00'
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path

import numpy as np

from retrieval.ann import index as faiss_index
from retrieval.errors import RetrievalError
from retrieval.search import filter_columns
from retrieval.storage.catalog import Catalog

log = logging.getLogger(__name__)

EARTH_RADIUS_KM = 6371.0088
_KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180


class FilterError(RetrievalError):
    """A filter value that cannot be understood."""


@dataclass(frozen=True)
class Filters:
    """What an image must satisfy to be returned; empty fields do not filter.

    Dates are the taken date (EXIF, else the file's modification time) in the camera's
    wall-clock time: ``after`` includes its moment, ``before`` excludes it, so
    ``after=2023-06-01, before=2023-09-01`` is June, July and August.
    """

    after: str | None = None
    before: str | None = None
    folders: tuple[str, ...] = ()
    camera: str | None = None
    #: (latitude, longitude, kilometres)
    near: tuple[float, float, float] | None = None
    min_width: int | None = None
    min_height: int | None = None

    @classmethod
    def parse(
        cls, *, after=None, before=None, folders=(), camera=None, near=None, min_width=None, min_height=None
    ) -> Filters:
        """Filters from user input (strings from a command line or a URL, or typed values).

        Raises FilterError with one line naming the bad value.
        """
        if isinstance(folders, str | os.PathLike):
            folders = [folders]
        out = cls(
            after=parse_when(after, "--after"),
            before=parse_when(before, "--before"),
            folders=tuple(str(Path(f).expanduser().resolve()) for f in folders or () if str(f)),
            camera=(str(camera).strip() or None) if camera is not None else None,
            near=parse_near(near),
            min_width=_positive(min_width, "--min-width"),
            min_height=_positive(min_height, "--min-height"),
        )
        if out.after and out.before and out.after >= out.before:
            raise FilterError(f"--after {after} is not earlier than --before {before}: no date can pass both")
        return out

    @property
    def active(self) -> bool:
        return any(v not in (None, ()) for v in asdict(self).values())

    def describe(self) -> dict:
        """The filters in effect, for echoing a query back (JSON-ready)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v not in (None, ())}

    def clauses(self, catalog: Catalog) -> list[Clause]:
        """One SQL condition over ``images`` per filter, in a fixed order."""
        needs_meta = [name for name, on in (("--after", self.after), ("--before", self.before),
                                            ("--camera", self.camera), ("--near", self.near)) if on]
        if needs_meta and not catalog.has_photo_meta:
            raise FilterError(
                f"{needs_meta[0]} needs photo dates, cameras and places, which this index does not have yet: "
                f"run `retrieval index FOLDER --index {catalog.path.parent}` once to read them (nothing is re-encoded)"
            )
        out = []
        if self.after:
            out.append(Clause(f"--after {self.after}", "taken >= ?", [self.after]))
        if self.before:
            out.append(Clause(f"--before {self.before}", "taken < ?", [self.before]))
        if self.folders:
            parts, args = [], []
            for folder in self.folders:
                # A range on the path index: under FOLDER means FOLDER/ <= path < FOLDER0 ('0' follows '/').
                prefix = folder.rstrip(os.sep) + os.sep
                parts.append("(path >= ? AND path < ?)")
                args += [prefix, prefix[:-1] + chr(ord(os.sep) + 1)]
            out.append(Clause("--folder " + " / ".join(self.folders), "(" + " OR ".join(parts) + ")", args))
        if self.camera:
            out.append(_camera_clause(catalog, self.camera))
        if self.near:
            out.append(_near_clause(catalog, *self.near))
        upright = catalog.has_photo_meta
        if self.min_width:
            # Width as the picture is shown: EXIF orientations 5-8 turn it a quarter.
            col = "(CASE WHEN orientation BETWEEN 5 AND 8 THEN height ELSE width END)" if upright else "width"
            out.append(Clause(f"--min-width {self.min_width}", f"{col} >= ?", [self.min_width]))
        if self.min_height:
            col = "(CASE WHEN orientation BETWEEN 5 AND 8 THEN width ELSE height END)" if upright else "height"
            out.append(Clause(f"--min-height {self.min_height}", f"{col} >= ?", [self.min_height]))
        return out


@dataclass
class Clause:
    name: str
    sql: str
    args: list = field(default_factory=list)


def where(clauses: list[Clause]) -> tuple[str, list]:
    return " AND ".join(c.sql for c in clauses) or "1", [a for c in clauses for a in c.args]


# -- parsing --------------------------------------------------------------------------------
_WHEN_FORMATS = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y-%m", "%Y"]


def parse_when(value, flag: str = "date") -> str | None:
    """A date or date-time (``2023``, ``2023-06``, ``2023-06-01``, ``2023-06-01T18:30[:00]``) as
    the catalog's ``YYYY-MM-DDTHH:MM:SS``; a date means its first moment."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=None, microsecond=0).isoformat()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day).isoformat()
    text = str(value).strip()
    for fmt in _WHEN_FORMATS:
        try:
            return datetime.strptime(text, fmt).isoformat()
        except ValueError:
            continue
    raise FilterError(f"{flag} {value!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM (also YYYY or YYYY-MM)")


def parse_near(value) -> tuple[float, float, float] | None:
    """``"LAT,LON,KM"`` (or a 3-sequence) as floats, checked."""
    if value is None or value == "":
        return None
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    try:
        lat, lon, km = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise FilterError(f"--near {value!r}: give LAT,LON,KM in decimal degrees and kilometres, e.g. 48.858,2.294,5") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise FilterError(f"--near {value!r}: latitude must be within -90..90 and longitude within -180..180")
    if not km > 0 or math.isinf(km):
        raise FilterError(f"--near {value!r}: the distance must be a positive number of kilometres")
    return lat, lon, km


def _positive(value, flag: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise FilterError(f"{flag} {value!r} is not a whole number of pixels") from None
    if number < 1:
        raise FilterError(f"{flag} must be at least 1, got {number}")
    return number


# -- cameras --------------------------------------------------------------------------------
def _camera_clause(catalog: Catalog, text: str) -> Clause:
    """Make or model contains `text`: matched against the few distinct cameras (the ``cameras``
    table), then the images looked up through the indexes on make and model. A LIKE over every
    row would scan a million rows (about half a second here) for each query."""
    pattern = "%" + re.sub(r"([\\%_])", r"\\\1", text) + "%"
    makes, models = set(), set()
    for make, model in catalog.db.execute(
        "SELECT make, model FROM cameras WHERE make LIKE ? ESCAPE '\\' OR model LIKE ? ESCAPE '\\'", [pattern, pattern]
    ):
        if make is not None and _contains(make, text):
            makes.add(make)
        if model is not None and _contains(model, text):
            models.add(model)
    parts, args = [], []
    for column, values in (("camera_make", sorted(makes)), ("camera_model", sorted(models))):
        if values:
            parts.append(f"{column} IN ({','.join('?' * len(values))})")
            args += values
    return Clause(f"--camera {text!r}", "(" + (" OR ".join(parts) or "0") + ")", args)


def camera_matches(make: str | None, model: str | None, text: str) -> bool:
    """Whether a camera passes ``--camera text`` (what :func:`_camera_clause` selects)."""
    return (make is not None and _contains(make, text)) or (model is not None and _contains(model, text))


def _contains(value: str, text: str) -> bool:
    # SQLite's LIKE folds ASCII case only; so does this, so both agree on every camera name.
    return _ascii_lower(text) in _ascii_lower(value)


def _ascii_lower(value: str) -> str:
    return value.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


# -- places ---------------------------------------------------------------------------------
def haversine_km(lat1, lon1, lat2, lon2) -> float | None:
    """Great-circle distance in kilometres (None when a position is missing)."""
    if None in (lat1, lon1, lat2, lon2):
        return None
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def near_box(lat: float, lon: float, km: float) -> tuple[tuple[float, float], tuple[str, float, float] | None]:
    """The latitude range and the longitude test ("inside" west..east, or "outside" east..west
    across the antimeridian; None: any longitude) of a box holding every point within `km`."""
    dlat = km / _KM_PER_DEGREE
    cos = math.cos(math.radians(min(90.0, abs(lat) + dlat)))
    dlon = km / (_KM_PER_DEGREE * cos) if cos > 1e-6 else 360.0
    lon_test = None
    if dlon < 180:
        west, east = lon - dlon, lon + dlon
        if west < -180 or east > 180:  # the box crosses the antimeridian
            lon_test = ("outside", west + 360 if west < -180 else west, east - 360 if east > 180 else east)
        else:
            lon_test = ("inside", west, east)
    return (lat - dlat, lat + dlat), lon_test


def _near_clause(catalog: Catalog, lat: float, lon: float, km: float) -> Clause:
    # The box (which an index on lat narrows) comes first; the exact distance, a Python
    # function, runs only on the rows inside it.
    catalog.db.conn.create_function("retrieval_km", 4, haversine_km, deterministic=True)
    (south, north), lon_test = near_box(lat, lon, km)
    sql, args = "lat BETWEEN ? AND ?", [south, north]
    if lon_test is not None:
        kind, west, east = lon_test
        sql += " AND (lon >= ? OR lon <= ?)" if kind == "outside" else " AND lon BETWEEN ? AND ?"
        args += [west, east]
    sql += " AND retrieval_km(lat, lon, ?, ?) <= ?"
    args += [lat, lon, km]
    return Clause(f"--near {lat},{lon},{km}", f"({sql})", args)


# -- execution ------------------------------------------------------------------------------
@dataclass
class Plan:
    """Thresholds between the three ways of running a filtered search (see the module docstring)."""

    #: Passing images scored exactly, at most, when the filter ran on the in-memory columns;
    #: None: by index type. Over the exact index a restricted search is itself exact and costs
    #: a bit test per stored vector: at 100,000 it ties with the exact scan near 1,000 passing
    #: (1.2 against 1.4 ms) and wins above.
    mask_exact_max: int | None = None
    mask_exact_max_flat: int = 1_000
    #: Over an inverted file a restricted search probes nprobe/share lists, so the choice
    #: follows nprobe: the exact scan when its cost, per passing vector (read through the
    #: id-to-list table, scored), is below the restricted search's, per probed list. At
    #: 1,000,000 (IVF4000, lists of 250): 1,000 vectors 1.3 ms, 10,000 25 ms; 400 lists 3.8 ms,
    #: 4,000 16 ms (scripts/bench_filters.py, docs/photo-library.md).
    exact_us_per_vector: float = 2.5
    restrict_us_per_list: float = 4.0
    #: A vector read from the catalog instead (8-bit codes, or an inverted file too large for
    #: the id-to-list table): a B-tree lookup, about 40 microseconds here.
    catalog_us_per_vector: float = 40.0
    #: Over the exact index, from this share on the search over-fetches candidates and keeps
    #: those the mask passes: a plain scan, where a restricted one mispredicts a branch on
    #: every other vector (50% at 100,000: 44 ms restricted, the unfiltered scan 11-23).
    mask_overfetch_share: float = 0.25
    #: Over an inverted file never (above 1): the restricted search probes few lists when many pass.
    mask_overfetch_share_ivf: float = 2.0
    #: Evaluate the filter on the in-memory columns (retrieval/search/filter_columns.py) when they can.
    columns: bool = True
    #: Read missing columns now instead of on a thread of their own while this search runs in SQL.
    wait_for_columns: bool = False
    #: SQL path: passing images scored from the catalog at most; None: by index type (below). Over the
    #: exact index a restricted search costs one scan whatever passes, and scoring from the
    #: catalog (a B-tree lookup per image) ties with it near 100 images at 100,000. Over an
    #: inverted file a selective filter makes the restricted search probe every list: at
    #: 1,000,000, 1,000 passing images cost 45 ms from the catalog against 707 ms restricted,
    #: 5,000 cost 267 against 140 (scripts/bench_filters.py, docs/photo-library.md).
    exact_max: int | None = None
    exact_max_flat: int = 32
    exact_max_ivf: int = 2_000
    #: Listing the passing ids from SQL costs about 1-2 microseconds each; above this many,
    #: over-fetching (which lists none) is cheaper.
    restrict_max: int = 20_000
    #: Ids sampled to estimate the share that passes before choosing.
    sample: int = 1_000
    #: The last search's choice ("exact", "restrict", "overfetch" or "none"), for tests and benchmarks.
    chosen: str = ""
    #: Where the last search evaluated the filter: "columns" or "sql".
    evaluated: str = ""


def search(
    catalog: Catalog, index, queries: np.ndarray, k: int, filters: Filters, *,
    factory: str | None = None, plan: Plan | None = None, rerank: int | None = None, quick=None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the best k passing images per query; ids -1 pad short rows.

    Call inside the catalog snapshot the index belongs to. `rerank`: candidates per result
    that an index of 8-bit codes re-scores (the catalog's ``index_rerank``).
    """
    plan = plan or Plan()
    clauses = filters.clauses(catalog)  # also refuses a filter this catalog cannot answer
    columns = filter_columns.columns_for(catalog, wait=plan.wait_for_columns) if plan.columns else None
    mask = columns.mask(filters) if columns is not None else None
    if mask is not None:
        plan.evaluated = "columns"
        return _search_masked(catalog, index, queries, k, mask, factory, plan, rerank, quick)
    plan.evaluated = "sql"
    sql, args = where(clauses)
    n = index.ntotal
    queries = np.ascontiguousarray(queries, np.float32)
    share = _estimated_share(catalog, sql, args, plan.sample) if n > 4 * plan.sample else None
    ids = None
    if share is None or share * n <= 2 * plan.restrict_max:
        rows = catalog.db.execute(f"SELECT id FROM images WHERE {sql} LIMIT ?", [*args, plan.restrict_max + 1])
        ids = np.fromiter((r[0] for r in rows), np.int64)
        if len(ids) <= plan.restrict_max:
            share = len(ids) / max(n, 1)
        else:
            ids, share = None, max(share or 0.0, plan.restrict_max / max(n, 1))
    lookup = catalog.image_vectors_by_id
    if ids is not None and len(ids) == 0:
        plan.chosen = "none"
        return _empty(len(queries), 0)
    exact_max = plan.exact_max
    if exact_max is None:
        exact_max = plan.exact_max_ivf if faiss_index.inverted(index) else plan.exact_max_flat
    if ids is not None and len(ids) <= exact_max:
        plan.chosen = "exact"
        return _exact(lookup(ids.tolist()), queries, k)
    if ids is not None:
        plan.chosen = "restrict"
        params = faiss_index.subset_params(index, ids, share)
        return faiss_index.search_ranked(
            index, queries, min(k, len(ids)), factory=factory, lookup=lookup, params=params, rerank=rerank
        )
    plan.chosen = "overfetch"
    rows = [_overfetch(catalog, index, q[None], k, sql, args, share, factory, rerank) for q in queries]
    width = max((len(r[1]) for r in rows), default=0)
    scores, out = _empty(len(queries), width)
    for i, (s, found) in enumerate(rows):
        scores[i, : len(s)], out[i, : len(found)] = s, found
    return scores, out


def _search_masked(catalog, index, queries, k, mask, factory, plan, rerank=None, quick=None) -> tuple[np.ndarray, np.ndarray]:
    """The filtered search once the passing ids are a mask indexed by id."""
    queries = np.ascontiguousarray(queries, np.float32)
    count = int(np.count_nonzero(mask))
    if count == 0:
        plan.chosen = "none"
        return _empty(len(queries), 0)
    share = count / max(index.ntotal, 1)
    lists = faiss_index.probed_lists(index, share)
    if plan.mask_exact_max is not None:
        exact = count <= plan.mask_exact_max
    elif lists is None:
        exact = count <= plan.mask_exact_max_flat
    else:
        from_index = faiss_index.holds_vectors(index) and not faiss_index.reranks(factory)
        per_vector = plan.exact_us_per_vector if from_index else plan.catalog_us_per_vector
        exact = count * per_vector <= lists * plan.restrict_us_per_list
    lookup = catalog.image_vectors_by_id
    if exact:
        plan.chosen = "exact"
        ids = np.flatnonzero(mask).astype(np.int64)
        vectors = None if faiss_index.reranks(factory) else faiss_index.stored_vectors(index, ids)
        if vectors is None:  # 8-bit codes: the exact vectors are the catalog's
            return _exact(lookup(ids.tolist()), queries, k)
        return top_k(ids, inner_products(queries, vectors), k)
    if share >= (plan.mask_overfetch_share if lists is None else plan.mask_overfetch_share_ivf):
        plan.chosen = "overfetch"
        return _overfetch_masked(index, queries, k, mask, share, factory, lookup, rerank, quick)
    plan.chosen = "restrict"
    params = faiss_index.mask_params(index, mask, share)
    return faiss_index.search_ranked(
        index, queries, min(k, count), factory=factory, lookup=lookup, params=params, rerank=rerank
    )


def _overfetch_masked(index, queries, k, mask, share, factory, lookup, rerank, quick) -> tuple[np.ndarray, np.ndarray]:
    """The best candidates of the whole index that the mask passes, widened until k pass.

    `quick`: the 8-bit copy a long-lived caller keeps of an exact index (retrieval/ann/quickscan.py),
    searched as an unfiltered query is, so a broad filter costs what no filter costs."""
    n = index.ntotal
    scores, out = _empty(len(queries), min(k, int(np.count_nonzero(mask))))
    for row, query in enumerate(queries):
        fetch = min(n, math.ceil(k / share * 1.5) + 16)
        while True:
            if quick is not None:
                s, ids = quick.search(query[None], fetch)
            else:
                params = faiss_index.subset_params(index, None, min(1.0, k / fetch))  # an IVF probes wider
                s, ids = faiss_index.search_ranked(
                    index, query[None], fetch, factory=factory, lookup=lookup, params=params, rerank=rerank
                )
            s, ids = s[0], ids[0]
            keep = np.flatnonzero((ids >= 0) & mask[np.clip(ids, 0, len(mask) - 1)])[: out.shape[1]]
            if len(keep) >= out.shape[1] or fetch >= n:
                scores[row, : len(keep)], out[row, : len(keep)] = s[keep], ids[keep]
                break
            fetch = min(n, fetch * 4)
    return scores, out


def inner_products(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(queries, vectors) inner products on this thread. numpy's matmul hands a product this
    small to a BLAS thread team, which on a busy machine waits for a core: 33 ms against 1.7
    for 20,000 x 384 at load 12 here."""
    return np.einsum("ij,kj->ik", queries, vectors)


def top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of (queries, len(ids)) `scores`, best first, equal scores by id (as a flat index)."""
    k = min(k, len(ids))
    out_scores, out = _empty(len(scores), k)
    for row, s in enumerate(scores):
        # A partition finds the k-th score; everything tying with it stays in, then a full order.
        part = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
        keep = np.flatnonzero(s >= s[part].min())
        top = keep[np.lexsort((ids[keep], -s[keep]))][:k]
        out_scores[row], out[row] = s[top], ids[top]
    return out_scores, out


def _empty(rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((rows, width), -np.inf, np.float32), np.full((rows, width), -1, np.int64)


def _estimated_share(catalog: Catalog, sql: str, args: list, sample: int) -> float | None:
    """The share of images passing, from a random sample of ids (primary-key lookups, about 1 ms)."""
    top = catalog.db.execute("SELECT max(id) FROM images").fetchone()[0] or 0
    picks = random.Random(top).sample(range(1, top + 1), min(sample, top))
    marks = ",".join("?" * len(picks))
    seen, passed = catalog.db.execute(
        f"SELECT count(*), coalesce(sum(CASE WHEN {sql} THEN 1 ELSE 0 END), 0) FROM images WHERE id IN ({marks})",
        [*args, *picks],
    ).fetchone()
    # Too few live ids in the sample (many deleted): no estimate; the caller counts instead.
    return passed / seen if seen >= sample // 4 else None


def _exact(vectors: dict[int, np.ndarray], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromiter(vectors, np.int64, count=len(vectors))
    order = np.argsort(ids)
    ids = ids[order]
    matrix = np.stack([vectors[int(i)] for i in ids])
    scores_all = inner_products(queries, matrix)
    k = min(k, len(ids))
    scores, out = _empty(len(queries), k)
    for row, s in enumerate(scores_all):
        # Best first; equal scores by id, as a flat index returns them.
        top = np.lexsort((ids, -s))[:k]
        scores[row], out[row] = s[top], ids[top]
    return scores, out


def _overfetch(catalog, index, query, k, sql, args, share, factory, rerank=None) -> tuple[np.ndarray, np.ndarray]:
    """Candidates from the whole index, checked against the filter, widened until k pass."""
    n = index.ntotal
    fetch = min(n, math.ceil(k / max(share, 1e-6) * 1.5) + 16)
    lookup = catalog.image_vectors_by_id
    while True:
        params = faiss_index.subset_params(index, None, min(1.0, k / fetch))
        scores, ids = faiss_index.search_ranked(
            index, query, fetch, factory=factory, lookup=lookup, params=params, rerank=rerank
        )
        scores, ids = scores[0], ids[0]
        found = [int(i) for i in ids if i >= 0]
        passing = _passing(catalog, found, sql, args)
        keep = [j for j, i in enumerate(ids.tolist()) if i in passing][:k]
        if len(keep) >= k or fetch >= n:
            return scores[keep], ids[keep]
        fetch = min(n, fetch * 4)


def _passing(catalog: Catalog, ids: list[int], sql: str, args: list) -> set[int]:
    out: set[int] = set()
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        marks = ",".join("?" * len(part))
        rows = catalog.db.execute(f"SELECT id FROM images WHERE id IN ({marks}) AND {sql}", [*part, *args])
        out.update(r[0] for r in rows)
    return out


# -- saying why nothing passed --------------------------------------------------------------
def why_empty(catalog: Catalog, filters: Filters) -> str:
    """One line naming the filter that excluded every image (or the combination that did)."""
    if catalog.count("images") == 0:
        return "the index holds no images"
    clauses = filters.clauses(catalog)
    for clause in clauses:
        if not catalog.db.execute(f"SELECT EXISTS (SELECT 1 FROM images WHERE {clause.sql})", clause.args).fetchone()[0]:
            return f"no image passes {clause.name}{_hint(catalog, clause)}"
    if len(clauses) > 1:
        return "no image passes " + " and ".join(c.name for c in clauses) + " together (each passes some on its own)"
    return "no image passes the filters"


def _hint(catalog: Catalog, clause: Clause) -> str:
    db = catalog.db
    if clause.name.startswith(("--after", "--before")):
        first, last = db.execute("SELECT min(taken), max(taken) FROM images").fetchone()
        return f" (photos in this index were taken from {first} to {last})" if first else ""
    if clause.name.startswith("--camera"):
        rows = db.execute(
            "SELECT trim(coalesce(make, '') || ' ' || coalesce(model, '')) AS cam FROM cameras "
            "GROUP BY cam ORDER BY sum(images) DESC LIMIT 5"
        ).fetchall()
        return f" (cameras in this index: {', '.join(r[0] for r in rows)})" if rows else " (no image in this index names its camera)"
    if clause.name.startswith("--near"):
        placed = db.execute("SELECT count(*) FROM images WHERE lat IS NOT NULL").fetchone()[0]
        return f" ({placed} images in this index have a GPS position)"
    return ""


def photo_counts(catalog: Catalog) -> dict:
    """How many images have an EXIF date (the rest are dated by file time), a place and a camera."""
    if not catalog.has_photo_meta:
        return {"with_date": None, "with_place": None, "with_camera": None}
    dated, placed, camera = catalog.db.execute(
        "SELECT coalesce(sum(taken_source = 'exif'), 0), count(lat), "
        "coalesce(sum(camera_make IS NOT NULL OR camera_model IS NOT NULL), 0) FROM images"
    ).fetchone()
    return {"with_date": dated, "with_place": placed, "with_camera": camera}
