"""The command line: a thin click layer over the library.

Each command opens a library object, calls one function, and prints. Library
exceptions (``RetrievalError``) become one-line messages here and nowhere else.
Commands live in submodules by feature; each registers itself on ``main``, the group that
``app`` holds with the helpers every command shares (``quiet``, ``note``): ``index``
(index, info, models), ``search`` (search, demo), ``maintenance`` (check, backup),
``library`` (duplicates), ``exchange`` (export, import), ``watch``, ``people``, ``evaluate`` (eval), ``train``
and ``serve``; ``options`` and ``filtering`` hold the options several commands share.
This ``__init__`` imports ``app`` and then the commands; no command imports it, so no
import runs in a circle.

May import: click (no other package does), :mod:`retrieval.api` and any layer under it;
``retrieval.server`` and ``retrieval.cluster`` only inside the commands that need them
(serve, --ray), so the CLI starts without the web stack or Ray.
"""

from __future__ import annotations

# The group and the shared helpers live in a leaf (app), which the command modules import;
# `main` is re-exported here for the console script (retrieval = "retrieval.cli:main").
from retrieval.cli.app import CLOSED_PIPE_STATUS, Group, main, note, quiet

__all__ = ["CLOSED_PIPE_STATUS", "Group", "main", "note", "quiet"]


def _register() -> None:
    from retrieval.cli import index, maintenance, people, search, watch  # noqa: F401  (commands register themselves)

    for optional in ("retrieval.cli.evaluate", "retrieval.cli.train", "retrieval.cli.serve", "retrieval.cli.library",
                     "retrieval.cli.exchange"):
        try:
            __import__(optional)
        except ModuleNotFoundError as exc:
            if exc.name != optional:
                raise


_register()
