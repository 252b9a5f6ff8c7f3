"""What a long-lived caller (an opened Index, the server) keeps between its searches.

Four things are worth keeping, each read or computed once and reused while it stays true:

- the FAISS index of each kind, and an 8-bit copy of an exact one (retrieval/search/resident.py);
- a generation's filterable columns as numpy arrays (retrieval/search/filters/columns.py);
- the vectors of recent query texts (retrieval/search/textcache.py);
- the photos of people searched for lately (retrieval/search/filters/people.py).

A search given no searcher keeps none of them: it reads its FAISS file, evaluates a filter
in SQL and encodes its text, as a one-shot command should.

    >>> searcher = Searcher(SearchSettings(quick_scan=False))           # doctest: +SKIP
    >>> search_vectors(store, vectors, 10, searcher=searcher)            # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrieval.ann.quickscan import QuickScan
from retrieval.search.filters.columns import Columns, ColumnsCache
from retrieval.search.filters.people import PeopleMasks
from retrieval.search.resident import ResidentIndexes
from retrieval.search.settings import SearchSettings
from retrieval.search.textcache import TextVectorCache
from retrieval.storage.catalog import Catalog
from retrieval.storage.store import IndexStore


class Searcher:
    """Kept FAISS indexes, filter columns and text vectors, as `settings` say; thread-safe."""

    def __init__(self, settings: SearchSettings | None = None):
        self.settings = settings or SearchSettings()
        self.indexes = ResidentIndexes(self.settings.keep_loaded, self.settings.quick_scan, self.settings.ann)
        self.columns = ColumnsCache() if self.settings.filter_columns else None
        self.text_cache = TextVectorCache(self.settings.text_cache_size)
        #: The photos of people searched for lately, while the catalog is unchanged (filters/people.py).
        self.people = PeopleMasks()

    def faiss_for(self, store: IndexStore, kind: str, path: Path) -> Any:
        """The FAISS index in `path`, kept loaded while the file is the same one (see :mod:`resident`)."""
        return self.indexes.faiss_for(store, kind, path)

    def quick_scan(self, store: IndexStore, kind: str, index: Any) -> QuickScan | None:
        """The 8-bit copy of a kept exact index, from its second search on (see :mod:`resident`)."""
        return self.indexes.quick_scan(store, kind, index)

    def columns_for(self, catalog: Catalog, wait: bool = False) -> Columns | None:
        """The filter columns of the catalog's current generation, or None while they are read (or off)."""
        return self.columns.columns_for(catalog, wait) if self.columns is not None else None

    def forget(self, store: IndexStore) -> None:
        """Drop what is kept for `store` (when it closes)."""
        self.indexes.forget(store)
        if self.columns is not None:
            self.columns.forget(store.catalog)
