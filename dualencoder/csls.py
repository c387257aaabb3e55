"""Hubness correction for cross-modal retrieval: CSLS against a bank of training queries.

In a shared embedding space some gallery items ("hubs") are close to very many queries and
crowd the top of every ranking. Cross-domain similarity local scaling (CSLS; Conneau et al.
2018, "Word translation without parallel data") scores a pair by its cosine minus how close
each side is to its own neighbourhood in the other modality:

    CSLS(i, t) = 2 cos(i, t) - r(i) - r(t)

where r(i) is the mean cosine of image i to its k nearest captions in a *bank* and r(t) the
mean cosine of caption t to its k nearest bank images. The bank here is a training set (its
images and captions), never the evaluated gallery or its queries, so the correction is not
transductive: each gallery item's penalty is computed once, before any query is seen. For a
fixed query its own r is a constant, so text→image rankings use `cos - r(image) / 2` and
image→text rankings `cos - r(caption) / 2`.

`csls_embeddings` folds the penalties into two extra coordinates, so every dot-product
ranking (`metrics.retrieval_ranks`, a search index) computes CSLS unchanged.

Evaluation (`eval/retrieval.py`) and photo search (`search/hubness.py`) both use it.

Example:
```python
from dualencoder import csls
r_img = csls.mean_topk_similarity(gallery_images, bank_captions, k=10)
r_txt = csls.mean_topk_similarity(gallery_captions, bank_images, k=10)
img, txt = csls.csls_embeddings(gallery_images, gallery_captions, r_img, r_txt)
scores = img @ txt.T          # == 2 cos - r_img[:, None] - r_txt[None, :]
```

Photo search (`retrieval.py hubness`) stores each indexed image's r(i) against a bank of
training captions beside the index (`search.store.save_index_penalties`); text queries then
rank by `cos - r(image) / 2`, the text→image CSLS order.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mean_topk_similarity", "csls_embeddings"]


def mean_topk_similarity(items, bank, k: int = 10, *, chunk: int = 2048) -> np.ndarray:
    """The mean of each item's `k` largest dot products with the bank rows.

    Computed in `[chunk, chunk]` blocks (memory independent of the bank size), keeping a
    running top-k per item.

    Args:
        items: float array `[N, D]` (L2-normalised embeddings).
        bank: float array `[B, D]` in the same space.
        k: neighbours averaged; must be 1..B.
        chunk: rows per block on both sides.

    Returns:
        float32 array `[N]`.

    Raises:
        ValueError: shapes that do not match, or `k` outside 1..B.
    """
    items = np.asarray(items, np.float32)
    bank = np.asarray(bank, np.float32)
    if items.ndim != 2 or bank.ndim != 2 or items.shape[1] != bank.shape[1]:
        raise ValueError(f"items {items.shape} and bank {bank.shape} must be [N, D] and [B, D]")
    k = int(k)
    if not 1 <= k <= len(bank):
        raise ValueError(f"k={k}: must be between 1 and the bank size {len(bank)}")
    out = np.empty(len(items), np.float32)
    for r0 in range(0, len(items), chunk):
        rows = items[r0:r0 + chunk]
        top = np.full((len(rows), 0), -np.inf, np.float32)
        for c0 in range(0, len(bank), chunk):
            both = np.concatenate([top, rows @ bank[c0:c0 + chunk].T], axis=1)
            keep = min(k, both.shape[1])
            top = np.partition(both, both.shape[1] - keep, axis=1)[:, -keep:]
        out[r0:r0 + len(rows)] = top.mean(axis=1)
    return out


def csls_embeddings(image_emb, text_emb, image_penalty, text_penalty):
    """Embeddings whose dot products are CSLS scores.

    `image' = [sqrt(2) i, -r(i), 1]`, `text' = [sqrt(2) t, 1, -r(t)]`, so
    `image' . text' = 2 cos(i, t) - r(i) - r(t)`.

    Args:
        image_emb: `[N_i, D]` L2-normalised image embeddings.
        text_emb: `[N_t, D]` L2-normalised text embeddings.
        image_penalty: `[N_i]`, r(i) (`mean_topk_similarity` against bank captions).
        text_penalty: `[N_t]`, r(t) (`mean_topk_similarity` against bank images).

    Returns:
        `(image_aug [N_i, D + 2], text_aug [N_t, D + 2])`, float32.
    """
    image_emb = np.asarray(image_emb, np.float32)
    text_emb = np.asarray(text_emb, np.float32)
    ri = np.asarray(image_penalty, np.float32).reshape(-1, 1)
    rt = np.asarray(text_penalty, np.float32).reshape(-1, 1)
    if len(ri) != len(image_emb) or len(rt) != len(text_emb):
        raise ValueError("one penalty per embedding row is needed")
    s = np.float32(np.sqrt(2.0))
    img = np.concatenate([s * image_emb, -ri, np.ones_like(ri)], axis=1)
    txt = np.concatenate([s * text_emb, np.ones_like(rt), -rt], axis=1)
    return img, txt
