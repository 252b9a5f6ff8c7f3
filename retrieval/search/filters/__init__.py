"""Search filters: taken date, folder, camera, place, size and people, AND-combined.

- :mod:`.spec`: the :class:`Filters` value, parsed from user input, and its SQL conditions;
- :mod:`.geo`: great-circle distance and the box around a place;
- :mod:`.sql`: SQL clauses over the catalog's ``images`` rows (cameras, places);
- :mod:`.people`: the people who must be in the image (``--person``), by name or id;
- :mod:`.columns`: a generation's filterable columns as numpy arrays, a filter as a mask;
- :mod:`.execute`: the filtered search, exactly the best k among the images that pass;
- :mod:`.explain`: why nothing passed, and the photo metadata an index holds.

    >>> Filters.parse(after="2023-06-01", before="2023-09-01").after
    '2023-06-01T00:00:00'
"""

from retrieval.search.filters.execute import FilterResult, FilterTuning, search
from retrieval.search.filters.explain import photo_counts, why_empty
from retrieval.search.filters.geo import EARTH_RADIUS_KM, haversine_km, near_box
from retrieval.search.filters.people import people_in, resolve_people
from retrieval.search.filters.spec import Filters, parse_near, parse_when
from retrieval.search.filters.sql import Clause, FilterError, camera_matches, where

__all__ = [
    "EARTH_RADIUS_KM",
    "Clause",
    "FilterError",
    "FilterResult",
    "FilterTuning",
    "Filters",
    "camera_matches",
    "haversine_km",
    "near_box",
    "parse_near",
    "parse_when",
    "people_in",
    "resolve_people",
    "photo_counts",
    "search",
    "where",
    "why_empty",
]
