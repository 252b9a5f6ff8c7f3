"""Recall and mAP: hand-computed cases, and equality with CLIP_benchmark's own recall function."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.evaluation.metrics import (
    average_precisions,
    best_positive_ranks,
    metrics_for,
    recall_at,
    retrieval_metrics,
)


def unit(*rows) -> np.ndarray:
    v = np.asarray(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_recall_by_hand():
    # Three images at 0, 60 and 120 degrees; four captions, two of them for image 0.
    angles = np.radians([0, 60, 120])
    images = unit(*[(np.cos(a), np.sin(a)) for a in angles])
    texts = unit(
        (1, 0.05),       # caption 0 -> image 0: closest is image 0            rank 0
        (-1, 1.2),       # caption 1 -> image 0: order 2, 1, 0                  rank 2
        (0.5, 0.9),      # caption 2 -> image 1: closest is image 1            rank 0
        (0.9, 0.3),      # caption 3 -> image 2: order 0, 1, 2                  rank 2
    )
    caption_image = np.array([0, 0, 1, 2])
    m = retrieval_metrics(images, texts, caption_image, ks=(1, 2, 3))
    assert m["text_to_image"] == {"R@1": 0.5, "R@2": 0.5, "R@3": 1.0}
    # image 0: caption 0 first (rank 0); image 1: caption 2 first (rank 0);
    # image 2 (120 degrees) orders the captions 1, 2, 3, 0: its caption 3 has rank 2
    assert best_positive_ranks(images, texts, [[0, 1], [2], [3]]).tolist() == [0, 0, 2]
    assert m["image_to_text"] == {"R@1": 2 / 3, "R@2": 2 / 3, "R@3": 1.0}


def test_recall_at_counts_ranks_below_k():
    assert recall_at(np.array([0, 1, 4, 9]), (1, 5, 10)) == {1: 0.25, 5: 0.75, 10: 1.0}


def test_average_precision_by_hand():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]], np.float32)  # one query, ranking = gallery order
    gallery = np.eye(5, dtype=np.float32)
    # positives at positions 1 and 3 (1-based): AP = (1/1 + 2/3) / 2
    assert average_precisions(scores, gallery, [[0, 2]])[0] == pytest.approx((1 + 2 / 3) / 2)
    # one positive at position 4: AP = 1/4
    assert average_precisions(scores, gallery, [[3]])[0] == pytest.approx(0.25)


def test_ties_favour_the_positive():
    gallery = unit((1, 0), (1, 0), (0, 1))
    query = unit((1, 0))
    assert best_positive_ranks(query, gallery, [[1]]).tolist() == [0]
    assert average_precisions(query, gallery, [[1]])[0] == 1.0


def brute_force_ap(query: np.ndarray, gallery: np.ndarray, positives) -> float:
    order = np.argsort(-(gallery @ query), kind="stable")
    relevant = np.isin(order, positives)
    positions = np.flatnonzero(relevant) + 1
    return float((np.arange(1, len(positions) + 1) / positions).mean())


@pytest.mark.parametrize("n_pos", [1, 3, 40])  # 40 takes the sorted path, the others the direct one
def test_average_precision_matches_a_full_sort(n_pos):
    rng = np.random.default_rng(n_pos)
    queries, gallery = unit(*rng.normal(size=(30, 16))), unit(*rng.normal(size=(200, 16)))
    positives = [rng.choice(200, n_pos, replace=False) for _ in range(30)]
    got = average_precisions(queries, gallery, positives, chunk=7)
    want = [brute_force_ap(q, gallery, p) for q, p in zip(queries, positives, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_chunking_does_not_change_ranks():
    rng = np.random.default_rng(3)
    queries, gallery = unit(*rng.normal(size=(50, 8))), unit(*rng.normal(size=(40, 8)))
    positives = [[i % 40] for i in range(50)]
    assert (best_positive_ranks(queries, gallery, positives, chunk=3) == best_positive_ranks(queries, gallery, positives)).all()


def test_query_without_positive_is_an_error():
    with pytest.raises(ValueError, match="query 1 has no positive"):
        best_positive_ranks(unit((1, 0), (0, 1)), unit((1, 0)), [[0], []])


def test_equal_to_clip_benchmark_recall_on_random_embeddings():
    torch = pytest.importorskip("torch")
    # A test dependency (PyPI clip-benchmark); its zero-shot retrieval module needs only torch and tqdm.
    from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k

    rng = np.random.default_rng(0)
    n_images, dim = 120, 32
    caption_image = np.concatenate([np.arange(n_images), rng.integers(0, n_images, 3 * n_images)])  # 1 to ~8 captions each
    # Noisy copies of image vectors, so recall is neither 0 nor 1.
    images = unit(*rng.normal(size=(n_images, dim)))
    texts = unit(*(images[caption_image] + rng.normal(scale=0.5, size=(len(caption_image), dim))))
    ks = (1, 5, 10, 50)
    ours = retrieval_metrics(images, texts, caption_image, ks=ks)

    # CLIP_benchmark's evaluate(), from the embeddings on.
    scores = torch.from_numpy(texts) @ torch.from_numpy(images).T
    positive_pairs = torch.zeros_like(scores, dtype=torch.bool)
    positive_pairs[torch.arange(len(scores)), torch.from_numpy(caption_image)] = True
    for k in ks:
        t2i = (recall_at_k(scores, positive_pairs, k) > 0).float().mean().item()
        i2t = (recall_at_k(scores.T, positive_pairs.T, k) > 0).float().mean().item()
        # CLIP_benchmark averages in float32; a one-query difference would be >= 1/480
        assert ours["text_to_image"][f"R@{k}"] == pytest.approx(t2i, abs=1e-6), k
        assert ours["image_to_text"][f"R@{k}"] == pytest.approx(i2t, abs=1e-6), k
    assert 0.1 < ours["text_to_image"]["R@1"] < 0.9


def test_metrics_for_groups_shared_texts():
    # Two class texts, four images: images 0, 1 are class A, images 2, 3 class B.
    images = unit((1, 0.1), (1, -0.1), (0.1, 1), (0.8, 0.7))
    texts = unit((1, 0), (0, 1))
    m = metrics_for(images, texts, [[0, 1], [2, 3]], [[0], [0], [1], [1]], ks=(1,), with_map=True)
    assert m["text_to_image"]["R@1"] == 1.0  # each text's best image is one of its own
    assert m["image_to_text"]["R@1"] == 0.75  # image 3 is closer to text A
    # text B ranks images 2, 3, 0/1...: image 3 (0.7/|.|) vs images 0, 1 (~0.1): AP 1; text A: 0, 1 then 3: AP 1
    assert m["text_to_image"]["mAP"] == 1.0
    assert m["image_to_text"]["mAP"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)
