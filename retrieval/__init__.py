"""retrieval: an offline image-text retrieval engine.

The top-level import stays light: torch, faiss and open_clip load only when a
function that needs them is called.

    >>> import retrieval
    >>> idx = retrieval.open_index("indexes/default")            # doctest: +SKIP
    >>> [h.path for h in idx.search_text("a dog on a beach", k=3)]  # doctest: +SKIP
"""

from retrieval.errors import (
    DatasetError,
    IndexNotFound,
    ModelError,
    ModelMismatch,
    RetrievalError,
    TrainingError,
)

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


def load_aligner(spec: str = "default", device: str | None = None):
    """Return the aligner named by `spec` (see `retrieval models`)."""
    from retrieval.aligners import load_aligner as _load

    return _load(spec, device=device)


def open_index(name_or_path: str = "default"):
    """Open an existing index for searching."""
    from retrieval.api import open_index as _open

    return _open(name_or_path)


def build_index(folders, index: str = "default", model: str = "default", **kwargs):
    """Index image folders incrementally; returns a summary of the run."""
    from retrieval.api import build_index as _build

    return _build(folders, index=index, model=model, **kwargs)
