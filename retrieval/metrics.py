"""Retrieval metrics on embeddings, with CLIP_benchmark's definitions.

- text-to-image R@k: over every caption, the share whose image is in the top k;
- image-to-text R@k: over every image, the share with *any* of its captions in the top k.

Both come from one quantity: for each query, the rank of its best-scoring positive
(0 = first). A hit at k means that rank < k. Scores are computed in chunks of queries,
so a 25,000 x 5,000 evaluation never holds the full score matrix.

Where one caption is shared by many images (class-name captions), text-to-image R@k
still asks for *one* relevant image in the top k, which is easy; mean average precision
over all relevant items is reported beside it because it is not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CHUNK = 1024


def best_positive_ranks(
    queries: np.ndarray, gallery: np.ndarray, positives: Sequence[Sequence[int]], chunk: int = CHUNK
) -> np.ndarray:
    """For each query, how many gallery items score strictly above its best positive."""
    ranks = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ gallery.T
        for row, pos in enumerate(positives[start : start + chunk]):
            if len(pos) == 0:
                raise ValueError(f"query {start + row} has no positive")
            best = scores[row, np.asarray(pos)].max()
            ranks[start + row] = int((scores[row] > best).sum())
    return ranks


def recall_at(ranks: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    return {int(k): float((ranks < k).mean()) for k in ks}


def mean_average_precision(
    queries: np.ndarray, gallery: np.ndarray, positives: Sequence[Sequence[int]], chunk: int = CHUNK
) -> float:
    """Mean over queries of the average precision of the full ranking of the gallery."""
    total = 0.0
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ gallery.T
        order = np.argsort(-scores, axis=1, kind="stable")
        for row, pos in enumerate(positives[start : start + chunk]):
            relevant = np.zeros(gallery.shape[0], dtype=bool)
            relevant[np.asarray(pos)] = True
            hits = relevant[order[row]]
            positions = np.flatnonzero(hits) + 1  # 1-based ranks of the relevant items
            total += float((np.arange(1, len(positions) + 1) / positions).mean())
    return total / len(queries)


def invert(caption_image: np.ndarray, n_images: int) -> list[np.ndarray]:
    """From each caption's image index to each image's caption indices."""
    order = np.argsort(caption_image, kind="stable")
    bounds = np.searchsorted(caption_image[order], np.arange(n_images + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(n_images)]


def retrieval_metrics(
    image_vectors: np.ndarray,
    text_vectors: np.ndarray,
    caption_image: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    with_map: bool = False,
) -> dict:
    """Both directions of CLIP_benchmark's protocol on normalized embeddings.

    `caption_image[i]` is the index (into `image_vectors`) of caption i's image. When
    captions are shared text (one row per (image, caption) pair with equal texts), pass
    the pairs; see ``evaluate.py`` for grouping shared captions.
    """
    caption_image = np.asarray(caption_image, dtype=np.int64)
    t2i_pos = [[int(i)] for i in caption_image]
    i2t_pos = invert(caption_image, len(image_vectors))
    t2i = best_positive_ranks(text_vectors, image_vectors, t2i_pos)
    i2t = best_positive_ranks(image_vectors, text_vectors, i2t_pos)
    out = {
        "text_to_image": {f"R@{k}": v for k, v in recall_at(t2i, ks).items()},
        "image_to_text": {f"R@{k}": v for k, v in recall_at(i2t, ks).items()},
    }
    if with_map:
        out["text_to_image"]["mAP"] = mean_average_precision(text_vectors, image_vectors, t2i_pos)
        out["image_to_text"]["mAP"] = mean_average_precision(image_vectors, text_vectors, i2t_pos)
    return out
