"""`retrieval people`: the people whose faces an index holds; naming, merging, moving, hiding, forgetting, scanning."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from retrieval.cli.app import main, note
from retrieval.cli.options import INDEX_HELP, progress

THRESHOLD_HELP = ("Euclidean distance on dlib's face descriptors under which two faces are one person "
                  "[default: tuned, see docs/people.md].")


def _index_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--index", "index_name", default=None, help=INDEX_HELP + " [default: people's --index]")(fn)


def _index(ctx: click.Context, index_name: str | None) -> str:
    return index_name or (ctx.parent.params.get("index_name") if ctx.parent else None) or "default"


@contextmanager
def _writing(ctx: click.Context, index_name: str | None, holder: str = "retrieval people") -> Iterator[Any]:
    """The index's store, under its writer lock (a watcher's batch is waited for), migrated."""
    from retrieval.storage.store import IndexStore

    store = IndexStore.open(_index(ctx, index_name))
    try:
        with store.write_lock(holder, wait_for=("retrieval watch",)):
            store.catalog.migrate()
            yield store
    finally:
        store.close()


@main.group(invoke_without_command=True)
@click.option("--index", "index_name", default="default", show_default=True, help=INDEX_HELP)
@click.option("--json", "as_json", is_flag=True,
              help='Print {"people": [{"id", "name", "count", "hidden", "faces": [{"face_id", "image_id", "path", "box"}]}]}; '
                   "box is x, y, w, h in the upright photo's pixels.")
@click.option("--sheet", type=click.Path(dir_okay=False), help="Draw each person's faces as a row (PNG).")
@click.option("--all", "show_hidden", is_flag=True, help="Hidden people too.")
@click.pass_context
def people(ctx: click.Context, index_name: str, as_json: bool, sheet: str | None, show_hidden: bool) -> None:
    """List the people found in an index's photos, most photos first, or change them (commands below).

    Faces are found while indexing (turn off with `retrieval index --no-faces`) and grouped
    into people; name a group, merge two, move a face that went to the wrong person, hide
    strangers. Your names and corrections survive re-indexing and regrouping.

    \b
    Example:
        retrieval people --index photos
        retrieval people name 3 "Alice"
        retrieval search "on a beach" --person Alice
        retrieval people scan --index old-photos      # faces for an index made without them
    """
    if ctx.invoked_subcommand is not None:
        return
    from retrieval.people.naming import listing
    from retrieval.storage.faces import faces_on
    from retrieval.storage.store import IndexStore

    store = IndexStore.open(index_name)
    try:
        found = listing(store.catalog, hidden=show_hidden)
        on = faces_on(store.catalog)
    finally:
        store.close()
    if sheet:
        from retrieval.people.sheet import people_sheet

        note(f"people sheet: {people_sheet(found, sheet)}")
    if as_json:
        click.echo(json.dumps({"people": found}, indent=2))
        return
    if not found:
        click.echo("no people in this index" + ("" if on else " (faces are off: `retrieval people scan` finds them)"))
        return
    for person in found:
        hidden = "  (hidden)" if person["hidden"] else ""
        click.echo(f"{person['id']:>6}  {person['count']:>6} photo(s)  {person['name'] or '(unnamed)'}{hidden}")


@people.command()
@click.argument("person")
@click.argument("name")
@click.option("--merge", is_flag=True, help="If another person has this name, make them one person.")
@_index_option
@click.pass_context
def name(ctx: click.Context, person: str, name: str, merge: bool, index_name: str | None) -> None:
    """Call PERSON (an id, or a name) NAME.

    \b
    Example:
        retrieval people name 3 "Alice"
        retrieval people name 7 "Alice" --merge   # 7 is Alice too
    """
    from retrieval.people.naming import name as set_name

    with _writing(ctx, index_name) as store:
        person_id = set_name(store.catalog, person, name, merge=merge)
    click.echo(f"person {person_id} is {' '.join(name.split())}")


@people.command()
@click.argument("keep")
@click.argument("other")
@_index_option
@click.pass_context
def merge(ctx: click.Context, keep: str, other: str, index_name: str | None) -> None:
    """Make OTHER's faces KEEP's (ids or names); OTHER is removed.

    \b
    Example:
        retrieval people merge Alice 12
    """
    from retrieval.people.naming import merge_people

    with _writing(ctx, index_name) as store:
        kept = merge_people(store.catalog, keep, other)
    click.echo(f"merged {other} into person {kept}")


@people.command()
@click.argument("face_ids", nargs=-1, required=True, type=int)
@click.argument("to")
@_index_option
@click.pass_context
def move(ctx: click.Context, face_ids: tuple[int, ...], to: str, index_name: str | None) -> None:
    """Move faces (ids from `retrieval people --json`) to the person TO, or to a new person with
    TO = new (a split). Moved faces stay where you put them.

    \b
    Example:
        retrieval people move 41 57 Bob
        retrieval people move 41 new
    """
    from retrieval.people.naming import move as move_faces

    with _writing(ctx, index_name) as store:
        person_id = move_faces(store.catalog, list(face_ids), to)
    click.echo(f"moved {len(face_ids)} face(s) to person {person_id}")


@people.command()
@click.argument("person")
@click.option("--show", is_flag=True, help="Show a hidden person again.")
@_index_option
@click.pass_context
def hide(ctx: click.Context, person: str, show: bool, index_name: str | None) -> None:
    """Leave PERSON (a stranger in the background) out of `retrieval people` and the page.

    \b
    Example:
        retrieval people hide 12
    """
    from retrieval.people.naming import hide as set_hidden

    with _writing(ctx, index_name) as store:
        person_id = set_hidden(store.catalog, person, hidden=not show)
    click.echo(f"person {person_id} is {'shown' if show else 'hidden'}")


@people.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_index_option
@click.pass_context
def forget(ctx: click.Context, yes: bool, index_name: str | None) -> None:
    """Remove every face, person and name from the index; later index runs look for no faces
    (`retrieval people scan` starts again).

    \b
    Example:
        retrieval people forget --index photos
    """
    if not yes:
        click.confirm(f"remove all face data (faces, people, names) from index {_index(ctx, index_name)}?", abort=True)
    from retrieval.people.naming import forget as forget_all

    with _writing(ctx, index_name) as store:
        removed = forget_all(store.catalog)
    click.echo(f"removed {removed['faces']} faces and {removed['people']} people; faces are off for this index")


@people.command()
@click.option("--threshold", type=click.FloatRange(0, 2, min_open=True), default=None, help=THRESHOLD_HELP)
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Decoding processes [default: one per core].")
@_index_option
@click.pass_context
def scan(ctx: click.Context, threshold: float | None, workers: int | None, index_name: str | None) -> None:
    """Find faces in the photos of an index that has not looked at them (one made with faces
    off, or before faces existed), then group them into people. Resumable: run it again after
    an interruption and it goes on where it stopped. Later index runs find faces too.

    \b
    Example:
        retrieval people scan --index photos
    """
    from retrieval.ingest.faces import scan as scan_faces
    from retrieval.ingest.settings import IndexSettings
    from retrieval.people.clustering import ClusterSettings

    clustering = ClusterSettings() if threshold is None else ClusterSettings(threshold=threshold)
    with _writing(ctx, index_name, "retrieval people scan") as store:
        summary = scan_faces(store, IndexSettings(workers=workers), progress(True), clustering=clustering)
    click.echo(summary.line())


@people.command()
@click.option("--threshold", type=click.FloatRange(0, 2, min_open=True), default=None, help=THRESHOLD_HELP)
@_index_option
@click.pass_context
def regroup(ctx: click.Context, threshold: float | None, index_name: str | None) -> None:
    """Group the faces again (with another --threshold): named and hidden people and the faces
    you moved stay as they are; unnamed people may change.

    \b
    Example:
        retrieval people regroup --threshold 0.45
    """
    from retrieval.people.clustering import ClusterSettings, cluster
    from retrieval.storage.faces import has_faces

    settings = ClusterSettings(full=True) if threshold is None else ClusterSettings(threshold=threshold, full=True)
    with _writing(ctx, index_name) as store:
        if not has_faces(store.catalog):
            click.echo("no faces in this index: `retrieval people scan` finds them")
            return
        done = cluster(store.catalog, settings)
    click.echo(f"grouped {done.faces} faces: {done.joined} joined named or hidden people, {done.new_people} new people")
