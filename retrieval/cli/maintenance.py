"""Maintenance commands: check an index for damage, back it up while it is in use."""

from __future__ import annotations

import json

import click

from retrieval.cli.app import main

INDEX_HELP = "Index name (under ./indexes or $RETRIEVAL_HOME) or path."


@main.command()
@click.option("--index", "index_name", default="default", show_default=True, help=INDEX_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def check(index_name, as_json):
    """Check an index: SQLite's integrity check, then its FAISS files against the catalog.

    Exit status 0 when everything matches, 1 when something is damaged (each problem is
    one line saying what to do). Nothing is changed.

    \b
    Example:
        retrieval check --index photos
    """
    from retrieval.storage.faults import explained
    from retrieval.storage.health import check as run_check
    from retrieval.storage.store import resolve

    folder = resolve(index_name)
    with explained(folder, "checking"):
        report = run_check(folder)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for line in report.findings:
            click.echo(f"ok       {line}")
        for line in report.problems:
            click.echo(f"PROBLEM  {line}")
        click.echo("index is healthy" if report.ok else f"{len(report.problems)} problem(s) found")
    raise SystemExit(0 if report.ok else 1)


@main.command()
@click.option("--index", "index_name", default="default", show_default=True, help=INDEX_HELP)
@click.argument("out", type=click.Path(file_okay=False))
def backup(index_name, out):
    """Copy an index to the new folder OUT, consistently, even while it is searched or indexed.

    OUT is an index folder itself: search it with --index OUT, or restore by moving it in
    place of the original (see docs/reliability.md).

    \b
    Example:
        retrieval backup --index photos /mnt/backup/photos-2026-12-01
        retrieval search "a dog" --index /mnt/backup/photos-2026-12-01
    """
    from pathlib import Path

    from retrieval.storage.faults import explained
    from retrieval.storage.health import backup as run_backup
    from retrieval.storage.store import resolve

    folder = resolve(index_name)
    with explained(Path(out), "writing the backup"):
        done = run_backup(folder, Path(out))
    click.echo(f"backed up generation {done['generation']} of {folder} to {done['backup']} ({', '.join(done['files'])})")
