"""The served indexes, and the searches the HTTP routes ask for, through the same retrieval.api as the CLI.

Everything here runs on the query thread (:mod:`retrieval.server.batcher`): it owns the
catalogs' SQLite connections and makes every model and FAISS call. Routes build a
:class:`SearchSpec`, hand it over, and get a JSON-ready dict back.

Generations: each search reads the catalog's current generation inside one snapshot
(:func:`retrieval.search.query.search_vectors`), so a generation that ``retrieval index`` has just
published is seen by the next query, and a half-published one never.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.api import Index, open_index
from retrieval.errors import IndexNotFound, RetrievalError
from retrieval.search import query as engine
from retrieval.search import relevance
from retrieval.search.by_person import person_hits
from retrieval.search.filters import Filters
from retrieval.storage import frames
from retrieval.storage.store import resolve

log = logging.getLogger(__name__)


#: Largest id a client may name: the largest integer every JSON reader holds exactly (a double's
#: 53 bits: JavaScript's, and the float comparison a schema validator makes against `maximum`).
MAX_ID = 2**53 - 1


class NotFound(RetrievalError):
    """An index, image or file the client named does not exist (HTTP 404)."""


@dataclass
class SearchSpec:
    index: str | None = None
    q: str | None = None
    like: list[int] = field(default_factory=list)
    like_weights: list[float] | None = None
    weight: float = 0.5
    negatives: list[str] = field(default_factory=list)
    target: str = "images"
    k: int = 24
    offset: int = 0
    #: An uploaded query image, decoded and preprocessed for the index's aligner by the route,
    #: off the query thread (retrieval/server/uploads.py): (3, H, W) pixels.
    image: np.ndarray | None = None
    #: A query vector given as is (clip-retrieval's embedding_input).
    vector: list[float] | None = None
    #: Dates, camera, place, size (retrieval.search.filters.Filters); None: no filter.
    filters: Filters | None = None
    #: Folders as the client gave them (relative to the indexed folders, or absolute).
    folders: list[str] = field(default_factory=list)
    #: The order (retrieval.search.ordering.Order): "score", "date" or "date-asc", and a cutoff
    #: (None: for a date sort, the one measured for the index's model).
    sort: str = "score"
    min_score: float | None = None
    #: Which dates the date sort counts ("any" or "exif"), as the date filters do.
    date_source: str = "any"

    @property
    def text_only(self) -> bool:
        """A plain text query: these are the ones micro-batched together."""
        ordered = self.sort != "score" or self.min_score is not None
        return bool(self.q) and not (self.like or self.negatives or self.image is not None or self.vector or self.filters
                                     or self.folders or ordered)

    @property
    def person_only(self) -> bool:
        """People named and nothing to compare with: their photos are listed, not ranked by a vector."""
        return (self.filters is not None and bool(self.filters.people) and self.target == "images" and not self.q
                and not self.like and self.image is None and self.vector is None)

    def echo(self, index: str) -> dict:
        out = {"index": index, "target": self.target, "k": self.k, "offset": self.offset}
        if self.q:
            out["q"] = self.q
        if self.like:
            out["like"] = self.like
        if self.like_weights:
            out["like_weights"] = self.like_weights
        if self.negatives:
            out["not"] = self.negatives
        if self.image is not None:
            out["image"] = "upload"
        if (self.q or self.negatives) and (self.like or self.image is not None):
            out["weight"] = self.weight
        if self.filters is not None:
            out.update(self.filters.describe())
        if self.folders:
            out["folder"] = self.folders
        if self.sort != "score":
            out["sort"] = self.sort
        if self.min_score is not None:
            out["min_score"] = self.min_score
        return out


def served_name(spec: str) -> str:
    """The name an index is served under: as given, or its folder's name for a path."""
    value = str(spec).rstrip("/\\")
    return Path(value).name if os.sep in value or value.startswith((".", "~")) else value


class Served:
    """One index opened for serving; its aligner is loaded once and shared."""

    def __init__(self, name: str, spec: str):
        self.name = name
        #: Given as a path: `--index NAME` would name another index, so commands suggested for it say PATH.
        self.by_path = name != str(spec)
        self.index: Index = open_index(spec)
        self.store = self.index.store
        self.folder = self.store.folder
        #: The aligner is loaded (by the query thread): the encoder thread may encode texts.
        self.aligner_ready = False

    @property
    def catalog(self):
        return self.store.catalog

    def empty(self) -> bool:
        return self.catalog.generation == 0

    def roots(self) -> list[str] | None:
        """The folders this index was built from (None for an index built before they were recorded)."""
        return self.catalog.get_meta("roots")

    def summary(self) -> dict:
        catalog = self.catalog
        return {
            "name": self.name, "images": catalog.count("images"), "captions": catalog.count("captions"),
            "videos": frames.counts(catalog.db.conn)[0] if catalog.has_frames else 0,
            "model": catalog.get_meta("model"), "generation": catalog.generation, "dim": catalog.dim,
            "by_path": self.by_path,
            "weak_below": relevance.weak_below(catalog.get_meta("model")),
            "date_cutoff": relevance.date_cutoff(catalog.get_meta("model")),
        }


