"""Classification and retrieval metrics in plain NumPy.

Everything here works on embeddings, scores and integer labels that are
already in memory; nothing touches TensorFlow, so these functions are cheap to
import and to test.

Conventions:
    - Confusion matrices are `[num_classes, num_classes]` integer counts with
      rows = true class and columns = predicted class.
    - Undefined ratios (a class that is never predicted has no precision, a
      class without examples has no recall) are reported as 0.0 and such
      classes are still counted in the macro averages, as scikit-learn does
      with `zero_division=0`. Classes without any test example are excluded
      from the macro averages (they say nothing about the model).
    - Ranks are 1-based. Ties are counted *pessimistically* in retrieval: a
      query's rank is 1 + the number of non-relevant items whose score is
      greater than **or equal to** the score of the best relevant item. A
      degenerate model that gives every item the same score therefore gets
      the worst possible rank, never a lucky one.
    - In classification, top-k follows the order `argmax` uses: descending
      score, ties broken by the lower class index. Top-1 accuracy is then
      exactly the accuracy of `argmax` predictions.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "confusion_matrix", "normalize_confusion", "classification_metrics", "topk_accuracy",
    "most_confused_pairs", "pair_confusion_rate", "retrieval_ranks", "recall_from_ranks",
    "retrieval_metrics", "full_matrix_ranks",
]


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) label pairs.

    Args:
        y_true: int array `[N]` of true labels in `[0, num_classes)`.
        y_pred: int array `[N]` of predicted labels in `[0, num_classes)`.
        num_classes: int, the number of classes (the matrix side).

    Returns:
        int64 array `[num_classes, num_classes]`, rows true, columns predicted.
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} has labels outside [0, {num_classes})")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def normalize_confusion(cm) -> np.ndarray:
    """Row-normalise a confusion matrix (each true class sums to 1; empty rows stay 0)."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)


def topk_accuracy(scores, labels, k: int) -> float:
    """Fraction of rows whose true label is among the `k` best-scored classes.

    Ties are broken like `np.argmax`: a class with an equal score but a lower
    index ranks first, so `topk_accuracy(s, y, 1) == mean(argmax(s) == y)`.

    Args:
        scores: float array `[N, C]`.
        labels: int array `[N]`.
        k: int, 1 <= k. Values above `C` are clipped to `C`.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} do not match")
    if scores.shape[0] == 0:
        return float("nan")
    true = scores[np.arange(len(labels)), labels][:, None]
    cols = np.arange(scores.shape[1])[None, :]
    ahead = (scores > true) | ((scores == true) & (cols < labels[:, None]))
    rank = 1 + ahead.sum(axis=1)
    return float(np.mean(rank <= k))


def classification_metrics(y_true, y_pred, num_classes: int, class_names=None,
                           scores=None) -> dict:
    """Accuracy, macro precision/recall/F1, mean per-class recall and a per-class table.

    Args:
        y_true: int array `[N]`.
        y_pred: int array `[N]`.
        num_classes: int.
        class_names: optional list of `num_classes` names for the per-class table.
        scores: optional float array `[N, C]`; when given and there are more than 5
            classes, `top5_accuracy` is computed.

    Returns:
        dict with `accuracy`, `top5_accuracy` (None without scores or with <= 5 classes),
        `precision`, `recall`, `f1`
        (macro averages over classes that have test examples), `mean_per_class_recall`
        (the same number as macro recall, also known as balanced accuracy),
        `num_examples`, `confusion_matrix` (list of lists) and `per_class`
        (list of dicts: name, support, predicted, precision, recall, f1).
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    n = int(support.sum())
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")

    def macro(values):
        return float(values[present].mean()) if present.any() else float("nan")

    top5 = None
    if scores is not None and num_classes > 5:  # with 5 classes or fewer it is always 100%
        top5 = topk_accuracy(scores, y_true, 5)
    return {
        "num_examples": n,
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "top5_accuracy": top5,
        "precision": macro(precision),
        "recall": macro(recall),
        "f1": macro(f1),
        "mean_per_class_recall": macro(recall),
        "confusion_matrix": cm.tolist(),
        "per_class": [
            {"name": names[i], "support": int(support[i]), "predicted": int(predicted[i]),
             "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i])}
            for i in range(num_classes)],
    }


def pair_confusion_rate(cm, i: int, j: int) -> float:
    """Confusion rate of an unordered class pair: `(m_ij + m_ji) / (n_i + n_j)`.

    `m_ij` counts examples of true class `i` predicted as `j` and `n_i` is the
    number of examples of class `i`. The value is the fraction of the two
    classes' examples that were mistaken for the other class of the pair (0 =
    never confused, 1 = always swapped). Earlier reports called this an "IoU";
    it is not an intersection over union, so it is named a confusion rate here.
    """
    cm = np.asarray(cm)
    n = cm[i].sum() + cm[j].sum()
    return float((cm[i, j] + cm[j, i]) / n) if n else 0.0


def most_confused_pairs(cm, class_names=None, k: int = 10) -> list[dict]:
    """The `k` unordered class pairs with the highest confusion rate.

    Pairs that were never confused are left out. Ties in the rate are broken
    by the larger number of confusions, then by class index.

    Returns:
        list of dicts: `a`, `b` (names), `a_as_b` (`m_ab`), `b_as_a` (`m_ba`),
        `n_a`, `n_b`, `confusion_rate`.
    """
    cm = np.asarray(cm, dtype=np.int64)
    c = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    support = cm.sum(axis=1)
    iu, ju = np.triu_indices(c, k=1)
    confusions = cm[iu, ju] + cm[ju, iu]
    totals = support[iu] + support[ju]
    rates = np.divide(confusions, totals, out=np.zeros(len(iu)), where=totals > 0)
    keep = confusions > 0
    order = sorted(np.flatnonzero(keep), key=lambda p: (-rates[p], -confusions[p], iu[p], ju[p]))
    out = []
    for p in order[:k]:
        a, b = int(iu[p]), int(ju[p])
        out.append({"a": names[a], "b": names[b], "a_as_b": int(cm[a, b]),
                    "b_as_a": int(cm[b, a]), "n_a": int(support[a]), "n_b": int(support[b]),
                    "confusion_rate": float(rates[p])})
    return out


# --------------------------------------------------------------------------- retrieval


def _check_retrieval_inputs(image_emb, text_emb, caption_image_index):
    image_emb = np.asarray(image_emb)
    text_emb = np.asarray(text_emb)
    g = np.asarray(caption_image_index, dtype=np.int64).ravel()
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"embedding shapes {image_emb.shape} and {text_emb.shape} do not match")
    if g.shape[0] != text_emb.shape[0]:
        raise ValueError(f"{g.shape[0]} caption image indices for {text_emb.shape[0]} captions")
    if g.size and (g.min() < 0 or g.max() >= image_emb.shape[0]):
        raise ValueError("caption_image_index refers to images outside the gallery")
    return image_emb, text_emb, g


