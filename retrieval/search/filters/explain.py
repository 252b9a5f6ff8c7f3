"""Saying why a filtered search found nothing, and how many images the photo filters can see."""

from __future__ import annotations

from typing import Any

from retrieval.search.filters.spec import Filters
from retrieval.search.filters.sql import Clause
from retrieval.storage.catalog import Catalog


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
    if clause.name.startswith("--date-source"):
        return " (no image in this index has an EXIF date; --date-source any also reads file times)"
    if clause.name.startswith("--camera"):
        rows = db.execute(
            "SELECT trim(coalesce(make, '') || ' ' || coalesce(model, '')) AS cam FROM cameras "
            "GROUP BY cam ORDER BY sum(images) DESC LIMIT 5"
        ).fetchall()
        return f" (cameras in this index: {', '.join(r[0] for r in rows)})" if rows else " (no image in this index names its camera)"
    if clause.name.startswith("--person"):
        return " (no indexed image shows that person now)"
    if clause.name.startswith("--near"):
        placed = db.execute("SELECT count(*) FROM images WHERE lat IS NOT NULL").fetchone()[0]
        return f" ({placed} images in this index have a GPS position)"
    return ""


def photo_counts(catalog: Catalog) -> dict[str, Any]:
    """How many images have an EXIF date (the rest are dated by file time), a place and a camera."""
    if not catalog.has_photo_meta:
        return {"with_date": None, "with_place": None, "with_camera": None}
    dated, placed, camera = catalog.db.execute(
        "SELECT coalesce(sum(taken_source = 'exif'), 0), count(lat), "
        "coalesce(sum(camera_make IS NOT NULL OR camera_model IS NOT NULL), 0) FROM images"
    ).fetchone()
    return {"with_date": dated, "with_place": placed, "with_camera": camera}
