"""retrieval: an offline image-text retrieval engine.

The top-level import stays light: torch, faiss and open_clip load only when a
function that needs them is called. The Python API is :mod:`retrieval.api`, one function
per CLI command (``retrieval.build_index`` and ``retrieval.open_index`` are the same calls):

    >>> from retrieval.api import build_index, open_index
    >>> build_index(["~/Pictures"], index="photos").line()        # doctest: +SKIP
    'added 812, updated 0, moved 0, removed 0, skipped 3, unchanged 0, encoded 809 in 61.2s'
    >>> index = open_index("photos")                              # doctest: +SKIP
    >>> [h.path for h in index.search("a dog on a beach", k=3)]   # doctest: +SKIP
    >>> index.search(image="ref.jpg", k=5)                        # doctest: +SKIP
    >>> index.close()                                             # doctest: +SKIP

``search`` returns :class:`retrieval.search.query.Hit` rows (rank, id, score, path); a
name without a slash is an index under ``./indexes`` (or ``$RETRIEVAL_HOME``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retrieval.errors import (
    DatasetError,
    IndexNotFound,
    ModelError,
    ModelMismatch,
    RetrievalError,
    TrainingError,
)

if TYPE_CHECKING:
    from retrieval.aligners import Aligner
    from retrieval.api import Index
    from retrieval.ingest.pipeline import RunSummary

__version__ = "0.1.0"

__all__ = [
    "DatasetError",
    "IndexNotFound",
    "ModelError",
    "ModelMismatch",
    "RetrievalError",
    "TrainingError",
    "load_aligner",
    "open_index",
    "build_index",
]


def load_aligner(spec: str = "default", device: str | None = None) -> Aligner:
    """Return the aligner named by `spec` (see `retrieval models`)."""
    from retrieval.aligners import load_aligner as _load

    return _load(spec, device=device)


def open_index(name_or_path: str = "default") -> Index:
    """Open an existing index for searching."""
    from retrieval.api import open_index as _open

    return _open(name_or_path)


def build_index(folders: Any, index: str = "default", model: str = "default", **kwargs: Any) -> RunSummary:
    """Index image folders incrementally; returns a summary of the run."""
    from retrieval.api import build_index as _build

    return _build(folders, index=index, model=model, **kwargs)
