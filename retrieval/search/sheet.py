"""Contact sheets: search results drawn as a grid of thumbnails with rank, score and file name.

Results people would rather see than read: `retrieval search ... --sheet results.png`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

from retrieval.media.decode import as_rgb, decoder_messages

log = logging.getLogger(__name__)

THUMB = 160
#: Height of one line of text (Pillow's default font is about 11 px high).
LABEL = 14
GAP = 4
#: At most this many thumbnails a row, and never wider than MAX_WIDTH: a sheet fits a screen.
COLUMNS = 6
MAX_WIDTH = 1600


def columns_for(n: int, columns: int | None = None) -> int:
    """Thumbnails a row for a row of `n` results: at most `columns` (COLUMNS), within MAX_WIDTH."""
    widest = (MAX_WIDTH - GAP) // (THUMB + GAP)
    return max(1, min(n, columns or COLUMNS, widest))


def labels(hit: Any) -> list[str]:
    """The lines under a thumbnail: rank and score, then the file's name (or a caption's text)."""
    rank = getattr(hit, "rank", 0)
    first = f"#{rank}  {hit.score:.3f}" if rank else f"{hit.score:.3f}"
    name = Path(hit.path).name if hit.path is not None else str(getattr(hit, "text", "") or "")
    return [first, name]


def contact_sheet(rows: Sequence[tuple[str, Sequence]], out: str | Path, columns: int | None = None) -> Path:
    """Draw each row's title, then its hits as thumbnails named underneath, wrapped at `columns` a line."""
    cols = max((columns_for(len(hits), columns) for _, hits in rows), default=1)
    cell = THUMB + 2 * LABEL + GAP
    lines = [max(1, -(-len(hits) // cols)) for _, hits in rows]
    width = cols * (THUMB + GAP) + GAP
    height = sum(LABEL + GAP + n * cell for n in lines) + GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = GAP
    for (title, hits), n in zip(rows, lines):
        draw.text((GAP + 2, y + 1), _fit(draw, title, width - 2 * GAP), fill="black")
        y += LABEL + GAP
        for i, hit in enumerate(hits):
            x = GAP + (i % cols) * (THUMB + GAP)
            top = y + (i // cols) * cell
            sheet.paste(_thumbnail(hit.path), (x, top))
            for line, text in enumerate(labels(hit)):
                draw.text((x + 2, top + THUMB + 1 + line * LABEL), _fit(draw, text, THUMB - 4), fill="black")
        y += n * cell
    out = Path(out)
    sheet.save(out)
    return out


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """`text`, cut in the middle with '...' until it fits `width` pixels (a file name keeps its end)."""
    if draw.textlength(text) <= width:
        return text
    keep = len(text)
    while keep > 4:
        keep -= 1
        cut = text[: keep // 2] + "..." + text[len(text) - (keep - keep // 2) :]
        if draw.textlength(cut) <= width:
            return cut
    return text[:4]


def _thumbnail(path: str | None) -> Image.Image:
    if path is None:  # a caption hit: nothing to draw
        return Image.new("RGB", (THUMB, THUMB), "#cccccc")
    notes: list[str] = []  # what Pillow says about the file goes to the log with its name, not to stderr
    try:
        with decoder_messages(notes), Image.open(path) as image:
            image.draft("RGB", (THUMB * 2, THUMB * 2))
            return ImageOps.pad(as_rgb(ImageOps.exif_transpose(image)), (THUMB, THUMB), color="#eeeeee")
    except (OSError, TypeError, ValueError):
        return Image.new("RGB", (THUMB, THUMB), "#cccccc")
    finally:
        for note in notes:
            log.info("%s: %s", path, note)
