"""Searching: search (by text, image or both, with filters), and demo (indexes the packaged photos and searches them)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import click

from retrieval.cli.app import main, note
from retrieval.cli.filtering import filter_options, filters_from
from retrieval.cli.options import INDEX_HELP, MODEL_HELP, progress

if TYPE_CHECKING:
    from retrieval.search.query import Hit


@main.command()
@click.argument("text", required=False)
@click.option("--image", type=click.Path(exists=True, dir_okay=False), help="Query image (image-to-image, or fused with TEXT).")
@click.option("--texts", is_flag=True, help="Rank the index's captions instead of its images.")
@click.option("-k", default=10, show_default=True, type=click.IntRange(min=1), help="Number of results.")
@click.option("--weight", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="Image share when TEXT and --image are both given.")
@click.option("--not", "negatives", multiple=True, help="A concept to push away (repeatable).")
@click.option("--index", "index_name", default="default", show_default=True, help=INDEX_HELP)
@click.option("--model", default=None, help=MODEL_HELP + " Must match the index.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--paths", is_flag=True, help="Print bare paths, one a line (for pipes).")
@click.option("-0", "--null", "null", is_flag=True, help="With --paths: end each path with a NUL byte, as find -print0 does.")
@click.option("--sheet", type=click.Path(dir_okay=False), help="Also draw the image results as a contact sheet PNG.")
@click.option("--sort", type=click.Choice(["score", "date", "date-asc"]), default="score", show_default=True,
              help="score: best match first; date: newest first; date-asc: oldest first. By the date --after "
                   "compares (EXIF, else the file's time; photos without one last). A date sort takes the best "
                   "1,000 matches, drops those under the cutoff (--min-score, else the one measured for the "
                   "index's model: 'default' has one, open_clip models none, so nothing is cut) and returns k.")
@click.option("--min-score", type=float, metavar="X", default=None,
              help="Drop matches scoring below X (the score printed beside each result).")
@click.option("--moments", is_flag=True,
              help="List every matching moment of a video (each with its time) instead of each video once at its best.")
@filter_options
def search(text: str | None, image: str | None, texts: bool, k: int, weight: float, negatives: tuple[str, ...],
           index_name: str, model: str | None, as_json: bool, paths: bool, sheet: str | None, null: bool,
           sort: str, min_score: float | None, moments: bool, **filter_args: Any) -> None:
    """Search an index by text, by image, or both.

    \b
    Example:
        retrieval search "a dog on a beach"
        retrieval search --image ref.jpg -k 5
        retrieval search "a red car" --image ref.jpg --weight 0.3 --not "night"
        retrieval search --image photo.jpg --texts
        retrieval search "a cat" --sheet cats.png
        retrieval search "a beach" --after 2023-06-01 --before 2023-09-01 --folder ~/Pictures/Trips
        retrieval search "a birthday cake" --sort date -k 20
        retrieval search "on a beach" --person Alice --person Bob
        retrieval search "fireworks over a river" --moments
    """
    from retrieval.api import open_index
    from retrieval.search.query import Query

    filters = filters_from(filter_args)
    if not text and not image and not filters.people:
        raise click.UsageError("give a TEXT, an --image, or both (or a --person alone)")
    idx = open_index(index_name, model=model)
    try:
        order = idx.order(sort, min_score, filters)
        alone = not text and not image
        if alone:  # a person alone: listed by face score or date, no match score to cut
            order = replace(order, min_score=None)
        if order.by_date and order.min_score is None and not alone:
            note(f"no cutoff is measured for {idx.store.catalog.get_meta('model')}: the best "
                 f"{order.fetch(k):,} matches are sorted by date; --min-score X cuts weak ones")
        hits = idx.search(
            text, image=image, k=k, weight=weight, negatives=negatives, target="texts" if texts else "images",
            filters=filters, sort=sort, min_score=min_score, moments=moments,
        )
        # Nothing passed the filters: say which one excluded everything (not an error).
        why = idx.why_empty(filters) if filters.active and not hits else None
    finally:
        idx.close()
    if sheet and not texts:
        from retrieval.search.sheet import contact_sheet

        contact_sheet([(_title(text, image), hits)], sheet)
    if as_json:
        query = Query(text=text, image=image, weight=weight, negatives=list(negatives), target="texts" if texts else "images")
        out = {"query": {**query.describe(), "k": k, **filters.describe(), **order.describe(),
                         **({"moments": True} if moments else {})},
               "results": [h.as_dict() for h in hits]}
        if why:
            out["note"] = why
        click.echo(json.dumps(out, indent=2))
    elif paths or null:
        # A file name may hold a newline; NUL is the one byte no path can contain.
        end = "\0" if null else "\n"
        for hit in hits:
            click.echo(hit.path if hit.path is not None else hit.text, nl=False)
            click.echo(end, nl=False)
    elif why:
        click.echo(f"no results: {why}")
    elif not hits and order.min_score is not None:
        click.echo(f"no results: no match scores {order.min_score} or more")
    elif not hits:
        click.echo("no results (is the index empty?)")
    else:
        for hit in hits:
            # Sorted by date, the date is what orders them: shown beside the score.
            when = f"{(hit.taken or 'no date').replace('T', ' '):<19}  " if order.by_date else ""
            at = f"  at {_clock(hit.time)}" if hit.time is not None else ""  # a video's moment
            click.echo(f"{hit.rank:>3}  {hit.score:.3f}  {when}{hit.path if hit.path is not None else hit.text}{at}"
                       f"{_also(hit)}")


def _also(hit: Hit) -> str:
    """A photo's other files, short: "  (+ IMG_1.CR2)" for a RAW+JPEG pair, "  (live)" for a Live Photo."""
    parts = [f"+ {', '.join(os.path.basename(p) for p in hit.companions)}"] if hit.companions else []
    if hit.motion:
        parts.append("live")
    return f"  ({'; '.join(parts)})" if parts else ""


