"""Retrieval metrics on embeddings, with CLIP_benchmark's definitions.

- text-to-image R@k: over every caption, the share whose image is in the top k;
- image-to-text R@k: over every image, the share with *any* of its captions in the top k.

Both come from one quantity: for each query, the rank of its best-scoring positive
(0 = first). A hit at k means that rank < k. Scores are computed in chunks of queries,
so a 25,000 x 5,000 evaluation never holds the full score matrix.

Ties: a gallery item scoring exactly as high as a query's best positive does not push it
down (an optimistic order). CLIP_benchmark breaks ties by ``torch.topk``'s order; with
real embeddings exact ties do not occur, and the figures are equal
(``tests/test_metrics.py`` checks against CLIP_benchmark's own function).

Where one caption is shared by many images (class-name captions), the caller groups
equal texts and passes each text's images as its positives (:func:`metrics_for`):
text-to-image R@k then asks for *one* relevant image in the top k, which is easy; mean
average precision over all relevant items is reported beside it because it is not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Each query's relevant gallery rows: lists of ints or int arrays (:func:`invert` makes arrays).
Positives = Sequence["Sequence[int] | np.ndarray"]

#: Score-matrix cells per chunk (16M float32 = 64 MB) whatever the gallery size.
CHUNK_CELLS = 1 << 24


def _chunk_rows(gallery_size: int, chunk: int | None) -> int:
    return chunk or max(1, min(4096, CHUNK_CELLS // max(1, gallery_size)))


def best_positive_ranks(
    queries: np.ndarray, gallery: np.ndarray, positives: Positives, chunk: int | None = None
) -> np.ndarray:
    """For each query, how many gallery items score strictly above its best positive."""
    if len(positives) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(positives)} positive lists")
    return _rank_and_ap(queries, gallery, positives, chunk, with_ap=False)[0]


def _rank_and_ap(
    queries: np.ndarray, gallery: np.ndarray, positives: Positives, chunk: int | None, with_ap: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """One pass over the score matrix, a chunk of queries at a time."""
    ranks = np.empty(len(queries), dtype=np.int64)
    aps = np.empty(len(queries), dtype=np.float64) if with_ap else None
    rows = _chunk_rows(len(gallery), chunk)
    for start in range(0, len(queries), rows):
        scores = queries[start : start + rows] @ gallery.T
        for row, pos in enumerate(positives[start : start + rows]):
            if len(pos) == 0:
                raise ValueError(f"query {start + row} has no positive")
            rows_of = np.asarray(pos, dtype=np.int64)
            best = scores[row, rows_of].max()
            ranks[start + row] = int((scores[row] > best).sum())
            if aps is not None:
                aps[start + row] = _average_precision(scores[row], np.unique(rows_of))
    return ranks, aps


def recall_at(ranks: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Share of queries whose best positive ranks within the top k, for each k."""
    return {int(k): float((ranks < k).mean()) for k in ks}


def average_precisions(
    queries: np.ndarray, gallery: np.ndarray, positives: Positives, chunk: int | None = None
) -> np.ndarray:
    """Average precision of each query's full ranking of the gallery (positives first on ties)."""
    aps = _rank_and_ap(queries, gallery, positives, chunk, with_ap=True)[1]
    assert aps is not None  # with_ap=True computes them
    return aps


def _average_precision(scores: np.ndarray, pos: np.ndarray) -> float:
    if len(pos) == 0:
        raise ValueError("a query has no positive")
    pos_scores = np.sort(scores[pos])[::-1]
    if len(pos) <= 16:
        above_all = (scores[None, :] > pos_scores[:, None]).sum(axis=1)
    else:  # many positives (a class of 1,000 images): one sort beats P x G comparisons
        ordered = np.sort(scores)
        above_all = len(scores) - np.searchsorted(ordered, pos_scores, side="right")
    above_pos = len(pos) - np.searchsorted(pos_scores[::-1], pos_scores, side="right")
    hits = np.arange(1, len(pos) + 1)
    # The i-th positive sits after every negative scoring above it and the i-1 positives before it.
    positions = above_all - above_pos + hits
    return float((hits / positions).mean())


def mean_average_precision(
    queries: np.ndarray, gallery: np.ndarray, positives: Positives, chunk: int | None = None
) -> float:
    """Mean over queries of the average precision of the full ranking of the gallery."""
    return float(average_precisions(queries, gallery, positives, chunk).mean())


def invert(caption_image: np.ndarray, n_images: int) -> list[np.ndarray]:
    """From each caption's image index to each image's caption indices."""
    caption_image = np.asarray(caption_image, dtype=np.int64)
    order = np.argsort(caption_image, kind="stable")
    bounds = np.searchsorted(caption_image[order], np.arange(n_images + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(n_images)]


def direction(
    queries: np.ndarray,
    gallery: np.ndarray,
    positives: Positives,
    ks: Sequence[int] = (1, 5, 10),
    with_map: bool = False,
) -> tuple[dict[str, float], np.ndarray]:
    """One direction's figures (``{"R@1": ..., "mAP": ...}``) and the best-positive ranks."""
    ranks, aps = _rank_and_ap(queries, gallery, positives, None, with_ap=with_map)
    out = {f"R@{k}": v for k, v in recall_at(ranks, ks).items()}
    if aps is not None:  # with_map
        out["mAP"] = float(aps.mean())
    return out, ranks


def metrics_for(
    image_vectors: np.ndarray,
    text_vectors: np.ndarray,
    text_images: Positives,
    image_texts: Positives,
    ks: Sequence[int] = (1, 5, 10),
    with_map: bool = False,
) -> dict:
    """Both directions, given each text's relevant images and each image's relevant texts."""
    t2i, _ = direction(text_vectors, image_vectors, text_images, ks, with_map)
    i2t, _ = direction(image_vectors, text_vectors, image_texts, ks, with_map)
    return {"text_to_image": t2i, "image_to_text": i2t}


def retrieval_metrics(
    image_vectors: np.ndarray,
    text_vectors: np.ndarray,
    caption_image: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    with_map: bool = False,
) -> dict:
    """Both directions of CLIP_benchmark's protocol on normalized embeddings.

    `caption_image[i]` is the index (into `image_vectors`) of caption i's image; every
    caption row is a query of its own. For shared captions group equal texts first
    and call :func:`metrics_for` (``retrieval.evaluation.evaluate`` does).

    >>> rng = np.random.default_rng(0)
    >>> images = rng.normal(size=(4, 8)).astype(np.float32)
    >>> retrieval_metrics(images, images[[0, 0, 1, 2, 3]], [0, 0, 1, 2, 3], ks=(1,))["text_to_image"]
    {'R@1': 1.0}
    """
    caption_image = np.asarray(caption_image, dtype=np.int64)
    text_images = [[int(i)] for i in caption_image]
    image_texts = invert(caption_image, len(image_vectors))
    return metrics_for(image_vectors, text_vectors, text_images, image_texts, ks, with_map)
