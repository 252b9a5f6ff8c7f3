"""A small cache of recent query-text vectors, for long-lived callers (a server, an opened Index),
kept by their searcher (retrieval/search/searcher.py).

People repeat searches (paging, going back, a shared link, the same word typed by several
users), and a text's vector depends only on the aligner. Immich keeps such a cache of
recent CLIP text embeddings for the same reason. A hit skips the text encoder entirely
(a few milliseconds for MiniLM, tens for a ViT text tower); a miss costs a dictionary
lookup. Entries are keyed by the aligner's identity as well as the text, so one cache may
serve several aligners.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from retrieval.aligners import Aligner

#: Entries kept: 1,024 vectors of 512 floats are 2 MB.
DEFAULT_SIZE = 1024


class TextVectorCache:
    """Least-recently-used text vectors; thread-safe.

    >>> cache = TextVectorCache()
    >>> cache.encode(aligner, ["a red bicycle", "a dog"]).shape   # doctest: +SKIP
    (2, 384)
    """

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def encode(self, aligner: Aligner, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 vectors of `texts`: cached ones looked up, the rest encoded in one call."""
        texts = list(texts)
        if self.size <= 0 or not texts:
            return aligner.encode_texts(texts)
        identity = aligner.identity
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for text in texts:
                vector = self._vectors.get((identity, text))
                if vector is not None:
                    self._vectors.move_to_end((identity, text))
                    found[text] = vector
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            encoded = np.asarray(aligner.encode_texts(missing), np.float32)
            with self._lock:
                for text, vector in zip(missing, encoded):
                    vector = vector.copy()
                    vector.setflags(write=False)  # shared by every later hit: nobody may change it
                    found[text] = self._vectors[(identity, text)] = vector
                while len(self._vectors) > self.size:
                    self._vectors.popitem(last=False)
        with self._lock:
            self.hits += len(texts) - len(missing)
            self.misses += len(missing)
        return np.stack([found[t] for t in texts])

    def clear(self) -> None:
        with self._lock:
            self._vectors.clear()
