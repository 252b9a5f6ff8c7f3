"""Indexing on a Ray cluster: the same pipeline stages as the local path, on more machines.

This subpackage is the only code that imports ray (and the only indexing code that needs
fsspec); nothing else in ``retrieval`` imports it. Importing this ``__init__`` stays light:
ray is imported when a run starts, so a missing extra becomes one clear message.

    >>> from retrieval.api import build_index
    >>> from retrieval.cluster import RaySettings
    >>> build_index(["/shared/photos"], index="photos", ray=RaySettings(address="auto"))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from retrieval.errors import RetrievalError

INSTALL_HINT = "Ray is not installed: pip install 'retrieval[ray]' (on every node of the cluster)"


@dataclass
class RaySettings:
    #: None: start a Ray instance on this machine; "auto", "HOST:PORT" or "ray://HOST:10001": join that cluster.
    address: str | None = None
    #: Encoder actors when the cluster has no GPU (one per GPU otherwise). None: one.
    encoders: int | None = None
    #: Torch threads in each CPU encoder actor. None: the smallest node's CPU count divided by the encoders on it.
    encoder_threads: int | None = None
    #: Files per read/decode task: big enough to amortize a task's few milliseconds of overhead.
    chunk: int = 8
    #: A zero-argument callable that returns the aligner, run once in each encoder actor.
    #: None: ``load_aligner(spec)`` with the driver's spec. (Tests pass a plumbing aligner's class.)
    aligner_factory: Any = None
    #: Build an on-disk index's shards as Ray tasks (retrieval.cluster.ray_shards). None: when
    #: the cluster has more than one node. On one machine the tasks share the cores FAISS's own
    #: threads already use, and cost copies: 2.4x slower than one process here (bench_ray (f)).
    shards_on_ray: bool | None = None


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
    """The :class:`retrieval.ingest.pipeline.LocalSource` counterpart that runs on Ray."""
    require_ray()
    from retrieval.cluster.ray_index import RaySource

    return RaySource(settings)


__all__ = ["INSTALL_HINT", "RaySettings", "require_ray", "source"]
