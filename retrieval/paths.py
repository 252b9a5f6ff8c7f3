"""Where the engine keeps files of its own between runs, outside any index."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    """Files derived once and reused (demo photos, built-in sets, class embeddings, training features).

    $RETRIEVAL_CACHE when set; else the user's cache folder: on Linux $XDG_CACHE_HOME/retrieval,
    or ~/.cache/retrieval without it. Not created here: the writer makes what it needs.
    """
    override = os.environ.get("RETRIEVAL_CACHE")
    if override:
        return Path(override)
    return Path(platformdirs.user_cache_dir("retrieval", appauthor=False))