class Library:
    """The served indexes, by name. Construct and use on the query thread only."""

    def __init__(self, specs: list[str], absolute_paths: bool = False):
        self.absolute_paths = absolute_paths
        self.indexes: dict[str, Served] = {}
        #: name -> (generation and FAISS file keys, info): see :meth:`info`.
        self._info: dict[str, tuple[tuple, dict]] = {}
        for spec in specs:
            name = served_name(spec)
            if name in self.indexes:
                raise RetrievalError(f"two indexes would be served as {name!r}: give one of them by another path")
            if not (resolve(spec) / "catalog.db").exists():
                raise IndexNotFound(f"no index at {resolve(spec)}. Build one with: retrieval index FOLDER --index {spec}")
            self.indexes[name] = Served(name, spec)

    @property
    def names(self) -> list[str]:
        return list(self.indexes)

    def get(self, name: str | None) -> Served:
        if not name:
            return next(iter(self.indexes.values()))
        try:
            return self.indexes[name]
        except KeyError:
            raise NotFound(f"no index named {name!r} is served here (served: {', '.join(self.indexes)})") from None

    def close(self) -> None:
        for served in self.indexes.values():
            served.index.close()

    def warm(self) -> None:
        """Load each index's aligner and FAISS index now, so the first queries do not wait for them.

        Two searches: the second makes the 8-bit copy of an exact index (retrieval/ann/quickscan.py).
        """
        for served in self.indexes.values():
            if served.empty():
                continue
            try:
                vector = served.index.encode_texts(["warm up"])
                served.aligner_ready = True
                for _ in range(2):
                    engine.search_vectors(served.store, vector, 1, searcher=served.index.searcher)
            except RetrievalError as exc:  # each search will say it again, to the client that asks
                log.warning("index %s: %s", served.name, exc)

    # -- searching -----------------------------------------------------------------
    def search(self, spec: SearchSpec) -> dict:
        served = self.get(spec.index)
        if served.empty():
            return self._response(served, spec, [], None)
        filters = self.filters_for(served, spec)
        order = served.index.order(spec.sort, spec.min_score, replace(filters or Filters(), date_source=spec.date_source))
        order.check(served.catalog, spec.target)  # before encoding anything
        # The cutoff in effect is echoed; a person alone is listed by face score or date, nothing cut.
        spec = replace(spec, min_score=None if spec.person_only else order.min_score)
        if spec.person_only:  # nothing to compare: the person's photos (retrieval/search/by_person.py)
            assert filters is not None
            found = person_hits(served.store, filters, spec.offset + spec.k + 1, order)
            more = len(found) > spec.offset + spec.k
            hits = [replace(h, rank=spec.offset + i + 1) for i, h in enumerate(found[spec.offset : spec.offset + spec.k])]
            next_offset = spec.offset + spec.k if more else None
        else:
            vector = self.query_vector(served, spec)
            [(hits, next_offset)] = engine.search_page(
                served.store, vector, spec.k, spec.offset, spec.target, filters, served.index.searcher, order
            )
        response = self._response(served, spec, hits, next_offset)
        if filters is not None and not hits and spec.offset == 0:
            from retrieval.search.filters import why_empty

            note = why_empty(served.store.catalog, filters)  # nothing passed: say which filter
            if spec.folders and not self.absolute_paths:  # the folders as the client gave them, not as resolved
                note = note.replace(" / ".join(filters.folders), " / ".join(spec.folders))
            response["note"] = self.scrub(note)
        return response

    def filters_for(self, served: Served, spec: SearchSpec) -> Filters | None:
        """The spec's filters plus its folders, a relative one placed under each indexed folder.

        A folder is resolved (symlinks followed) and must lie inside an indexed folder: a client
        learns nothing of what a path outside them resolves to (issue 24, item 21).
        """
        if not spec.folders:
            return spec.filters
        roots = served.roots()
        if not roots:
            raise RetrievalError("this index does not list its folders yet: re-run `retrieval index` once to filter by folder")
        real_roots = [Path(root).resolve() for root in roots]
        places = []
        for folder in spec.folders:
            if "\x00" in folder or ".." in Path(folder).parts:
                raise RetrievalError(f"folder {folder!r}: give a folder inside the indexed folders, without '..'")
            candidates = [Path(folder)] if os.path.isabs(folder) else [Path(root) / folder for root in roots]
            inside = [str(real) for real in map(_real, candidates)
                      if real is not None and any(real == root or real.is_relative_to(root) for root in real_roots)]
            if not inside:
                raise RetrievalError(f"folder {folder!r} is not inside the indexed folders")
            places += inside
        return replace(spec.filters or Filters(), folders=Filters.parse(folders=places).folders)

    def encode_texts(self, key: tuple[str, str], specs: list[SearchSpec]) -> np.ndarray | None:
        """The query vectors of a batch of plain text queries, or None to leave it to :meth:`search_texts`.

        Runs on the encoder thread (retrieval/server/batcher.py), so it reads no catalog: it
        encodes only once the query thread has loaded the index's aligner (which reads one).
        """
        served = self.indexes.get(key[0])
        if served is None or not served.aligner_ready:
            return None
        return served.index.encode_texts(_texts(specs))

    def search_texts(self, key: tuple[str, str], specs: list[SearchSpec], vectors: np.ndarray | None = None) -> list[dict]:
        """Plain text queries against one index and target: one encoder call, one FAISS call."""
        served = self.get(key[0])
        if served.empty():
            return [self._response(served, s, [], None) for s in specs]
        if vectors is None:
            vectors = served.index.encode_texts(_texts(specs))
            served.aligner_ready = True
        fetch = max(s.offset + s.k + 1 for s in specs)
        out = []
        found = engine.search_vectors(served.store, vectors, fetch, key[1], searcher=served.index.searcher)
        for s, hits in zip(specs, found):
            more = len(hits) > s.offset + s.k
            out.append(self._response(served, s, hits[s.offset : s.offset + s.k], s.offset + s.k if more else None))
        return out

    def query_vector(self, served: Served, spec: SearchSpec) -> np.ndarray:
        """Text part and image part (upload and/or stored images), fused by `weight`, minus the negatives."""
        if spec.vector is not None:
            if len(spec.vector) != served.catalog.dim:
                raise RetrievalError(f"the embedding has {len(spec.vector)} numbers; this index uses {served.catalog.dim}")
            return engine.fuse([(1.0, np.asarray(spec.vector, np.float32))])
        images, weights = [], []
        if spec.image is not None:
            images.append(served.index.aligner.encode_images(spec.image[None])[0])
            weights.append(1.0)
        if spec.like:
            try:
                images.extend(engine.stored_image_vectors(served.store, spec.like))
            except RetrievalError as exc:  # an id that is not in the index
                raise NotFound(str(exc)) from None
            weights.extend(spec.like_weights or [1.0] * len(spec.like))
        if len(weights) != len(images):
            raise RetrievalError(f"give one like_weight per liked image: {len(spec.like)} images")
        if images and sum(weights) <= 0:
            raise RetrievalError("the like_weights must not all be zero")
        parts = []
        if spec.q:
            parts.append((1.0 - spec.weight if images else 1.0, served.index.encode_texts([spec.q])[0]))
        if images:
            parts.append((spec.weight if spec.q else 1.0, engine.weighted_mean(np.stack(images), weights)))
        if not parts:
            raise RetrievalError("give q (a text), like (image ids) or an image to search with")
        if spec.negatives:
            parts.append((-0.5, served.index.encode_texts(spec.negatives).mean(axis=0)))
        return engine.fuse(parts)

    def _response(self, served: Served, spec: SearchSpec, hits: list, next_offset: int | None) -> dict:
        return {
            "query": spec.echo(served.name),
            "results": self.describe_hits(served, hits),
            "offset": spec.offset,
            "next_offset": next_offset,
        }

    def describe_hits(self, served: Served, hits: list) -> list[dict]:
        rows = served.catalog.rows_by_id("images", [h.id for h in hits if h.path is not None])
        out = []
        for hit in hits:
            item = {"rank": hit.rank, "id": hit.id, "score": hit.score}
            if hit.path is None:
                item["text"] = hit.text
                out.append(item)
                continue
            row = rows.get(hit.id, {})
            item.update(
                path=self.show_path(served, hit.path),
                thumb=f"/api/thumb/{hit.id}?index={served.name}&size=256",
                url=f"/api/image/{hit.id}?index={served.name}",
                width=row.get("width"), height=row.get("height"),
            )
            if hit.date_source is not None:  # a date filter: the date it passed with, as `search --json` says
                item.update(taken=hit.taken, date_source=hit.date_source)
            if hit.time is not None:  # a video's moment: the page shows that frame and plays from there
                item.update(media="video", time=hit.time)
                item["thumb"] = f"{item['thumb']}&t={round(hit.time, 3)}"
            if hit.companions:  # a RAW+JPEG pair's RAW, as `search --json` lists it
                item["companions"] = [self.show_path(served, p) for p in hit.companions]
            if hit.motion:  # a Live Photo's motion file
                item["motion"] = self.show_path(served, hit.motion)
            out.append(item)
        return out

    # -- paths and records ---------------------------------------------------------------
    def show_path(self, served: Served, path: str) -> str:
        """The path relative to its indexed folder (absolute only with --absolute-paths)."""
        return path if self.absolute_paths else relative_to_roots(path, served.roots())

    def image_row(self, index: str | None, image_id: int) -> tuple[Served, dict]:
        served = self.get(index)
        row = served.catalog.rows_by_id("images", [image_id]).get(image_id)
        if row is None:
            raise NotFound(f"no image with id {image_id} in index {served.name}")
        return served, row

    def info(self, index: str | None) -> dict:
        """What `retrieval info --json` says, computed once per published file set.

        It reads every FAISS file in full to check it against its published checksum (150 MB at
        100,000 vectors, gigabytes at millions), so the server asks for it on a thread of its own,
        never the query thread, and keeps the answer until the generation or a file changes.
        """
        served = self.get(index)
        key = (served.catalog.generation, _file_keys(served))
        cached = self._info.get(served.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        data = served.index.info()
        data = {k: self.scrub(v) if isinstance(v, str) else v for k, v in data.items()}
        self._info[served.name] = (key, data)
        return data

    def scrub(self, text: str) -> str:
        """An engine message (error or note) as a client may see it: each served index's folder
        becomes its served name, and a path in an indexed folder becomes relative to it, as result
        paths are shown (unchanged with --absolute-paths). The engine words its messages for the
        CLI's user, who owns those folders; a client of the server is told only what it may name."""
        if self.absolute_paths:
            return text
        places = {}
        for served in self.indexes.values():
            try:
                roots = served.roots() or []
            except (RetrievalError, sqlite3.Error):  # the message may be about this very catalog failing
                roots = []
            places.update({root: (Path(root).name, "") for root in roots})
        places.update({str(s.folder): (s.name, s.name + os.sep) for s in self.indexes.values()})
        return hide_folders(text, places)

    def summaries(self) -> list[dict]:
        return [s.summary() for s in self.indexes.values()]


#: How routes reach the library: ``await run(fn)`` is ``fn(library)`` run on the query thread.
Run = Callable[[Callable[[Library], Any]], Awaitable[Any]]


def _real(path: Path) -> Path | None:
    """`path` with every symlink followed; None for a symlink loop or an unreadable place."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return None


def _texts(specs: list[SearchSpec]) -> list[str]:
    """The texts of plain text queries (``SearchSpec.text_only``: each has one)."""
    return [s.q or "" for s in specs]


def _file_keys(served: Served) -> tuple:
    """Name, inode, size and modification time of each FAISS file of the index (a rebuilt file differs)."""
    keys = []
    for path in sorted(served.folder.glob("*.faiss")):
        try:
            st = path.stat()
        except FileNotFoundError:  # pruned meanwhile
            continue
        keys.append((path.name, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(keys)


def relative_to_roots(path: str, roots: list[str] | None) -> str:
    """`path` relative to the deepest indexed folder holding it; the bare file name otherwise."""
    best = None
    for root in roots or []:
        if path == root:
            return Path(path).name
        prefix = root.rstrip(os.sep) + os.sep
        if path.startswith(prefix) and (best is None or len(root) > len(best)):
            best = root
    return os.path.relpath(path, best) if best else Path(path).name


def hide_folders(text: str, places: dict[str, tuple[str, str]]) -> str:
    """`text` with every mention of a folder in `places` replaced: `{folder: (alone, before_a_path)}`
    gives what shows for the folder itself, and what replaces ``folder/`` in front of a path under it.
    The deepest folder wins; ``/a/b`` is not taken for a part of ``/a/bc``."""
    folders = sorted((f.rstrip(os.sep) for f in places if f.rstrip(os.sep)), key=len, reverse=True)
    if not folders:
        return text
    lookup = {f.rstrip(os.sep): shown for f, shown in places.items()}
    sep = re.escape(os.sep)
    # Not followed by more of a name (a full stop ending a sentence is not part of one).
    pattern = re.compile(f"({'|'.join(map(re.escape, folders))})(?:({sep})|(?![\\w-]|\\.\\w))")
    return pattern.sub(lambda m: lookup[m[1]][1] if m[2] else lookup[m[1]][0], text)
