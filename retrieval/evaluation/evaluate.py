"""Recall@k of aligners on a captioned image set: CLIP_benchmark's protocol, exact and through the index.

Each image and each distinct caption text is encoded once per model, streaming: images
decode in worker processes (:func:`retrieval.ingest.stream.load_stream`) and only their
vectors are kept, so memory holds vectors, never decoded images. Scores are exact
(:mod:`retrieval.evaluation.metrics`); with ``through_index`` the engine's own index is also built
(:func:`retrieval.ann.build`, with the type the engine would pick for that many
vectors, or a forced factory such as ``"IVF64,Flat"``) and recall is computed from its
search results, so the cost of approximate search shows beside the exact figure.

Recall, as defined here:

- CLIP_benchmark (file datasets): text-to-image R@k is the share of caption rows whose
  image is in the top k; image-to-text R@k is the share of images with any of their
  captions in the top k.
- Shared captions (built-in sets, one class-name text for many images): equal texts are
  grouped. Text-to-image R@k is the share of distinct texts with at least one of their
  images in the top k; image-to-text R@k is the share of images whose text ranks in the
  top k among the distinct texts (R@1 = zero-shot classification accuracy). Mean average
  precision over all relevant items is reported for both directions.

    >>> report = evaluate(load_dataset("easy-vqa"), ["default"])   # doctest: +SKIP
    >>> report.models[0].exact["image_to_text"]["R@1"]              # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from retrieval.aligners.base import Aligner
from retrieval.errors import DatasetError, RetrievalError
from retrieval.evaluation import metrics
from retrieval.evaluation.datasets import Dataset
from retrieval.progress import NullProgress, Progress

log = logging.getLogger(__name__)

PROTOCOL = (
    "CLIP_benchmark: text-to-image R@k = share of captions whose image is in the top k; "
    "image-to-text R@k = share of images with any of their captions in the top k; exact search."
)
SHARED_PROTOCOL = (
    "shared captions (one text describes many images), equal texts grouped: text-to-image R@k = share of "
    "distinct texts with at least one of their images in the top k (easy when a text has many images: see mAP); "
    "image-to-text R@k = share of images whose text is among the top k distinct texts (R@1 = zero-shot "
    "classification accuracy); mAP = mean average precision over all relevant items."
)


@dataclass
class ModelResult:
    model: str
    identity: str
    dim: int
    #: {"text_to_image": {"R@1": ..., "mAP": ...}, "image_to_text": {...}}
    exact: dict
    #: Recall at every k from 1 to max(ks), per direction: the plot's curves.
    curves: dict
    through_index: dict | None = None
    seconds: dict = field(default_factory=dict)
    dump: str | None = None


@dataclass
class EvalReport:
    dataset: dict
    protocol: str
    settings: dict
    models: list[ModelResult]
    #: Images left out because they could not be decoded (``skip_unreadable``): path and reason.
    unreadable: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "settings": self.settings,
            "unreadable_skipped": len(self.unreadable),
            "unreadable": self.unreadable,
            "models": [asdict(m) for m in self.models],
        }


@dataclass
class Queries:
    """Who is relevant to whom: the texts that are queries, and positives in both directions."""

    texts: list[str]
    #: For each dataset caption row, its row in `texts`.
    caption_text: np.ndarray
    text_images: list[np.ndarray]
    image_texts: list[np.ndarray]


def queries_for(dataset: Dataset) -> Queries:
    """Caption rows as queries (CLIP_benchmark), or distinct texts when captions are shared."""
    if dataset.shared_captions:
        texts = list(dict.fromkeys(dataset.captions))
        row = {t: i for i, t in enumerate(texts)}
        caption_text = np.array([row[c] for c in dataset.captions], dtype=np.int64)
    else:
        texts = list(dataset.captions)
        caption_text = np.arange(len(texts), dtype=np.int64)
    order = np.argsort(caption_text, kind="stable")
    bounds = np.searchsorted(caption_text[order], np.arange(len(texts) + 1))
    text_images = [np.unique(dataset.caption_image[order[bounds[t] : bounds[t + 1]]]) for t in range(len(texts))]
    image_texts = [np.unique(caption_text[rows]) for rows in dataset.image_captions()]
    return Queries(texts, caption_text, text_images, image_texts)


def evaluate(
    dataset: Dataset,
    aligner_specs: Sequence[str | Aligner],
    ks: Sequence[int] = (1, 5, 10),
    through_index: bool = False,
    batch_size: int = 32,
    progress: Progress | None = None,
    dump_dir: str | Path | None = None,
    *,
    index_factory: str | None = None,
    skip_unreadable: bool = False,
    workers: int | None = None,
) -> EvalReport:
    """Evaluate each aligner (a spec string or an Aligner) on `dataset`; one report compares them.

    `index_factory` forces the FAISS index type over the images for ``through_index``
    (default: the one the engine picks for the collection size). Images that cannot be decoded raise
    :class:`DatasetError` naming them, unless `skip_unreadable` drops them (and their captions)
    for every model alike.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise RetrievalError("k must be at least 1")
    if not aligner_specs:
        raise RetrievalError("no model to evaluate")
    progress = progress or NullProgress()
    aligners = [_aligner(spec) for spec in aligner_specs]
    encoded: list[tuple[Aligner, np.ndarray, float]] = []
    unreadable: dict[int, str] = {}
    for aligner in aligners:
        started = time.monotonic()
        images, bad = encode_images(aligner, dataset, batch_size, progress, workers)
        image_seconds = time.monotonic() - started
        for i, reason in bad.items():
            unreadable.setdefault(i, reason)
        encoded.append((aligner, images, image_seconds))
    if unreadable and not skip_unreadable:
        first = min(unreadable)
        raise DatasetError(
            f"{_where(dataset, first)}: cannot read image {dataset.images[first]}: {unreadable[first]}"
            + (f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else "")
            + "; use --skip-missing to leave unreadable images out"
        )
    keep = np.setdiff1d(np.arange(len(dataset.images)), np.fromiter(unreadable, np.int64, len(unreadable)))
    data = dataset.subset(keep) if unreadable else dataset
    if not data.captions:
        raise DatasetError(f"{dataset.name}: empty dataset: every image was unreadable")
    queries = queries_for(data)
    settings = {
        "ks": ks, "through_index": through_index, "index_factory": index_factory,
        "batch_size": batch_size, "skip_unreadable": skip_unreadable,
    }
    results = []
    for n, (aligner, images, image_seconds) in enumerate(encoded):
        images = images[keep] if unreadable else images
        started = time.monotonic()
        texts = encode_texts(aligner, queries.texts, progress)
        result = ModelResult(model=aligner.spec, identity=aligner.identity, dim=aligner.dim, exact={}, curves={})
        result.seconds = {"images": round(image_seconds, 2), "texts": round(time.monotonic() - started, 2)}
        started = time.monotonic()
        result.exact, result.curves = score(images, texts, queries, ks)
        if through_index:
            result.through_index = score_through_index(images, texts, queries, ks, index_factory)
        result.seconds["scoring"] = round(time.monotonic() - started, 2)
        if dump_dir is not None:
            result.dump = str(write_dump(Path(dump_dir), n, aligner, data, images, texts, queries, result, settings))
        log.info("%s: %s", aligner.spec, result.exact)
        results.append(result)
    skipped = [{"path": dataset.images[i], "where": _where(dataset, i), "reason": r} for i, r in sorted(unreadable.items())]
    return EvalReport(
        dataset=data.describe() | {"distinct_texts_queried": len(queries.texts)},
        protocol=SHARED_PROTOCOL if data.shared_captions else PROTOCOL,
        settings=settings,
        models=results,
        unreadable=skipped,
    )


