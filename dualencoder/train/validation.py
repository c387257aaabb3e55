"""Per-epoch validation (recall both ways and the loss on held-out records, with locked
towers' outputs computed once) and the training curves plot."""

from __future__ import annotations

import numpy as np

from dualencoder.config import Config


def embed_records(model, records: str, *, image_size: int, resize_method: str,
                  limit: int = 0, batch_size: int = 64, tower_cache: dict | None = None,
                  cached_features: dict | None = None):
    """L2-normalised embeddings of the images (first `limit`, 0 = all) and of their captions:
    (image_emb [N, D], text_emb [M, D], caption_image_row [M]) with rows into image_emb.

    `tower_cache`: a dict kept by the caller across calls (e.g. one per training run); the
    outputs of a frozen tower are stored there on the first call and only the heads run
    afterwards, so per-epoch validation with locked towers costs almost nothing.
    `cached_features`: tower outputs of `records` already at hand (`features.image_features`
    and/or `features.text_features` arrays, from the on-disk cache); those towers do not run.
    """
    from dualencoder.data import pipeline as data
    from dualencoder.data.annotations import read_captions
    from dualencoder.model.encoding import tower_functions

    cache = tower_cache if tower_cache is not None else {}
    if "functions" not in cache:
        cache["functions"] = tower_functions(model)
    image_fn, text_fn = cache["functions"]
    image_key = ("images", records, limit, image_size, resize_method)
    cached_features = cached_features or {}
    if "image_features" in cached_features:
        stored = cached_features["image_features"][:limit or None]
        feats = [stored[i:i + 4096] for i in range(0, len(stored), 4096)]
        image_index = cached_features["image_index"][:limit or None]
    elif model.image_tower.frozen and image_key in cache:
        feats, image_index = cache[image_key]
    else:
        feats, image_index, _ = data.map_images(records, image_fn, image_size=image_size,
                                                batch_size=batch_size,
                                                resize_method=resize_method, limit=limit)
        if model.image_tower.frozen and tower_cache is not None:
            cache[image_key] = (feats, image_index)
    image_emb = np.concatenate([np.asarray(model.embed_from_features(f, None)[0])
                                for f in feats])
    if limit:
        image_emb, image_index = image_emb[:limit], image_index[:limit]
    texts, owner = read_captions(records)
    row_of = {int(ix): row for row, ix in enumerate(image_index)}
    keep = [i for i, ix in enumerate(owner) if int(ix) in row_of]
    texts = [texts[i] for i in keep]
    caption_rows = np.array([row_of[int(owner[i])] for i in keep], dtype=np.int64)
    chunks = range(0, len(texts), 256)
    text_key = ("texts", records, limit)
    if "text_features" in cached_features:
        stored = cached_features["text_features"][np.asarray(keep, dtype=np.int64)]
        feats = [stored[i:i + 4096] for i in range(0, len(stored), 4096)]
    elif model.text_tower.frozen and text_key in cache:
        feats = cache[text_key]
    else:
        feats = [text_fn(texts[i:i + 256]) for i in chunks]
        if model.text_tower.frozen and tower_cache is not None:
            cache[text_key] = feats
    text_emb = np.concatenate([np.asarray(model.embed_from_features(None, f)[1])
                               for f in feats])
    return image_emb, text_emb, caption_rows


def validate(model, cfg: Config, val_records: str, tower_cache: dict | None = None,
             feature_dir: str | None = None, plan=None, log=print) -> dict:
    """Recall@1/5/10 both ways, and the training loss on (image, first caption) pairs in
    record order, over the first `run.val_subset` images of the validation records.

    With `feature_dir` and a cache `plan` (`dualencoder.features.plan`; by default `cfg`'s),
    the tower outputs
    the training run caches come from the same on-disk caches on the validation records:
    pooled outputs of locked towers (read once per run), boundary states of partly trained
    towers (computed once; the trained part runs on them every epoch)."""
    from dualencoder.eval import metrics
    from dualencoder.features import compute
    from dualencoder.features.boundary import pooled_from_states

    from dualencoder.features.plan import plan_cache

    cached_features = {}
    plan = plan_cache(cfg) if feature_dir and plan is None else plan
    if feature_dir and plan:
        stored = (tower_cache or {}).get("disk_features")
        if stored is None:
            readers = {("image", "pooled"): compute.image_features,
                       ("image", "boundary"): compute.image_states,
                       ("text", "pooled"): compute.text_features,
                       ("text", "boundary"): compute.text_states}
            stored = {side: readers[side, kind](model, cfg, val_records, feature_dir, log=log)
                      for side, kind in (("image", plan.image), ("text", plan.text)) if kind}
            if tower_cache is not None:
                tower_cache["disk_features"] = stored
        for side, value in stored.items():
            cached_features.update(value if isinstance(value, dict) else pooled_from_states(
                model, value, side, limit=cfg.run.val_subset if side == "image" else 0))
    image_emb, text_emb, rows = embed_records(
        model, val_records, image_size=cfg.model.image_size,
        resize_method=cfg.data.resize_method, limit=cfg.run.val_subset, tower_cache=tower_cache,
        cached_features=cached_features)
    first = np.full(len(image_emb), -1)
    for caption, row in reversed(list(enumerate(rows))):
        first[row] = caption
    has = np.flatnonzero(first >= 0)
    batch = cfg.data.batch_size
    losses = []
    for i in range(0, max(len(has) - batch + 1, 1), batch):
        part = has[i:i + batch]
        if len(part) < 2:
            break
        loss, _ = model.compute_contrastive_loss(image_emb[part], text_emb[first[part]],
                                                 part.astype(np.int64))
        losses.append(float(loss))
    recall = metrics.retrieval_metrics(image_emb, text_emb, rows, ks=(1, 5, 10))
    out = {"val_loss": float(np.mean(losses)) if losses else float("nan")}
    for direction, name in (("i2t", "image_to_text"), ("t2i", "text_to_image")):
        for k in (1, 5, 10):
            out[f"val_{direction}_r{k}"] = 100.0 * float(recall[name][f"R@{k}"])
    out["val_rsum"] = sum(out[f"val_{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def plot_curves(history: list[dict], path: str) -> None:
    """Train/val loss, temperature, in-batch retrieval accuracy and val Recall@K per epoch."""
    from dualencoder.eval.plots import pyplot, save_png

    if not history:
        return
    plt = pyplot()
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = [
        ("loss", ["train_loss", "val_loss"]),
        ("temperature (1 / logit scale)", ["train_temperature"]),
        ("in-batch top-1 accuracy", ["train_i2t_acc", "train_t2i_acc"]),
        ("validation Recall@K (%)", [f"val_{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 10)]),
    ]
    for ax, (title, keys) in zip(axes.ravel(), panels):
        for key in keys:
            values = [r.get(key) for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o",
                        label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
