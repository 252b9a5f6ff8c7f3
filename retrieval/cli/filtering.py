"""The filter options shared by commands that search images (`retrieval search`, later others)."""

from __future__ import annotations

from typing import Any

import click


class _Checked(click.ParamType):
    """A filter value checked as click reads it, so a bad one is a usage error (exit 2).

    The value stays the text given; Filters.parse reads it again and checks the combination.
    """

    def __init__(self, name: str, flag: str):
        self.name, self.flag = name, flag

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        # Imported here: the filters package is not needed to start the CLI.
        from retrieval.search.filters import FilterError, parse_near, parse_when

        try:
            parse_when(value, self.flag) if self.name == "date" else parse_near(value)
        except FilterError as exc:
            self.fail(str(exc).removeprefix(f"{self.flag} "), param, ctx)
        return value


_OPTIONS = [
    click.option("--after", metavar="DATE", type=_Checked("date", "--after"),
                 help="Taken on or after DATE (YYYY-MM-DD, or YYYY-MM-DDTHH:MM); see --date-source."),
    click.option("--before", metavar="DATE", type=_Checked("date", "--before"), help="Taken before DATE (that moment excluded)."),
    click.option("--date-source", type=click.Choice(["any", "exif"]), default="any", show_default=True,
                 help="Which date --after/--before compare: any is the EXIF date, else the file's modification "
                      "time (as photo tools do; such hits say \"date_source\": \"file\" in --json); exif keeps "
                      "only photos with an EXIF date."),
    click.option("--folder", "folders", multiple=True, type=click.Path(file_okay=False),
                 help="Only images under this folder (repeatable: any of them)."),
    click.option("--camera", metavar="TEXT", help="Camera make or model contains TEXT (case-insensitive)."),
    click.option("--near", metavar="LAT,LON,KM", type=_Checked("place", "--near"), help="Taken within KM kilometres of LAT,LON (GPS in EXIF)."),
    click.option("--min-width", type=int, metavar="N", help="At least N pixels wide (as shown, after EXIF rotation)."),
    click.option("--min-height", type=int, metavar="N", help="At least N pixels high."),
    click.option("--person", "people", multiple=True, metavar="NAME",
                 help="Only images showing this person, by name or id (`retrieval people` lists them); "
                      "repeatable: all of them must be in the image."),
]
NAMES = ("after", "before", "folders", "camera", "near", "min_width", "min_height", "date_source", "people")


def filter_options(command):
    """Add the filter options to a click command; pop them with :func:`filters_from`."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def filters_from(kwargs: dict):
    """Take the filter options out of a command's keyword arguments, parsed (a usage error on bad values)."""
    from retrieval.search.filters import FilterError, Filters

    try:
        return Filters.parse(**{name: kwargs.pop(name, None) for name in NAMES})
    except FilterError as exc:  # values that pass alone but not together (--after later than --before)
        raise click.UsageError(str(exc)) from None