def _aligner(spec: str | Aligner) -> Aligner:
    if not isinstance(spec, str):
        return spec
    from retrieval.aligners import load_aligner

    return load_aligner(spec)


def _where(dataset: Dataset, i: int) -> str:
    return dataset.where[i] if dataset.where else dataset.name


# -- encoding -------------------------------------------------------------------
def encode_images(
    aligner: Aligner, dataset: Dataset, batch_size: int, progress: Progress, workers: int | None = None
) -> tuple[np.ndarray, dict[int, str]]:
    """(n_images, dim) vectors (zero rows for unreadable images) and {image index: reason}."""
    from retrieval.ingest.settings import IndexSettings
    from retrieval.ingest.stream import batched, load_stream

    settings = IndexSettings(batch_size=batch_size, workers=workers)
    vectors = np.zeros((len(dataset.images), aligner.dim), np.float32)
    bad: dict[int, str] = {}
    position = 0
    progress.start(len(dataset.images), f"images ({aligner.spec})")
    try:
        stream = load_stream(dataset.images, aligner.transform, frozenset(), settings)
        for batch in batched(stream, batch_size):
            good = [(position + j, item.pixels) for j, item in enumerate(batch) if item.pixels is not None]
            for j, item in enumerate(batch):
                if item.pixels is None:
                    bad[position + j] = item.error or "could not be decoded"
            if good:
                vectors[[j for j, _ in good]] = aligner.encode_images(np.stack([pixels for _, pixels in good]))
            position += len(batch)
            progress.advance(len(batch))
    finally:
        progress.close()
    return vectors, bad


def encode_texts(aligner: Aligner, texts: list[str], progress: Progress, batch_size: int = 256) -> np.ndarray:
    out = np.zeros((len(texts), aligner.dim), np.float32)
    progress.start(len(texts), f"texts ({aligner.spec})")
    try:
        for start in range(0, len(texts), batch_size):
            part = texts[start : start + batch_size]
            out[start : start + len(part)] = aligner.encode_texts(part)
            progress.advance(len(part))
    finally:
        progress.close()
    return out


