"""`retrieval watch`: index folders, then keep the index current as files come, change and go."""

from __future__ import annotations

import signal
from types import FrameType

import click

from retrieval.cli.app import main, note, quiet
from retrieval.cli.options import INDEX_HELP, MODEL_HELP


class _Terminated(BaseException):
    """SIGTERM (systemd stopping the service): unwinds like Ctrl-C, then exits 0."""


class _SigtermHandler:
    """Raises :class:`_Terminated` and remembers it: watchfiles turns any signal met while it
    waits into KeyboardInterrupt, which must then still exit 0, not Ctrl-C's 130."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received = True
        raise _Terminated


@main.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--index", "index_name", default="default", show_default=True, help=INDEX_HELP)
@click.option("--model", default=None, help=MODEL_HELP + " [default: the index's own, else 'default']")
@click.option("--poll", is_flag=True,
              help="Poll the folders instead of inotify: for network file systems (NFS, SMB) and mounts that "
                   "send no change events.")
@click.option("--debounce", default=2.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds without a change before a batch is indexed.")
@click.option("--max-wait", default=60.0, show_default=True, type=click.FloatRange(1, 86400),
              help="Longest seconds a batch waits while changes keep coming.")
@click.option("--batch-size", default=32, show_default=True, help="Images per model call.")
@click.option("--workers", type=int, default=None, help="Decoding processes [default: one per core].")
def watch(folders: tuple[str, ...], index_name: str, model: str | None, poll: bool, debounce: float,
          max_wait: float, batch_size: int, workers: int | None) -> None:
    """Index FOLDERs, then keep the index current while they change.

    New photos are indexed, changed ones re-encoded, moved and renamed ones keep their
    vectors, and deleted files and folders leave the index, in batches: a batch starts after
    --debounce quiet seconds, once every changed file has stopped growing. Each batch prints
    one line. A watched folder that goes away (an unplugged disk) keeps its photos in the
    index until it comes back. The index is locked only while a batch writes, so `retrieval
    index`, `check`, `backup` and `serve` work beside it (see docs/watching.md).

    Stop with Ctrl-C (exit 130) or SIGTERM (exit 0); nothing indexed is lost.

    \b
    Example:
        retrieval watch ~/Pictures --index photos
        retrieval watch /mnt/nas/photos --index photos --poll
    """
    from retrieval.ingest.pipeline import IndexSettings
    from retrieval.ingest.watch import WatchSettings, open_watcher

    settings = WatchSettings(quiet=debounce, max_wait=max_wait, poll=poll,
                             index=IndexSettings(batch_size=batch_size, workers=workers))
    watcher = open_watcher(folders, index_name, model, settings, report=click.echo)
    sigterm = _SigtermHandler()
    previous = signal.signal(signal.SIGTERM, sigterm)
    try:
        if not quiet():
            note(f"watching {', '.join(str(r) for r in watcher.roots)} for {index_name}; Ctrl-C or SIGTERM stops")
        watcher.run()
    except (_Terminated, KeyboardInterrupt):
        if not sigterm.received:
            raise  # Ctrl-C: the group says so and exits 130
        note("stopped (SIGTERM): everything indexed is kept; the next start catches up")
    finally:
        signal.signal(signal.SIGTERM, previous)
