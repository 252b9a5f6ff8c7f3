"""The click group every command registers on, and what the commands share about the terminal.

A leaf of the package: the command modules import ``main``, ``quiet`` and ``note`` from here, and
``retrieval/cli/__init__.py`` imports this module and then the command modules (so they register),
so no command module imports the package that imports it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys

import click

from retrieval.errors import RetrievalError


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RetrievalError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:
            if not _stdout_closed():
                raise click.ClickException("Broken pipe: a process this command talked to ended early") from None
            _end_quietly()
        except (OSError, sqlite3.Error) as exc:
            # Last resort: the library explains the faults it knows where they happen
            # (retrieval.storage.faults); anything else from the environment still gets one line.
            from retrieval.storage.faults import explain

            better = explain(exc)
            raise click.ClickException(str(better) if better else f"{type(exc).__name__}: {exc}") from None
        except KeyboardInterrupt:
            click.echo("\ninterrupted: finished work is kept; run the same command again to resume", err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="retrieval")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or notes on stderr; results and errors only.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Offline image-text retrieval: index image folders, search them by text or image,
    measure recall@k, and train the aligner on your own pairs.

    Results go to stdout; progress, notes and errors go to stderr. Exit status: 0 success,
    1 an error with a one-line message, 2 a usage error, 130 interrupted, 141 stdout closed
    by its reader (`| head`), with no message.
    Shell completion: eval "$(_RETRIEVAL_COMPLETE=bash_source retrieval)" (or zsh_source, fish_source).

    \b
    Example:
        retrieval index ~/Pictures
        retrieval search "a dog on a beach"
    """
    ctx.ensure_object(dict)["quiet"] = quiet
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    if quiet and not verbose:
        level = logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


#: The exit status of a command whose reader went away: 128 + SIGPIPE, what a shell reports
#: for a Unix tool that SIGPIPE ended (`git log | head -1` under pipefail).
CLOSED_PIPE_STATUS = 141


def _stdout_closed() -> bool:
    """Whether stdout is a pipe nobody reads any more (poll reports POLLERR on its write end)."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test runner's): the pipe was another
        return False
    if not hasattr(select, "poll"):  # Windows: assume the likeliest pipe
        return True
    poller = select.poll()
    poller.register(fd, 0)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _end_quietly() -> None:
    """Stop without a word when stdout is closed (`retrieval search ... | head -1`), as Unix tools do."""
    try:
        # Python flushes stdout at exit and would report the broken pipe there: point it at nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        pass
    sys.exit(CLOSED_PIPE_STATUS)


def quiet(local: bool = False) -> bool:
    """True when this command (its own --quiet) or the whole run (`retrieval -q`) is quiet."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return local or bool(root and isinstance(root.obj, dict) and root.obj.get("quiet"))


def note(message: str) -> None:
    """A note for the person at the terminal: stderr, and silent under -q."""
    if not quiet():
        click.echo(message, err=True)
