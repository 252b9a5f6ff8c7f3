"""How a long-lived searcher keeps what it has read between searches (retrieval/search/searcher.py)."""

from __future__ import annotations

from dataclasses import dataclass

from retrieval.ann import DEFAULT as ANN_DEFAULT
from retrieval.ann import AnnSettings
from retrieval.search.textcache import DEFAULT_SIZE


@dataclass(frozen=True)
class SearchSettings:
    """The defaults are the engine's; benchmarks and tests turn parts off to compare.

        >>> SearchSettings(keep_loaded=False)   # every search reads its FAISS file again
    """

    #: Keep each kind's FAISS index loaded while its file is the same one (retrieval/search/resident.py);
    #: off: every search reads it again.
    keep_loaded: bool = True
    #: Keep an 8-bit copy of a kept exact index and scan it first (retrieval/ann/quickscan.py);
    #: off: a kept exact index is always scanned in full. Needs `keep_loaded`.
    quick_scan: bool = True
    #: The index code's choices the kept copies follow (from what size an exact index gets an 8-bit copy).
    ann: AnnSettings = ANN_DEFAULT
    #: Evaluate filters on a generation's columns kept in memory (retrieval/search/filters/columns.py);
    #: off: always in SQL.
    filter_columns: bool = True
    #: Vectors of recent query texts kept (retrieval/search/textcache.py); 0: none.
    text_cache_size: int = DEFAULT_SIZE
