"""Vectors that arrive in chunks: a collection too large to hold at once is read in passes."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

#: A source of (ids, vectors) chunks; called once per pass over the collection.
Chunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


def gather(chunks: Chunks, positions: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The ids and vectors at `positions` (row numbers over all chunks), in the order given: one pass."""
    out_ids = np.zeros(len(positions), np.int64)
    out = np.zeros((len(positions), dim), np.float32)
    order = np.argsort(positions, kind="stable")
    sorted_pos = positions[order]
    offset = 0
    for ids, vectors in chunks():
        lo, hi = np.searchsorted(sorted_pos, [offset, offset + len(ids)])
        where = order[lo:hi]
        out_ids[where] = ids[sorted_pos[lo:hi] - offset]
        out[where] = vectors[sorted_pos[lo:hi] - offset]
        offset += len(ids)
    return out_ids, out
