"""The Python API; it mirrors the CLI one to one.

    >>> from retrieval.api import build_index, open_index
    >>> build_index(["~/Pictures"], index="photos").line()       # doctest: +SKIP
    'added 812, updated 0, moved 0, removed 0, skipped 3, unchanged 0, encoded 809 in 61.2s'
    >>> [h.path for h in open_index("photos").search("a dog on a beach", k=3)]  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.aligners.base import Aligner
from retrieval.errors import RetrievalError
from retrieval.ingest.pipeline import IndexSettings, RunSummary
from retrieval.progress import Progress
from retrieval.search.by_person import person_hits
from retrieval.search.filters import Filters, photo_counts
from retrieval.search.ordering import Order
from retrieval.search.query import Hit, Query, query_vector, search_vectors
from retrieval.search.searcher import Searcher
from retrieval.search.settings import SearchSettings
from retrieval.search.textcache import TextVectorCache
from retrieval.storage import frames
from retrieval.storage.catalog import CATALOG_FILE
from retrieval.storage.faces import counts as face_counts
from retrieval.storage.faults import explained
from retrieval.storage.store import IndexStore, resolve


def build_index(
    folders: list[str | Path],
    index: str = "default",
    model: str | None = None,
    *,
    captions: str | Path | None = None,
    settings: IndexSettings | None = None,
    progress: Progress | None = None,
    ray=None,
) -> RunSummary:
    """Index `folders` (recursively) into `index`; re-runs only encode what changed.

    `ray` (a :class:`retrieval.cluster.RaySettings`) runs reading, decoding and encoding on a
    Ray cluster; folders may then be fsspec URLs the workers can read.
    """
    from retrieval.aligners import load_aligner
    from retrieval.ingest import pipeline as indexer

    source = None
    if ray is not None:
        from retrieval import cluster

        source = cluster.source(ray)  # before the model loads: a missing extra is told at once
    for folder in folders:
        if ray is not None and "://" in str(folder):
            continue  # a URL: the walk reports it if it is not there
        if not Path(folder).expanduser().exists():
            raise RetrievalError(f"folder not found: {folder}")
    if not folders and captions is None and not (resolve(index) / CATALOG_FILE).exists():
        raise RetrievalError("give at least one FOLDER to index (or --captions FILE)")
    with explained(resolve(index), "indexing"):
        store = IndexStore.open(index, create=True)
        try:
            if not folders and captions is None:
                # Nothing to read: only damaged FAISS files are rebuilt, from stored vectors (no model).
                return indexer.repair(store, settings)
            spec = model or store.model_spec or "default"
            store.refuse_other_early(spec)  # identities are compared again after loading (bind_model)
            if source is not None:
                source.start(spec)  # the cluster's encoders load the model while this process does
            aligner = load_aligner(spec)
            return indexer.run(
                store, aligner, list(folders), captions_file=captions, settings=settings, progress=progress, source=source
            )
        finally:
            if source is not None:
                source.close()
            store.close()


class Index:
    """An opened index: search it any number of times.

    `settings` (:class:`retrieval.search.settings.SearchSettings`) say what its searcher keeps
    between searches: FAISS indexes, filter columns, recent text vectors (by default all).
    """

    def __init__(self, name_or_path: str = "default", model: str | None = None, settings: SearchSettings | None = None):
        with explained(resolve(name_or_path), "opening the index"):
            self.store = IndexStore.open(name_or_path)
        self._model = model
        self._aligner: Aligner | None = None
        #: What this index keeps between its searches (retrieval/search/searcher.py).
        self.searcher = Searcher(settings)

    @property
    def aligner(self) -> Aligner:
        if self._aligner is None:
            from retrieval.aligners import load_aligner_for

            spec = self._model or self.store.model_spec
            if spec is None:
                raise RetrievalError(f"index {self.store.folder} is empty: run `retrieval index` first")
            self.store.refuse_other_early(spec)
            # An index built with an earlier `default` recipe is searched with that recipe.
            aligner = load_aligner_for(spec, self.store.catalog.get_meta("model_identity"))
            self.store.check_model(aligner)
            self._aligner = aligner
        return self._aligner

    def search(
        self, text: str | None = None, *, image: str | None = None, k: int = 10, weight: float = 0.5,
        negatives: list[str] | tuple = (), target: str = "images", filters: Filters | None = None,
        sort: str = "score", min_score: float | None = None, moments: bool = False,
    ) -> list[Hit]:
        """Rank images (or captions, with target="texts") for a text, an image, or both.

        `filters` (:class:`retrieval.search.filters.Filters`) keeps only images taken in a date range,
        under folders, by a camera, near a place, above a size or showing people: the result is the best k
        among those. When nothing passes the list is empty and :meth:`why_empty` says why.

            >>> idx.search("a beach", filters=Filters.parse(after="2023-06-01", before="2023-09-01"))  # doctest: +SKIP
            >>> idx.search("on a beach", filters=Filters.parse(people=["Alice", "Bob"]))  # doctest: +SKIP

        People (``Filters.parse(people=...)``, names or ids) must all be in the image; given alone,
        without text or image, the photos of them are listed clearest face first, or by date with
        `sort` (docs/people.md#searching-by-person).

        `sort`: "score" (best first), "date" (newest first) or "date-asc" (oldest first), by the
        date the date filters compare (EXIF, else the file's time; EXIF only with a filter's
        ``date_source="exif"``). `min_score` drops weaker matches; a date sort without it uses the
        cutoff measured for the index's model, or none for a model not measured
        (:meth:`order`, retrieval/search/ordering.py, docs/search.md#sorted-by-date).

            >>> idx.search("a birthday cake", sort="date", k=20)  # doctest: +SKIP

        A video comes back once, at its best moment: its hit has ``media == "video"`` and
        ``time`` (seconds). `moments` lists every matching moment as a hit of its own instead
        (docs/video.md).
        """
        if k < 1:
            raise RetrievalError("k must be at least 1")
        query = Query(text=text, image=image, weight=weight, negatives=list(negatives), target=target)
        with explained(self.store.folder, "reading the catalog"):
            order = self.order(sort, min_score, filters)
            order.check(self.store.catalog, target)  # a sort this index cannot answer fails before the model loads
            if filters is not None and filters.active:
                filters.clauses(self.store.catalog)  # a filter this index cannot answer fails before the model loads
        if not text and not image and filters is not None and filters.people and target == "images":
            # A person alone: nothing to compare, no model needed (retrieval/search/by_person.py).
            with explained(self.store.folder, "searching"):
                return person_hits(self.store, filters, k, order)
        vector = query_vector(self.aligner, query, self.encode_texts)
        with explained(self.store.folder, "searching"):
            return search_vectors(self.store, vector, k, target, filters, self.searcher, order, moments)[0]

    def order(self, sort: str = "score", min_score: float | None = None, filters: Filters | None = None) -> Order:
        """The order a search with these options uses: its cutoff is `min_score`, or for a date sort
        the one measured for this index's model (None where unmeasured)."""
        return Order.parse(sort=sort, min_score=min_score, model=self.store.catalog.get_meta("model"),
                           date_source=filters.date_source if filters is not None else None)

    def why_empty(self, filters: Filters) -> str:
        """One line saying which filter excluded every image."""
        from retrieval.search.filters import why_empty

        return why_empty(self.store.catalog, filters)

    def info(self) -> dict:
        with explained(self.store.folder, "reading the catalog"):
            return self._info()

    def _info(self) -> dict:
        from retrieval.ingest.publish import damaged_kinds

        catalog = self.store.catalog
        usage = self.store.disk_usage()
        damaged = sorted(damaged_kinds(self.store))
        return {
            "index": str(self.store.folder),
            "model": catalog.get_meta("model"),
            "model_identity": catalog.get_meta("model_identity"),
            "dim": catalog.dim,
            "images": catalog.count("images"),
            "skipped": catalog.count("skipped"),
            "captions": catalog.count("captions"),
            # Photo metadata the filters use (None: an index from before it; its next run reads it).
            **photo_counts(catalog),
            # Video files and the frames they were sampled into (docs/video.md); 0 and 0 for photos
            # alone, 0 for an index from before videos (opened read-only, not migrated).
            **dict(zip(("videos", "video_frames"), frames.counts(catalog.db.conn) if catalog.has_frames else (0, 0))),
            # Faces found and the people they are grouped into, hidden people included (docs/people.md);
            # 0 and 0 with faces off, or for an index from before faces (opened read-only, not migrated).
            **{key: n for key, n in face_counts(catalog).items() if key in ("faces", "people")},
            "generation": catalog.generation,
            "index_type": catalog.get_meta("index_factory"),
            "nprobe": catalog.get_meta("index_nprobe"),
            "recall_at_10_vs_exact": catalog.get_meta("index_recall_at_10"),
            # Which queries that recall holds for: near (image-like) and far (text) ones, each set on its own.
            "recall_measured_on": catalog.get_meta("index_recall_measured_on"),
            "recall_at_10_by_queries": catalog.get_meta("index_recall_by_queries"),
            # 8-bit codes pick candidates; this many per result are re-scored with exact vectors.
            "rescored_per_result": _rerank_factor(catalog.get_meta("index_factory"), catalog.get_meta("index_rerank")),
            # An index larger than memory: its inverted lists, memory-mapped from this file (retrieval.ann.ondisk).
            "lists_on_disk": _lists_file(self.store),
            "bytes_on_disk": sum(usage.values()),
            "files": usage,
            # Every FAISS file read in full and compared with the checksum published with it.
            "index_files": "ok" if not damaged else (
                f"damaged: {', '.join(damaged)} (`retrieval index --index {self.store.folder}` rebuilds "
                "it from the catalog without encoding)"
            ),
        }

    @property
    def text_cache(self) -> TextVectorCache:
        """Vectors of recent query texts (retrieval/search/textcache.py); SearchSettings.text_cache_size 0 turns it off."""
        return self.searcher.text_cache

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> normalized vectors with this index's aligner, recent ones from a cache."""
        return self.text_cache.encode(self.aligner, texts)

    def close(self) -> None:
        self.searcher.forget(self.store)
        self.store.close()


def _lists_file(store: IndexStore) -> str | None:
    lists = store.faiss_path("images", store.catalog.generation).with_suffix(".ivfdata")
    return f"{lists.name} ({lists.stat().st_size / 2**20:.0f} MB)" if lists.exists() else None


def _rerank_factor(factory: str | None, tuned: int | None) -> int | None:
    from retrieval import ann

    return (tuned or ann.DEFAULT.rerank_factor) if ann.reranks(factory) else None


def open_index(name_or_path: str = "default", model: str | None = None, settings: SearchSettings | None = None) -> Index:
    return Index(name_or_path, model=model, settings=settings)
