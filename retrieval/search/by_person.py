"""A search by person alone (``retrieval search --person Alice``, no text and no image).

With nothing to compare, there is no similarity to rank by: the photos that pass the filters
(the person, and any other filter) are listed by how clearly the person shows, the detector
score of their face (the weakest named person's best face when several are named), so the
sharpest portraits come first; ``sort="date"`` / ``"date-asc"`` lists them newest or oldest
first instead, as photo tools show a person's page (docs/people.md#searching-by-person). The
score a hit carries is that face score (dlib's HOG detector margin, about 0 to 3), not a match
score, so a ``min_score`` cutoff does not apply.
"""

from __future__ import annotations

from dataclasses import replace

from retrieval.search.filters import Filters, resolve_people, where
from retrieval.search.filters.people import face_scores
from retrieval.search.ordering import Order
from retrieval.search.query import Hit
from retrieval.storage.store import IndexStore


def person_hits(store: IndexStore, filters: Filters, k: int, order: Order | None = None) -> list[Hit]:
    """The best k images showing every person `filters` names and passing its other filters."""
    catalog = store.catalog
    with catalog.snapshot():
        sql, args = where(filters.clauses(catalog))
        ids = [r[0] for r in catalog.db.execute(f"SELECT id FROM images WHERE status = 'ok' AND {sql}", args)]
        scores = face_scores(catalog, ids, [pid for _, pid in resolve_people(catalog, filters.people)])
        by_date = order is not None and order.by_date
        # By score: only the best k need their rows; by date, every passing image is ordered.
        ranked = sorted(ids, key=lambda i: (-scores.get(i, 0.0), i))
        chosen = ranked if by_date else ranked[:k]
        rows = catalog.rows_by_id("images", chosen)
        dates = catalog.dates_by_id(chosen) if by_date or filters.dated else {}
    hits: list[Hit] = []
    for image_id in chosen:
        row = rows.get(image_id)
        if row is None:
            continue
        taken, source = dates.get(image_id, (None, None))
        hits.append(Hit(
            rank=len(hits) + 1, id=image_id, score=round(scores.get(image_id, 0.0), 6), path=row.get("path"),
            taken=taken, date_source=None if source is None else "exif" if source == "exif" else "file",
        ))
    if by_date and order is not None:
        hits = replace(order, min_score=None).apply(hits, k)
    return [replace(h, rank=i + 1) for i, h in enumerate(hits[:k])]
