"""The order of a search's results: best score first (the default), or by the date photos were taken.

Sorted by date, the best match is no longer first, so weak matches are dropped before the
sort: a date-sorted search takes the best ``CANDIDATES`` matches by score (or k, if more),
drops those under the cutoff, sorts the rest by date and returns the first k. The cutoff is
``min_score`` when given, else the model's measured one (:func:`relevance.date_cutoff`; None for a
model not measured, such as open_clip's: then nothing is cut). ``min_score`` also cuts a search
sorted by score.

The date is the one the date filters compare with ``--date-source any``: the EXIF date, else
the file's modification time (the catalog's ``taken``). With ``date_source="exif"`` only EXIF
dates count. Photos without a date that counts come after the dated ones, in score order,
whichever way the dates run.

    >>> Order.parse(sort="date", min_score=0.3).fetch(10)
    1000
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from retrieval.errors import RetrievalError
from retrieval.search import relevance

if TYPE_CHECKING:
    from retrieval.storage.catalog import Catalog


class Dated(Protocol):
    """What the order reads of a hit (retrieval.search.query.Hit, which imports this module)."""

    score: float
    taken: str | None
    date_source: str | None


H = TypeVar("H", bound=Dated)

#: What ``sort`` may be: "score" (best first), "date" (newest first), "date-asc" (oldest first).
SORTS = ("score", "date", "date-asc")
#: The matches a date-sorted search considers at most (k, if more): enough that a page of
#: dated results is the newest of every match worth showing, few enough to sort in a millisecond.
CANDIDATES = 1_000


class OrderError(RetrievalError):
    """A sort or cutoff that cannot be understood or applied."""


@dataclass(frozen=True)
class Order:
    """How to order and cut a search's matches; the default keeps the plain best-first top k."""

    sort: str = "score"
    #: Matches scoring below this are dropped; None: none are.
    min_score: float | None = None
    #: Which dates count for the date sort: "any" (EXIF, else the file's time) or "exif".
    date_source: str = "any"

    @classmethod
    def parse(cls, *, sort: Any = None, min_score: Any = None, model: str | None = None,
              date_source: Any = None) -> Order:
        """An order from user input; a date sort without `min_score` gets `model`'s measured cutoff."""
        text = str(sort or "score").strip().lower()
        if text not in SORTS:
            raise OrderError(f"--sort {sort!r}: use score (best first), date (newest first) or date-asc (oldest first)")
        cutoff: float | None
        if min_score is None or min_score == "":
            cutoff = relevance.date_cutoff(model) if text != "score" else None
        else:
            try:
                cutoff = float(min_score)
            except (TypeError, ValueError):
                raise OrderError(f"--min-score {min_score!r} is not a number") from None
            if cutoff != cutoff or cutoff in (float("inf"), float("-inf")):
                raise OrderError(f"--min-score {min_score!r} is not a finite number")
        source = str(date_source or "any").strip().lower()
        if source not in ("any", "exif"):
            raise OrderError(f"--date-source {date_source!r}: use any or exif")
        return cls(sort=text, min_score=cutoff, date_source=source)

    @property
    def by_date(self) -> bool:
        return self.sort != "score"

    @property
    def plain(self) -> bool:
        """Best first with nothing cut: the search needs nothing of this order."""
        return not self.by_date and self.min_score is None

    def fetch(self, k: int) -> int:
        """How many matches by score the search must find to return k in this order."""
        return max(k, CANDIDATES) if self.by_date else k

    def check(self, catalog: Catalog, target: str) -> None:
        """Refuse a date sort this index cannot answer, before any model loads."""
        if not self.by_date:
            return
        if target != "images":
            raise OrderError("captions have no dates: sort them by score")
        if not catalog.has_photo_meta:
            raise OrderError(
                f"--sort {self.sort} needs photo dates, which this index does not have yet: "
                f"run `retrieval index FOLDER --index {catalog.path.parent}` once to read them (nothing is re-encoded)"
            )

    def apply(self, hits: list[H], k: int) -> list[H]:
        """`hits` (best first, with their dates when by date) cut and ordered; at most k (the caller ranks them again)."""
        if self.min_score is not None:
            hits = [h for h in hits if h.score >= self.min_score]
        if self.by_date:
            dated = [h for h in hits if h.taken and (self.date_source == "any" or h.date_source == "exif")]
            undated = [h for h in hits if not (h.taken and (self.date_source == "any" or h.date_source == "exif"))]
            # A stable sort: photos taken at the same moment stay best first, in both directions.
            dated.sort(key=lambda h: h.taken or "", reverse=self.sort == "date")
            hits = dated + undated
        return hits[:k]

    def describe(self) -> dict[str, Any]:
        """The order in effect, for echoing a query back (JSON-ready); empty for the default."""
        out: dict[str, Any] = {}
        if self.by_date:
            out["sort"] = self.sort
        if self.min_score is not None:
            out["min_score"] = self.min_score
        return out
