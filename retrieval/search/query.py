"""Ranking cross-modal matches: build a query vector, search the derived index, map ids to rows.

A query is a weighted fusion of modalities: text and/or image vectors, minus concepts
to push away. Every search reads one published generation: the catalog snapshot and
the FAISS file of that generation belong together.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from retrieval import ann
from retrieval.aligners.base import Aligner, normalize
from retrieval.errors import RetrievalError
from retrieval.search import filters as filtered
from retrieval.search import resident
from retrieval.search.filters import Filters
from retrieval.search.ordering import Order
from retrieval.search.searcher import Searcher
from retrieval.storage import frames, integrity
from retrieval.storage.catalog import Catalog
from retrieval.storage.store import IndexStore

log = logging.getLogger(__name__)


@dataclass
class Query:
    text: str | None = None
    image: str | None = None
    #: Share of the image in a text + image query.
    weight: float = 0.5
    negatives: list[str] = field(default_factory=list)
    #: How hard each negative pushes (its vector is subtracted with this weight).
    negative_weight: float = 0.5
    #: "images" or "texts" (the caption corpus).
    target: str = "images"

    def describe(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v not in (None, [])}
        if self.image:
            out["image"] = str(Path(self.image).expanduser().resolve())
        return out


@dataclass
class Hit:
    rank: int
    id: int
    score: float
    path: str | None = None
    text: str | None = None
    #: With a date filter or a date sort: the date it compared, and "exif" or "file" (the file's modification time).
    taken: str | None = None
    date_source: str | None = None
    #: A photo's other files, only when it has some: the RAW of a RAW+JPEG pair, a Live Photo's motion file.
    companions: list[str] | None = None
    motion: str | None = None

    #: A video's hit: "video", and the seconds into it of its best moment (of this moment, when
    #: every moment is listed). None for a photo, whose hits stay as they were.
    media: str | None = None
    time: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def query_vector(
    aligner: Aligner, query: Query, encode_texts: Callable[[list[str]], np.ndarray] | None = None
) -> np.ndarray:
    """The normalized weighted sum of the query's parts.

    `encode_texts` (texts -> vectors) replaces the aligner's own, e.g. by a cache of recent ones.
    """
    encode_texts = encode_texts or aligner.encode_texts
    if not query.text and not query.image:
        raise RetrievalError("give a text, an --image, or both")
    if not 0.0 <= query.weight <= 1.0:
        raise RetrievalError(f"--weight must be between 0 and 1, got {query.weight}")
    parts = []
    if query.text:
        parts.append((1.0 - query.weight if query.image else 1.0, encode_texts([query.text])[0]))
    if query.image:
        parts.append((query.weight if query.text else 1.0, encode_image_file(aligner, query.image)))
    if query.negatives:
        negatives = encode_texts(list(query.negatives)).mean(axis=0)
        parts.append((-query.negative_weight, negatives))
    return normalize(_weighted_sum(parts)[None, :])


def encode_image_file(aligner: Aligner, path: str) -> np.ndarray:
    from retrieval.media.decode import load

    item = load(str(Path(path).expanduser()), aligner.transform, draft=True)
    for note in item.notes:
        log.info("%s: %s", path, note)
    if item.error or item.pixels is None:
        raise RetrievalError(f"cannot use {path} as a query image: {item.error or 'nothing decoded'}")
    if item.times is not None:  # a video: what its sampled frames show together
        return normalize(aligner.encode_images(item.pixels.astype(np.float32)).mean(axis=0)[None, :])[0]
    return aligner.encode_images(item.pixels[None])[0]


def search_vectors(
    store: IndexStore, vectors: np.ndarray, k: int, target: str = "images", filters: Filters | None = None,
    searcher: Searcher | None = None, order: Order | None = None, moments: bool = False,
) -> list[list[Hit]]:
    """Top-k hits for each query vector, from one consistent generation of the index.

    A video is one hit, at its best moment (``media`` and ``time`` say which): enough frames
    are fetched that k files come back. With `moments`, every matching frame is a hit of its
    own instead (its file's id, its own time).

    With `filters`, the best k among the images that pass them (retrieval/search/filters/).
    `searcher`: what a long-lived caller keeps between searches (retrieval/search/searcher.py);
    None: a one-shot search, which keeps nothing. `order` (retrieval/search/ordering.py): a
    cutoff, and the date sort, which considers more matches than k; None: best first, all kept.
    """
    if target not in ("images", "texts"):
        raise RetrievalError(f"unknown search target {target!r}")
    order = order if order is not None and not order.plain else None
    wanted, k = k, order.fetch(k) if order is not None else k
    filters = filters if filters is not None and filters.active else None
    if filters is not None and target != "images":
        raise RetrievalError("filters (dates, folders, cameras, places, sizes) apply to images, not to captions")
    kind, table = ("images", "images") if target == "images" else ("captions", "captions")
    catalog = store.catalog
    if order is not None:
        order.check(catalog, target)
    with catalog.snapshot():
        generation = catalog.generation
        path = store.faiss_path(kind, generation)
        if not path.exists():
            if kind == "captions" and not catalog.count("captions"):
                raise RetrievalError(
                    f"index {store.folder} holds no captions; add some with: "
                    f"retrieval index --captions FILE --index {store.folder}"
                )
            if generation == 0:
                return [[] for _ in vectors]
        integrity.check_or_raise(catalog.db.conn, path, verified=catalog.verified_files)
        try:
            # A searcher keeps it loaded while the file is the same one (retrieval/search/resident.py).
            index = searcher.faiss_for(store, kind, path) if searcher is not None else resident.read(path)
        except RuntimeError as exc:  # FAISS cannot parse it: damaged in a way size and mtime did not show
            log.debug("FAISS cannot read %s: %s", path, exc)
            raise integrity.damaged(path, "cannot be read by FAISS (truncated or damaged)") from None
        factory = catalog.get_meta("index_factory") if kind == "images" else None
        # Candidates re-scored per result, as the build tuned it (None: an index from before).
        rerank = catalog.get_meta("index_rerank") if kind == "images" else None
        quick = searcher.quick_scan(store, kind, index) if searcher is not None else None
        def ranked(fetch: int) -> tuple[np.ndarray, np.ndarray]:
            if filters is not None:  # a broad filter over-fetches from the 8-bit copy, where there is one
                found = filtered.search(
                    catalog, index, vectors, fetch, filters, factory=factory, rerank=rerank, quick=quick,
                    searcher=searcher,
                )
                return found.scores, found.ids
            if quick is not None:  # a long-lived caller's exact index: its 8-bit copy first (retrieval/ann/quickscan.py)
                return quick.search(vectors, fetch)
            return ann.search_ranked(
                index, vectors, fetch, factory=factory, lookup=catalog.image_vectors_by_id, rerank=rerank
            )

        videos = kind == "images" and _holds_videos(catalog)
        fetch = k * VIDEO_FETCH if videos and not moments else k
        scores, ids = ranked(fetch)
        # One video's frames took the places of other files: fetch more, while there are more.
        while videos and not moments and ids.shape[1] >= fetch and fetch < index.ntotal and not _enough_files(ids, k):
            fetch = min(index.ntotal, fetch * 4)
            scores, ids = ranked(fetch)
        times = frames.times(catalog.db.conn, [i for i in ids.ravel().tolist() if i >= 0]) if videos else {}
        if videos:
            ids, frame_ids = frames.file_ids(ids), ids
        else:
            frame_ids = ids
        rows = catalog.rows_by_id(table, [i for i in ids.ravel().tolist() if i >= 0])
        # A date filter says which date each hit passed with, and whether it is the file's own time;
        # a date sort orders by them.
        dated = (filters is not None and filters.dated) or (order is not None and order.by_date)
        dates = catalog.dates_by_id(list(rows)) if dated else {}
    results = []
    for qscores, qids, qframes in zip(scores, ids, frame_ids):
        hits: list[Hit] = []
        seen: set[int] = set()
        for score, id_, frame_id in zip(qscores.tolist(), qids.tolist(), qframes.tolist()):
            row = rows.get(id_)
            if id_ < 0 or row is None or (id_ in seen and not moments):
                continue  # a video's later moments rank below its best one
            seen.add(id_)
            moment = times.get(frame_id)
            taken, source = dates.get(id_, (None, None))
            hits.append(Hit(
                rank=len(hits) + 1, id=int(id_), score=round(float(score), 6), path=row.get("path"), text=row.get("text"),
                taken=taken, date_source=None if source is None else "exif" if source == "exif" else "file",
                companions=json.loads(row["companions"]) if row.get("companions") else None, motion=row.get("motion"),
                media=None if moment is None else "video", time=None if moment is None else round(moment, 3),
            ))
        hits = hits[:k]
        if order is not None:
            hits = [replace(h, rank=i + 1) for i, h in enumerate(order.apply(hits, wanted))]
        results.append(hits)
    return results


#: A search of an index holding videos asks for this many times k candidates at first: a video's
#: frames near the query crowd each other, and k files must remain once they are grouped.
VIDEO_FETCH = 4


def _holds_videos(catalog: Catalog) -> bool:
    """Whether any indexed content is a video (one lookup in a partial index)."""
    return catalog.has_frames and catalog.db.execute(
        "SELECT 1 FROM vectors WHERE frames IS NOT NULL LIMIT 1").fetchone() is not None


def _enough_files(ids: np.ndarray, k: int) -> bool:
    """Whether every query's candidates hold k distinct files (or are all there is)."""
    for row in ids:
        found = row[row >= 0]
        if len(found) == len(row) and len(np.unique(frames.file_ids(found))) < k:
            return False
    return True


# -- building blocks for long-lived callers (the server) ---------------------------------
def stored_image_vectors(store: IndexStore, ids: list[int]) -> np.ndarray:
    """The stored vectors of indexed images, in the order given: "more like this" without re-encoding."""
    found = store.catalog.image_vectors_by_id(ids)
    missing = [i for i in ids if i not in found]
    if missing:
        raise RetrievalError(f"no image with id {missing[0]} in index {store.folder.name}")
    return np.stack([found[i] for i in ids])


def image_vector_from_bytes(aligner: Aligner, data: bytes) -> np.ndarray:
    """Encode an image held in memory (an upload); nothing touches the disk.

    Pillow's own limit only stops images twice its MAX_IMAGE_PIXELS; here anything above the
    limit itself is refused, before the pixels are decoded.
    """
    from PIL import Image, UnidentifiedImageError

    from retrieval.media.decode import DECODE_ERRORS, decode, draft_size

    try:
        with warnings.catch_warnings():  # the size is checked here, more strictly than Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
        if width * height > (Image.MAX_IMAGE_PIXELS or float("inf")):
            raise RetrievalError(f"image too large to decode ({width}x{height} pixels)")
        with warnings.catch_warnings(record=True) as caught:  # Pillow's words go to the log, not stderr
            image, _ = decode(data, draft_to=draft_size(aligner.transform))
        for said in dict.fromkeys(str(w.message) for w in caught):
            log.info("uploaded image: %s", said)
        pixels = aligner.transform(image)
    except Image.DecompressionBombError:
        raise RetrievalError("image too large to decode (decompression bomb)") from None
    except UnidentifiedImageError:
        from retrieval.media.files import unreadable_kind

        kind = unreadable_kind(data)
        raise RetrievalError(f"the uploaded file is {kind}" if kind else "the uploaded file is not an image Pillow can read") from None
    except DECODE_ERRORS as exc:
        raise RetrievalError(f"the uploaded image is corrupt or truncated: {exc}") from None
    return aligner.encode_images(pixels[None])[0]


def fuse(parts: list[tuple[float, np.ndarray]]) -> np.ndarray:
    """The normalized weighted sum of (weight, vector) parts, as a (1, d) query."""
    if not parts:
        raise RetrievalError("give a text, an image, or both")
    return normalize(_weighted_sum([(w, np.asarray(v, np.float32)) for w, v in parts])[None, :])


def _weighted_sum(parts: list[tuple[float, np.ndarray]]) -> np.ndarray:
    """The sum of weight x vector over `parts` (at least one), added in order."""
    total = parts[0][0] * parts[0][1]
    for weight, vector in parts[1:]:
        total = total + weight * vector
    return total


def weighted_mean(vectors: np.ndarray, weights: list[float] | None = None) -> np.ndarray:
    """One vector standing for several images (weights default to equal)."""
    if weights is None:
        weights = [1.0] * len(vectors)
    if len(weights) != len(vectors):
        raise RetrievalError(f"give one weight per image: {len(vectors)} images, {len(weights)} weights")
    return normalize((np.asarray(weights, np.float32)[:, None] * vectors).sum(axis=0)[None, :])[0]


def search_page(
    store: IndexStore, vectors: np.ndarray, k: int, offset: int = 0, target: str = "images",
    filters: Filters | None = None, searcher: Searcher | None = None, order: Order | None = None,
    moments: bool = False,
) -> list[tuple[list[Hit], int | None]]:
    """Hits ranked offset+1 .. offset+k for each query, and the offset of the next page (None at the end).

    One extra hit is fetched to know whether a next page exists; ranks keep counting from the top.
    A date sort considers the same candidates for every page (retrieval/search/ordering.py), so
    pages follow on.
    """
    pages = []
    for hits in search_vectors(store, vectors, offset + k + 1, target, filters, searcher, order, moments):
        more = len(hits) > offset + k
        pages.append((hits[offset : offset + k], offset + k if more else None))
    return pages
