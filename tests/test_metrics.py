"""Metrics against hand-computed small cases; chunked retrieval equals the full matrix."""

import numpy as np
import pytest

from dualencoder.eval import metrics


def test_confusion_and_prf_hand_computed():
    # 3 classes. true: 0 0 0 1 1 2 ; pred: 0 1 0 1 2 2
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 1, 0, 1, 2, 2]
    cm = metrics.confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    m = metrics.classification_metrics(y_true, y_pred, 3, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # precision: a 2/2, b 1/2, c 1/2 ; recall: a 2/3, b 1/2, c 1/1
    p = [1.0, 0.5, 0.5]
    r = [2 / 3, 0.5, 1.0]
    f = [2 * x * y / (x + y) for x, y in zip(p, r)]
    assert m["precision"] == pytest.approx(np.mean(p))
    assert m["recall"] == pytest.approx(np.mean(r))
    assert m["mean_per_class_recall"] == pytest.approx(np.mean(r))
    assert m["f1"] == pytest.approx(np.mean(f))
    assert [c["support"] for c in m["per_class"]] == [3, 2, 1]
    assert m["per_class"][1]["f1"] == pytest.approx(0.5)


def test_never_predicted_class_has_zero_precision_and_absent_class_is_ignored():
    # class 2 has no examples: left out of the macro average; class 1 never predicted.
    m = metrics.classification_metrics([0, 1], [0, 0], 3)
    assert m["per_class"][1]["precision"] == 0.0
    assert m["precision"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["recall"] == pytest.approx((1.0 + 0.0) / 2)


def test_normalize_confusion_rows_sum_to_one():
    cm = np.array([[2, 2], [0, 0]])
    n = metrics.normalize_confusion(cm)
    assert n.tolist() == [[0.5, 0.5], [0.0, 0.0]]


def test_topk_ties_follow_argmax():
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 0.2, 0.2], [0.1, 0.5, 0.3]])
    labels = np.array([1, 2, 2])
    top1 = metrics.topk_accuracy(scores, labels, 1)
    assert top1 == pytest.approx(np.mean(scores.argmax(1) == labels))
    assert metrics.topk_accuracy(scores, labels, 2) == pytest.approx(1.0)


def test_pair_confusion_rate_and_ranking():
    # n = [10, 10, 5]; m01 = 3, m10 = 1 -> (3+1)/20 = 0.2 ; m21 = 2 -> 2/15
    cm = np.array([[7, 3, 0], [1, 9, 0], [0, 2, 3]])
    assert metrics.pair_confusion_rate(cm, 0, 1) == pytest.approx(0.2)
    assert metrics.pair_confusion_rate(cm, 1, 2) == pytest.approx(2 / 15)
    pairs = metrics.most_confused_pairs(cm, ["x", "y", "z"], k=10)
    assert [(p["a"], p["b"]) for p in pairs] == [("x", "y"), ("y", "z")]  # (x, z) never confused
    assert pairs[0]["a_as_b"] == 3 and pairs[0]["b_as_a"] == 1
    assert pairs[0]["confusion_rate"] == pytest.approx(0.2)


def test_retrieval_ranks_hand_computed_with_ties():
    # 3 images, 4 captions; one-hot-ish exact embeddings so every product is exact.
    img = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32)  # images 0 and 2 identical
    txt = np.array([[1, 0], [0, 1], [1, 0], [0.5, 0.5]], dtype=np.float32)
    g = np.array([0, 1, 2, 2])
    ir, tr = metrics.retrieval_ranks(img, txt, g, image_chunk=2, text_chunk=3)
    # caption 0 (img 0): img 2 ties at 1.0 -> pessimistic rank 2. caption 1: rank 1.
    # caption 2 (img 2): img 0 ties -> 2. caption 3 (img 2, score .5): all three tie -> 3.
    assert tr.tolist() == [2, 1, 2, 3]
    # image 0: best own 1.0; caption 2 (other image) ties -> 2. image 1: 1.
    # image 2: best own 1.0 (caption 2); caption 0 ties -> 2.
    assert ir.tolist() == [2, 1, 2]
    fir, ftr = metrics.full_matrix_ranks(img, txt, g)
    assert fir.tolist() == ir.tolist() and ftr.tolist() == tr.tolist()


@pytest.mark.parametrize("chunks", [(1, 1), (3, 7), (16, 5), (1000, 1000), (7, 64)])
def test_chunked_ranks_equal_full_matrix_with_many_ties(chunks):
    rng = np.random.default_rng(0)
    # Values on a coarse grid: dot products are exact in float32 and ties are frequent.
    img = rng.integers(-2, 3, size=(40, 6)).astype(np.float32) / 4
    img[10:15] = img[0]  # duplicate images
    n_txt = 130
    g = np.sort(rng.integers(0, 40, size=n_txt))
    g[rng.permutation(n_txt)[:20]] = rng.integers(0, 40, size=20)  # some out of order
    txt = rng.integers(-2, 3, size=(n_txt, 6)).astype(np.float32) / 4
    txt[100:110] = txt[3]  # duplicate captions
    ir, tr = metrics.retrieval_ranks(img, txt, g, image_chunk=chunks[0], text_chunk=chunks[1])
    fir, ftr = metrics.full_matrix_ranks(img, txt, g)
    np.testing.assert_array_equal(ir, fir)
    np.testing.assert_array_equal(tr, ftr)
    # Images without captions are no image->text queries, but stay in the gallery.
    assert len(ir) == len(np.unique(g))


def test_degenerate_constant_scores_get_worst_rank():
    img = np.ones((5, 3), np.float32)
    txt = np.ones((10, 3), np.float32)
    g = np.repeat(np.arange(5), 2)
    ir, tr = metrics.retrieval_ranks(img, txt, g)
    assert (tr == 5).all()  # 4 other images tie
    assert (ir == 9).all()  # 8 captions of other images tie
    m = metrics.retrieval_metrics(img, txt, g, ks=(1, 5))
    assert m["text_to_image"]["R@1"] == 0.0 and m["text_to_image"]["R@5"] == 1.0
    assert m["image_to_text"]["median_rank"] == 9.0


def test_perfect_retrieval_and_k_too_large():
    img = np.eye(4, dtype=np.float32)
    txt = np.repeat(img, 2, axis=0)
    g = np.repeat(np.arange(4), 2)
    m = metrics.retrieval_metrics(img, txt, g, ks=(1,))
    assert m["image_to_text"]["R@1"] == 1.0 and m["text_to_image"]["mean_rank"] == 1.0
    with pytest.raises(ValueError, match="Recall@5"):
        metrics.retrieval_metrics(img, txt, g, ks=(1, 5))
