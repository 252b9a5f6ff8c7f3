"""The filter value: what an image must satisfy, parsed from user input and turned into SQL conditions.

    >>> Filters.parse(after="2023-06-01", before="2023-09-01").after
    '2023-06-01T00:00:00'
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from retrieval.search.filters.people import parse_people, person_clauses
from retrieval.search.filters.sql import Clause, FilterError, camera_clause, near_clause
from retrieval.storage.catalog import Catalog


@dataclass(frozen=True)
class Filters:
    """What an image must satisfy to be returned; empty fields do not filter.

    Dates are the taken date in the camera's wall-clock time: ``after`` includes its moment,
    ``before`` excludes it, so ``after=2023-06-01, before=2023-09-01`` is June, July and August.
    ``date_source`` says which dates they compare: ``any`` (the default) the EXIF date, else the
    file's modification time, as photo tools date a picture (Immich, PhotoPrism); ``exif`` only
    photos with an EXIF date. A scan or a download has no EXIF date, and its file time says when
    it was copied, not taken: ``exif`` leaves those out.
    """

    after: str | None = None
    before: str | None = None
    folders: tuple[str, ...] = ()
    camera: str | None = None
    #: (latitude, longitude, kilometres)
    near: tuple[float, float, float] | None = None
    min_width: int | None = None
    min_height: int | None = None
    #: Which dates ``after`` and ``before`` compare: "any" or "exif" (DATE_SOURCES).
    date_source: str = "any"
    #: People who must all be in the image, each a name (case-insensitive) or a person id as
    #: given; resolved against the catalog's ``people`` when the clauses are made (people.py).
    people: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls, *, after: Any = None, before: Any = None, folders: str | os.PathLike | Iterable[str | os.PathLike] | None = (),
        camera: Any = None, near: Any = None, min_width: Any = None, min_height: Any = None, date_source: Any = None,
        people: str | int | Iterable[str | int] | None = (),
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
            date_source=_date_source(date_source),
            people=parse_people(people),
        )
        if out.after and out.before and out.after >= out.before:
            raise FilterError(f"--after {after} is not earlier than --before {before}: no date can pass both")
        return out

    @property
    def active(self) -> bool:
        # date_source qualifies the dates: alone it filters nothing.
        return any(v not in (None, ()) for k, v in asdict(self).items() if k != "date_source")

    @property
    def dated(self) -> bool:
        """Whether a date filter is set (so which date each image has matters)."""
        return bool(self.after or self.before)

    def describe(self) -> dict:
        """The filters in effect, for echoing a query back (JSON-ready)."""
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
               if v not in (None, ()) and k != "date_source"}
        if self.dated:
            out["date_source"] = self.date_source
        return out

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
        if self.dated and self.date_source == "exif":
            out.append(Clause("--date-source exif", "taken_source = 'exif'"))
        if self.folders:
            parts, args = [], []
            for folder in self.folders:
                # A range on the path index: under FOLDER means FOLDER/ <= path < FOLDER0 ('0' follows '/').
                prefix = folder.rstrip(os.sep) + os.sep
                parts.append("(path >= ? AND path < ?)")
                args += [prefix, prefix[:-1] + chr(ord(os.sep) + 1)]
            out.append(Clause("--folder " + " / ".join(self.folders), "(" + " OR ".join(parts) + ")", args))
        if self.camera:
            out.append(camera_clause(catalog, self.camera))
        if self.near:
            out.append(near_clause(catalog, *self.near))
        upright = catalog.has_photo_meta
        if self.min_width:
            # Width as the picture is shown: EXIF orientations 5-8 turn it a quarter.
            col = "(CASE WHEN orientation BETWEEN 5 AND 8 THEN height ELSE width END)" if upright else "width"
            out.append(Clause(f"--min-width {self.min_width}", f"{col} >= ?", [self.min_width]))
        if self.min_height:
            col = "(CASE WHEN orientation BETWEEN 5 AND 8 THEN width ELSE height END)" if upright else "height"
            out.append(Clause(f"--min-height {self.min_height}", f"{col} >= ?", [self.min_height]))
        out += person_clauses(catalog, self.people)
        return out


# -- parsing --------------------------------------------------------------------------------
_WHEN_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y-%m", "%Y")


def parse_when(value: Any, flag: str = "date") -> str | None:
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


#: What ``date_source`` may be: "any" (EXIF, else the file's modification time) or "exif" (EXIF only).
DATE_SOURCES = ("any", "exif")


def _date_source(value: Any) -> str:
    if value is None or value == "":
        return "any"
    text = str(value).strip().lower()
    if text not in DATE_SOURCES:
        raise FilterError(f"--date-source {value!r}: use any (EXIF date, else file time) or exif (EXIF dates only)")
    return text


def parse_near(value: Any) -> tuple[float, float, float] | None:
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


def _positive(value: Any, flag: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise FilterError(f"{flag} {value!r} is not a whole number of pixels") from None
    if number < 1:
        raise FilterError(f"{flag} must be at least 1, got {number}")
    return number
