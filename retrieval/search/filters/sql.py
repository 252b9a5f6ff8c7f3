"""Filters as SQL over the catalog's ``images`` rows: the clause type, and the camera and place
conditions, which need more than a comparison."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from retrieval.errors import RetrievalError
from retrieval.search.filters.geo import haversine_km, near_box
from retrieval.storage.catalog import Catalog


class FilterError(RetrievalError):
    """A filter value that cannot be understood."""


@dataclass
class Clause:
    name: str
    sql: str
    args: list[Any] = field(default_factory=list)


def where(clauses: list[Clause]) -> tuple[str, list[Any]]:
    return " AND ".join(c.sql for c in clauses) or "1", [a for c in clauses for a in c.args]


# -- cameras --------------------------------------------------------------------------------
def camera_clause(catalog: Catalog, text: str) -> Clause:
    """Make or model contains `text`: matched against the few distinct cameras (the ``cameras``
    table), then the images looked up through the indexes on make and model. A LIKE over every
    row would scan every row for each query, far slower at a million
    (docs/photo-library.md#the-figures-behind-the-thresholds)."""
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
    """Whether a camera passes ``--camera text`` (what :func:`camera_clause` selects)."""
    return (make is not None and _contains(make, text)) or (model is not None and _contains(model, text))


def _contains(value: str, text: str) -> bool:
    # SQLite's LIKE folds ASCII case only; so does this, so both agree on every camera name.
    return _ascii_lower(text) in _ascii_lower(value)


def _ascii_lower(value: str) -> str:
    return value.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


# -- places ---------------------------------------------------------------------------------
def near_clause(catalog: Catalog, lat: float, lon: float, km: float) -> Clause:
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
