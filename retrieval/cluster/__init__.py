"""Indexing on a Ray cluster: the same pipeline stages as the local path, on more machines.

This subpackage is the only code that imports ray (and the only indexing code that needs
fsspec); nothing else in ``retrieval`` imports it. Importing this ``__init__`` stays light:
ray is imported when a run starts, so a missing extra becomes one clear message.

    >>> from retrieval.api import build_index
    >>> from retrieval.cluster import RaySettings
    >>> build_index(["/shared/photos"], index="photos", ray=RaySettings(address="auto"))  # doctest: +SKIP
"""

from __future__ import annotations

from retrieval.cluster.settings import RaySettings
from retrieval.errors import RetrievalError

INSTALL_HINT = "Ray is not installed: pip install 'retrieval[ray]' (on every node of the cluster)"


def require_ray() -> None:
    """Raise a one-line :class:`RetrievalError` when the ``ray`` extra is missing."""
    try:
        import fsspec  # noqa: F401
        import ray  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name not in ("ray", "fsspec"):
            raise
        raise RetrievalError(INSTALL_HINT) from None


def source(settings: RaySettings):
    """The :class:`retrieval.ingest.source.LocalSource` counterpart that runs on Ray."""
    require_ray()
    from retrieval.cluster.ray_index import RaySource

    return RaySource(settings)


__all__ = ["INSTALL_HINT", "RaySettings", "require_ray", "source"]
