"""Photo-library commands: duplicates."""

from __future__ import annotations

import json

import click

from retrieval.cli.app import main
from retrieval.cli.options import INDEX_HELP, progress


@main.command()
@click.option("--index", "index_name", default="default", show_default=True, help=INDEX_HELP)
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Cosine similarity above which two images without a perceptual hash (an index from "
                   "before them) are copies [default: measured for the default aligner, see docs/photo-library.md].")
@click.option("--max-bits", type=click.IntRange(0, 64), default=None,
              help="Bits (of 64) in which two copies' perceptual hashes may differ [default: measured, "
                   "see docs/photo-library.md].")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"groups": [[{"id", "path", "score", "bits_differ", "companion"}, ...], ...], "kinds": ["copies" | "burst" | "raw+jpeg" | "heic+jpeg", ...]}.')
@click.option("--sheet", type=click.Path(dir_okay=False), help="Draw each group as a row of thumbnails (PNG).")
@click.option("--max-groups", default=50, show_default=True, type=click.IntRange(min=1), help="Groups drawn on --sheet.")
def duplicates(index_name, threshold, max_bits, as_json, sheet, max_groups):
    """Find groups of near-identical images: resized, re-encoded, cropped or re-saved copies, and bursts.

    The largest group comes first; in each group the largest image comes first, and each
    score is the similarity to it. A group is "copies" (one photo re-saved, resized, cropped)
    or a "burst" (frames taken seconds apart).

    \b
    Example:
        retrieval duplicates --index photos
        retrieval duplicates --sheet dupes.png
        retrieval duplicates --threshold 0.95 --json > dupes.json
    """
    from retrieval.search.duplicates import DEFAULT_THRESHOLD, MAX_BITS, find_duplicates, sheet_rows
    from retrieval.search.duplicates import as_json as groups_json
    from retrieval.storage.store import IndexStore

    store = IndexStore.open(index_name)
    try:
        groups = find_duplicates(store, DEFAULT_THRESHOLD if threshold is None else threshold,
                                 progress=progress(True), max_bits=MAX_BITS if max_bits is None else max_bits)
    finally:
        store.close()
    if sheet:
        from retrieval.search.sheet import contact_sheet

        click.echo(f"contact sheet: {contact_sheet(sheet_rows(groups[:max_groups]), sheet)}", err=True)
    if as_json:
        click.echo(json.dumps(groups_json(groups), indent=2))
        return
    if not groups:
        click.echo("no near-duplicates found")
        return
    for n, group in enumerate(groups, 1):
        click.echo(f"group {n} ({len(group)} images, {group.kind})")
        for member in group:
            click.echo(f"  {member.score:.3f}  {member.path}")
    copies = sum(len(g) - 1 for g in groups)
    click.echo(f"{len(groups)} group(s), {copies} image(s) copying another")
