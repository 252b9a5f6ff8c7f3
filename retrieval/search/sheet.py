"""Contact sheets: search results drawn as a grid of thumbnails with rank, score and file name.

Results people would rather see than read: `retrieval search ... --sheet results.png`.
A video's hit is drawn as the frame of its moment, labelled with that time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

from retrieval.errors import BadVideo
from retrieval.media.decode import as_rgb, decoder_messages, open_still
from retrieval.media.files import is_video

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
    moment = getattr(hit, "time", None)
    if moment is not None:  # a video's moment: when in it the frame drawn is
        first += f"  at {clock(moment)}"
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
            sheet.paste(_thumbnail(hit.path, getattr(hit, "time", None)), (x, top))
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


def clock(seconds: float) -> str:
    """Seconds as a player shows them: 75.4 -> '1:15.4', 3725 -> '1:02:05'."""
    tenths = round(max(0.0, seconds) * 10)
    whole, tenth = divmod(tenths, 10)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    shown = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
    return f"{shown}.{tenth}" if tenth and not hours else shown


def _thumbnail(path: str | None, moment: float | None = None) -> Image.Image:
    if path is None:  # a caption hit: nothing to draw
        return Image.new("RGB", (THUMB, THUMB), "#cccccc")
    if is_video(path):
        return _video_frame(path, moment or 0.0)
    notes: list[str] = []  # what Pillow says about the file goes to the log with its name, not to stderr
    try:
        with decoder_messages(notes), open_still(path, THUMB * 2) as image:  # HEIC and RAW too
            image.draft("RGB", (THUMB * 2, THUMB * 2))
            return ImageOps.pad(as_rgb(ImageOps.exif_transpose(image)), (THUMB, THUMB), color="#eeeeee")
    except (OSError, TypeError, ValueError):
        return Image.new("RGB", (THUMB, THUMB), "#cccccc")
    finally:
        for note in notes:
            log.info("%s: %s", path, note)


def _video_frame(path: str, seconds: float) -> Image.Image:
    """The frame shown `seconds` into the video, padded to the cell; grey when it cannot be read."""
    from retrieval.media.video import frame_at  # PyAV loads only for a sheet that shows a video

    try:
        frame = frame_at(path, seconds)
    except BadVideo as exc:
        log.info("%s: %s", path, exc)
        return Image.new("RGB", (THUMB, THUMB), "#cccccc")
    frame.thumbnail((THUMB * 2, THUMB * 2))
    return ImageOps.pad(frame, (THUMB, THUMB), color="#eeeeee")