def _clock(seconds: float) -> str:
    """12.5 -> "0:12.5", 3725 -> "1:02:05.0": how players show a time."""
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{rest:04.1f}" if hours else f"{minutes}:{rest:04.1f}"


def _title(text: str | None, image: str | None) -> str:
    parts = [f'"{text}"'] if text else []
    if image:
        parts.append(f"image {image}")
    return " + ".join(parts)


@main.command()
@click.option("--index", "index_name", default="demo", show_default=True, help=INDEX_HELP)
@click.option("-k", default=3, show_default=True, help="Results per query.")
@click.option("--sheet", default="demo.png", show_default=True, type=click.Path(dir_okay=False), help="Contact sheet of the results.")
def demo(index_name: str, k: int, sheet: str) -> None:
    """Index the real photos shipped with the installed packages and run a few searches.

    \b
    Example:
        retrieval demo
    """
    from retrieval.api import build_index, open_index
    from retrieval.errors import ModelMismatch
    from retrieval.evaluation.demo import DEMO_QUERIES, demo_folder

    folder = demo_folder()
    note(f"indexing the demo photos in {folder}")
    try:
        summary = build_index([folder], index=index_name, progress=progress(True))
    except ModelMismatch:
        if index_name != "demo":  # someone else's index: never delete it
            raise
        # The demo's own index, built by an earlier recipe of `default`: it holds only the
        # demo's copies of packaged photos, so rebuilding it loses nothing.
        from retrieval.evaluation.demo import remove_demo_index

        note("the demo index was built by an earlier version of the default aligner; rebuilding it")
        remove_demo_index(index_name)
        summary = build_index([folder], index=index_name, progress=progress(True))
    click.echo(summary.line())
    idx = open_index(index_name)
    rows = []
    try:
        for query in DEMO_QUERIES:
            click.echo(f'\nsearch "{query}"')
            hits = idx.search(query, k=k)
            rows.append((f'"{query}"', hits))
            for hit in hits:
                click.echo(f"{hit.rank:>3}  {hit.score:.3f}  {hit.path}")
    finally:
        idx.close()
    from retrieval.search.sheet import contact_sheet

    click.echo(f"\ncontact sheet of these results: {contact_sheet(rows, sheet)}")
