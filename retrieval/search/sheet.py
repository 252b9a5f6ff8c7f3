"""Contact sheets: search results drawn as a grid of thumbnails with rank and score.

Results people would rather see than read: `retrieval search ... --sheet results.png`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

THUMB = 160
LABEL = 18


def contact_sheet(rows: Sequence[tuple[str, Sequence]], out: str | Path, columns: int | None = None) -> Path:
    """Draw one row per query: its title, then each hit's thumbnail with rank and score."""
    columns = columns or max((len(hits) for _, hits in rows), default=1) or 1
    width = columns * (THUMB + 4) + 4
    height = sum(LABEL + 4 + THUMB + LABEL + 4 for _ in rows) + 4
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = 4
    for title, hits in rows:
        draw.text((6, y + 2), title[:120], fill="black")
        y += LABEL + 4
        for col, hit in enumerate(hits[:columns]):
            x = 4 + col * (THUMB + 4)
            sheet.paste(_thumbnail(hit.path), (x, y))
            draw.text((x + 2, y + THUMB + 2), f"#{hit.rank}  {hit.score:.3f}", fill="black")
        y += THUMB + LABEL + 4
    out = Path(out)
    sheet.save(out)
    return out


def _thumbnail(path: str | None) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.draft("RGB", (THUMB * 2, THUMB * 2))
            return ImageOps.pad(ImageOps.exif_transpose(image).convert("RGB"), (THUMB, THUMB), color="#eeeeee")
    except (OSError, TypeError, ValueError):
        return Image.new("RGB", (THUMB, THUMB), "#cccccc")