def full_matrix_ranks(image_emb, text_emb, caption_image_index):
    """Reference ranks from the whole `[num_images, num_captions]` similarity matrix.

    Same definition as `retrieval_ranks` (pessimistic ties); only for small
    galleries and tests, since it materialises the full matrix.

    Returns:
        `(image_ranks, text_ranks)`: image→text rank per image that has at least
        one caption (in image order), text→image rank per caption.
    """
    image_emb, text_emb, g = _check_retrieval_inputs(image_emb, text_emb, caption_image_index)
    sim = image_emb @ text_emb.T
    n_img, n_txt = sim.shape
    pos = sim[g, np.arange(n_txt)]
    relevant = np.zeros((n_img, n_txt), dtype=bool)
    relevant[g, np.arange(n_txt)] = True
    text_ranks = 1 + ((sim >= pos[None, :]) & ~relevant).sum(axis=0)
    has = np.bincount(g, minlength=n_img) > 0
    best = np.where(relevant, sim, -np.inf).max(axis=1)
    image_ranks = 1 + ((sim >= best[:, None]) & ~relevant).sum(axis=1)
    return image_ranks[has].astype(np.int64), text_ranks.astype(np.int64)


def retrieval_ranks(image_emb, text_emb, caption_image_index, *, image_chunk: int = 2048,
                    text_chunk: int = 16384, progress: bool = False):
    """Image→text and text→image ranks over a whole gallery, in bounded memory.

    Similarities are dot products (the embeddings are expected L2-normalised,
    so these are cosines). The matrix is computed in `[image_chunk,
    text_chunk]` blocks; peak extra memory is a few such blocks (about
    `image_chunk * text_chunk * 6` bytes), independent of the gallery size.

    Ranks (1-based, pessimistic ties):
        - image→text, per image with at least one caption: 1 + the number of
          captions *of other images* scoring >= the image's best own caption.
          "Hit at K" then means that one of its captions is in the top K.
        - text→image, per caption: 1 + the number of other images scoring >=
          the caption's own image.

    Exactness: every score that is compared comes out of the same block
    product, computed identically in both passes (the positive scores are read
    from the very blocks that are counted), so the result equals
    `full_matrix_ranks` whenever the block products equal the full product,
    in particular always when the products are exact (the tests use such data).

    Args:
        image_emb: float array `[num_images, D]`.
        text_emb: float array `[num_captions, D]`.
        caption_image_index: int array `[num_captions]`, the gallery image of each caption.
        image_chunk: int, rows per block.
        text_chunk: int, columns per block.
        progress: bool, show a tqdm progress bar.

    Returns:
        `(image_ranks, text_ranks)` int64 arrays as in `full_matrix_ranks`.
    """
    image_emb, text_emb, g = _check_retrieval_inputs(image_emb, text_emb, caption_image_index)
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    dtype = np.result_type(image_emb.dtype, text_emb.dtype, np.float32)
    image_emb = image_emb.astype(dtype, copy=False)
    text_emb = text_emb.astype(dtype, copy=False)
    image_chunk = max(1, int(image_chunk))
    text_chunk = max(1, int(text_chunk))
    row_starts = range(0, n_img, image_chunk)
    col_starts = range(0, n_txt, text_chunk)

    def block(r0, c0):
        return image_emb[r0:r0 + image_chunk] @ text_emb[c0:c0 + text_chunk].T

    # Pass 1: the positive score of every caption, read from the blocks that hold it.
    pos = np.empty(n_txt, dtype=dtype)
    row_chunk_of_caption = g // image_chunk
    for c0 in col_starts:
        cols = np.arange(c0, min(c0 + text_chunk, n_txt))
        for rc in np.unique(row_chunk_of_caption[cols]):
            r0 = int(rc) * image_chunk
            sel = cols[row_chunk_of_caption[cols] == rc]
            sim = block(r0, c0)
            pos[sel] = sim[g[sel] - r0, sel - c0]
    best = np.full(n_img, -np.inf, dtype=dtype)
    np.maximum.at(best, g, pos)
    # Relevant captions tying the best own score are not competitors: count and remove them.
    own_ties = np.bincount(g, weights=(pos >= best[g]).astype(np.float64),
                           minlength=n_img).astype(np.int64)

    # Pass 2: count competitors block by block.
    img_ahead = np.zeros(n_img, dtype=np.int64)
    txt_ahead = np.zeros(n_txt, dtype=np.int64)
    from records.progress import progress_bar

    bar = progress_bar(len(row_starts) * len(col_starts), desc="retrieval blocks",
                       unit="block", enabled=progress)
    for r0 in row_starts:
        r1 = min(r0 + image_chunk, n_img)
        best_r = best[r0:r1, None]
        for c0 in col_starts:
            c1 = min(c0 + text_chunk, n_txt)
            sim = block(r0, c0)
            img_ahead[r0:r1] += np.count_nonzero(sim >= best_r, axis=1)
            txt_ahead[c0:c1] += np.count_nonzero(sim >= pos[None, c0:c1], axis=0)
            bar.update(1)
    bar.close()
    has = np.bincount(g, minlength=n_img) > 0
    image_ranks = 1 + img_ahead - own_ties  # remove the image's own tying captions
    text_ranks = txt_ahead  # includes the caption's own image exactly once: 1 + others
    return image_ranks[has].astype(np.int64), text_ranks.astype(np.int64)


