"""The choices the index code makes by size and target, in one frozen value passed to it.

Every function that reads one takes ``settings: AnnSettings = DEFAULT``: tests and benchmarks
build an index of another type or tune it another way by passing their own settings, never by
assigning module globals. The defaults are the engine's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AnnSettings:
    #: Up to this many vectors the index is exact (``IDMap2,Flat``): an exact scan answers a
    #: query in a few milliseconds on this class of machine (benchmarks/bench_search.py), so
    #: approximation buys nothing. Above it, an inverted file.
    exact_limit: int = 200_000
    #: Recall@10 against exact search that each tuning query set must reach.
    target_recall: float = 0.99
    #: Candidates fetched per result from an index of 8-bit codes, then re-scored exactly: the
    #: least, and the width of indexes built before it was tuned. The build's tuning may choose
    #: a wider one from `rerank_choices` (IndexInfo.rerank, stored in the catalog as index_rerank).
    rerank_factor: int = 4
    rerank_choices: tuple[int, ...] = (4, 8, 16, 32)
    #: Near-duplicate pairs: up to this many vectors the index itself answers the range search
    #: (an exhaustive scan, a few seconds at most); above it a coarse IVF built for the purpose.
    pairs_exact_limit: int = 4_000
    #: Lists probed per vector in that IVF: near-duplicates sit in the same or a next cell.
    pairs_nprobe: int = 4
    #: Below this many vectors an exact scan is a millisecond or two: no 8-bit copy is made
    #: (retrieval/ann/quickscan.py).
    quick_min: int = 20_000
    #: From this many queries in one call, the 8-bit copy's owner searches the batch exactly by
    #: one BLAS product instead (retrieval/ann/quickscan.py).
    quick_batch_exact: int = 16


#: The engine's settings.
DEFAULT = AnnSettings()
