"""Ranking matches: from a query to ranked hits, exactly as an index's aligner and files allow.

Owns building query vectors and ranking them against the published index (:mod:`.query`),
filters on photo metadata (:mod:`.filters`), near-duplicate groups (:mod:`.duplicates`),
contact sheets (:mod:`.sheet`), the score below which a match is weak (:mod:`.relevance`), and
what a long-lived caller keeps between searches: kept FAISS indexes, 8-bit copies, filter
columns and recent text vectors, all on a :class:`~retrieval.search.searcher.Searcher` built
from :class:`~retrieval.search.settings.SearchSettings`.

It may import ann, storage, aligners (their interface), media (decoding a query image) and the
shared root modules; never ingest or anything above search.
"""