def recall_from_ranks(ranks, ks=(1, 5, 10)) -> dict:
    """`{"R@k": fraction of ranks <= k, "median_rank", "mean_rank", "num_queries"}`."""
    ranks = np.asarray(ranks)
    out = {f"R@{k}": float(np.mean(ranks <= k)) if ranks.size else float("nan") for k in ks}
    out["median_rank"] = float(np.median(ranks)) if ranks.size else float("nan")
    out["mean_rank"] = float(np.mean(ranks)) if ranks.size else float("nan")
    out["num_queries"] = int(ranks.size)
    return out


def retrieval_metrics(image_emb, text_emb, caption_image_index, ks=(1, 5, 10), **chunk_kwargs):
    """Recall@K, median and mean rank in both directions over the whole gallery.

    Args:
        image_emb, text_emb, caption_image_index: as in `retrieval_ranks`.
        ks: the K of Recall@K. Each must be at most the gallery size of its direction.
        **chunk_kwargs: `image_chunk`, `text_chunk`, `progress` for `retrieval_ranks`.

    Returns:
        dict with `image_to_text` and `text_to_image` (each from `recall_from_ranks`),
        `num_images`, `num_captions` and `ties` (the tie rule, as text).
    """
    n_img, n_txt = len(image_emb), len(text_emb)
    for k in ks:
        if k < 1 or k > n_img or k > n_txt:
            raise ValueError(f"Recall@{k} needs at least {k} images and {k} captions in the "
                             f"gallery; it has {n_img} images and {n_txt} captions")
    image_ranks, text_ranks = retrieval_ranks(image_emb, text_emb, caption_image_index,
                                              **chunk_kwargs)
    return {
        "image_to_text": recall_from_ranks(image_ranks, ks),
        "text_to_image": recall_from_ranks(text_ranks, ks),
        "num_images": int(n_img),
        "num_captions": int(n_txt),
        "ties": "pessimistic: items scoring equal to the best relevant item rank ahead of it",
    }
