"""Great-circle distance and the latitude/longitude box around a place, for ``--near``.

The distance is written once, over either plain floats (the SQL function ``retrieval_km``)
or numpy arrays (the in-memory columns), so both evaluations of a filter measure alike.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np

EARTH_RADIUS_KM = 6371.0088
_KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180

#: The functions the formula needs, named as numpy names them, for plain floats.
_FLOATS = SimpleNamespace(
    radians=math.radians, sin=math.sin, cos=math.cos, sqrt=math.sqrt, arcsin=math.asin, minimum=min
)


def _haversine(lat1: Any, lon1: Any, lat2: Any, lon2: Any, xp: Any) -> Any:
    p1, p2 = xp.radians(lat1), xp.radians(lat2)
    a = xp.sin((p2 - p1) / 2) ** 2 + xp.cos(p1) * xp.cos(p2) * xp.sin(xp.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * xp.arcsin(xp.minimum(1.0, xp.sqrt(a)))


def haversine_km(lat1: float | None, lon1: float | None, lat2: float | None, lon2: float | None) -> float | None:
    """Great-circle distance in kilometres (None when a position is missing)."""
    if lat1 is None or lon1 is None or lat2 is None or lon2 is None:
        return None
    return float(_haversine(lat1, lon1, lat2, lon2, _FLOATS))


def haversine_km_array(lats: np.ndarray, lons: np.ndarray, lat: float, lon: float) -> np.ndarray:
    """Great-circle distances in kilometres from each (lats, lons) position to (lat, lon)."""
    return np.asarray(_haversine(lats, lons, lat, lon, np), np.float64)


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