# -- scoring --------------------------------------------------------------------
def score(images: np.ndarray, texts: np.ndarray, queries: Queries, ks: Sequence[int]) -> tuple[dict, dict]:
    """Exact figures for both directions (R@k and mAP) and the recall curves for k = 1..max(ks)."""
    figures, curves = {}, {}
    upto = range(1, max(ks) + 1)
    for name, q, g, positives in _directions(images, texts, queries):
        figures[name], ranks = metrics.direction(q, g, positives, ks, with_map=True)
        curves[name] = [round(v, 6) for v in metrics.recall_at(ranks, upto).values()]
    return figures, curves


def _directions(images: np.ndarray, texts: np.ndarray, queries: Queries):
    yield "text_to_image", texts, images, queries.text_images
    yield "image_to_text", images, texts, queries.image_texts


def score_through_index(
    images: np.ndarray, texts: np.ndarray, queries: Queries, ks: Sequence[int], factory: str | None = None
) -> dict:
    """Recall@k from the engine's FAISS index: built as the engine builds it, searched as it searches.

    Images go in the index type the engine picks for their number (or `factory`, to show
    the cost of approximate search); texts go in an exact index, as the engine's caption
    corpus does.
    """
    from retrieval import ann

    out: dict = {}
    k = max(ks)
    for name, q, g, positives in _directions(images, texts, queries):
        chosen = (factory or ann.factory_for(len(g))) if name == "text_to_image" else "IDMap2,Flat"
        ids = np.arange(len(g), dtype=np.int64)
        try:
            index, info = ann.build(ids, np.ascontiguousarray(g, np.float32), factory=chosen)
        except RuntimeError as exc:  # FAISS reports a bad factory string or too few training points
            raise RetrievalError(f"cannot build index {chosen!r} over {len(g)} vectors: {exc}") from None
        _, found = ann.search_ranked(
            index, q, k, factory=info.factory, lookup=functools.partial(_rows_by_id, g), rerank=info.rerank
        )
        ranks = ranks_from_results(found, positives, k)
        figures = {f"R@{kk}": v for kk, v in metrics.recall_at(ranks, ks).items()}
        out[name] = figures | {"index": info.factory, "nprobe": info.nprobe, "tuned_recall_at_10": info.recall_at_10}
    return out


def _rows_by_id(vectors: np.ndarray, ids: Iterable[int]) -> dict[int, np.ndarray]:
    # The gallery's row i is id i: exact vectors for re-ranking come straight from it.
    return {i: vectors[i] for i in ids}


def ranks_from_results(found: np.ndarray, positives: metrics.Positives, k: int) -> np.ndarray:
    """Position of the first positive in each result list, or `k` when none was returned."""
    ranks = np.full(len(found), k, dtype=np.int64)
    for row, (hits, pos) in enumerate(zip(found, positives, strict=True)):
        where = np.flatnonzero(np.isin(hits, pos))
        if len(where):
            ranks[row] = where[0]
    return ranks


# -- dumps ----------------------------------------------------------------------
def write_dump(
    root: Path, n: int, aligner, data: Dataset, images: np.ndarray, texts: np.ndarray,
    queries: Queries, result: ModelResult, settings: dict,
) -> Path:
    """Everything needed to recompute the figures without this package: one folder per model.

    ``text_embeddings.npy`` has one row per caption row (equal texts repeat), aligned with
    ``captions.json`` and ``caption_image.json``; ``image_embeddings.npy`` rows follow ``images.json``.
    """
    folder = root / f"{n:02d}-{_slug(aligner.spec)}"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "image_embeddings.npy", images)
    np.save(folder / "text_embeddings.npy", texts[queries.caption_text])
    (folder / "caption_image.json").write_text(json.dumps(data.caption_image.tolist()))
    (folder / "captions.json").write_text(json.dumps(data.captions, ensure_ascii=False))
    (folder / "images.json").write_text(json.dumps(data.images, ensure_ascii=False))
    about = {
        "model": aligner.spec, "identity": aligner.identity, "dim": aligner.dim,
        "dataset": data.describe(), "settings": settings,
        "protocol": SHARED_PROTOCOL if data.shared_captions else PROTOCOL,
        "exact": result.exact, "through_index": result.through_index,
    }
    (folder / "settings.json").write_text(json.dumps(about, indent=2))
    return folder


def short_names(specs: Sequence[str]) -> list[str]:
    """Model names for tables and plots: a checkpoint's file name instead of its full path, when unambiguous."""
    short = [_file_name(s) for s in specs]
    return short if len(set(short)) == len(set(specs)) else list(specs)


def _file_name(spec: str) -> str:
    return Path(spec).name if ("/" in spec and not spec.startswith("open_clip:")) else spec


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", _file_name(spec)).strip("_") or "model"
