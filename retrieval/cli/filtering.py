"""The filter options shared by commands that search images (`retrieval search`, later others)."""

from __future__ import annotations

import click

_OPTIONS = [
    click.option("--after", metavar="DATE", help="Taken on or after DATE (YYYY-MM-DD, or YYYY-MM-DDTHH:MM)."),
    click.option("--before", metavar="DATE", help="Taken before DATE (that moment excluded)."),
    click.option("--folder", "folders", multiple=True, type=click.Path(file_okay=False),
                 help="Only images under this folder (repeatable: any of them)."),
    click.option("--camera", metavar="TEXT", help="Camera make or model contains TEXT (case-insensitive)."),
    click.option("--near", metavar="LAT,LON,KM", help="Taken within KM kilometres of LAT,LON (GPS in EXIF)."),
    click.option("--min-width", type=int, metavar="N", help="At least N pixels wide (as shown, after EXIF rotation)."),
    click.option("--min-height", type=int, metavar="N", help="At least N pixels high."),
]
NAMES = ("after", "before", "folders", "camera", "near", "min_width", "min_height")


def filter_options(command):
    """Add the filter options to a click command; pop them with :func:`filters_from`."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def filters_from(kwargs: dict):
    """Take the filter options out of a command's keyword arguments, parsed (FilterError on bad values)."""
    from retrieval.search.filters import Filters

    return Filters.parse(**{name: kwargs.pop(name, None) for name in NAMES})
