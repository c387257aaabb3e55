"""`train.py` for locked towers, with dev validation read from cached tower features.

WORKAROUND (product gap, see docs/flickr8k.md "What the product lacks"): with both towers
locked, `train.py` caches the *training* tower features on disk, but the validation tower
outputs are kept only in memory for one run (`runtime.validate(tower_cache=...)`, since
2f48e23; before it, both towers ran over the whole dev set twice every epoch). Every new run
therefore pays 1,000 Xception forwards for the Flickr8k dev set again (minutes on the shared
2-core CPU). This wrapper changes only that: when both towers are locked it computes the
validation features once *on disk* (`features.CachedPairs` on the val records, keyed like the
training cache) and validates on them with the same metric code
(`metrics.retrieval_metrics` over all `run.val_subset` images, same loss function). Everything
else (config, training loop, selection of the best epoch on dev val_rsum, checkpoints,
`WORKDIR/model`) is `train.py` unchanged.

It also shares one feature cache between workdirs: `WORKDIR/features` becomes a link to
`--feature-cache DIR` (cache keys hash the records, tower weights, image size, resize method,
sequence length and text pooling, so different settings never collide; NB the key does not
include the head, so runs with head=attention must use their own --feature-cache).

    python scripts/lit_train.py --feature-cache runs/flickr8k/features -- \\
        --records R --val-records V --workdir W --config configs/flickr8k_lit.json
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _cached_validate(feature_dir, original):
    cache = {}

    def validate(model, cfg, val_records, tower_cache=None, **kwargs):
        import numpy as np
        import tensorflow as tf

        from dualencoder import features, metrics

        if features.use_cache(cfg) != "both":
            return original(model, cfg, val_records, tower_cache=tower_cache, **kwargs)
        key = (val_records, features.cache_key(model, cfg, val_records, "both"))
        if key not in cache:
            arrays = features.CachedPairs(model, cfg, val_records, feature_dir, mode="both").arrays
            order = np.argsort(arrays["image_index"], kind="stable")
            cache[key] = {"img": arrays["image_features"][order],
                          "index": arrays["image_index"][order],
                          "txt": arrays["text_features"],
                          "owner": arrays["caption_image_index"]}
        a = cache[key]
        limit = cfg.run.val_subset or len(a["index"])
        img_f, index = a["img"][:limit], a["index"][:limit]
        row_of = {int(ix): r for r, ix in enumerate(index)}
        keep = np.array([int(o) in row_of for o in a["owner"]])
        txt_f = a["txt"][keep]
        rows = np.array([row_of[int(o)] for o in a["owner"][keep]], np.int64)
        img_emb, _ = model.embed_from_features(tf.constant(img_f), None)
        _, txt_emb = model.embed_from_features(None, tf.constant(txt_f))
        img_emb, txt_emb = np.asarray(img_emb), np.asarray(txt_emb)
        # validation loss: each image with its first caption, batches like runtime.validate
        first = {}
        for t, r in enumerate(rows):
            first.setdefault(int(r), t)
        pair_rows = np.array(sorted(first))
        batch = min(cfg.data.batch_size, max(2, limit))
        losses = []
        for s in range(0, len(pair_rows), batch):
            rr = pair_rows[s:s + batch]
            loss, _ = model.compute_contrastive_loss(
                tf.constant(img_emb[rr]), tf.constant(txt_emb[[first[int(r)] for r in rr]]),
                tf.constant(index[rr]))
            losses.append(float(loss))
        recall = metrics.retrieval_metrics(img_emb, txt_emb, rows, ks=(1, 5, 10))
        out = {"val_loss": float(np.mean(losses))}
        for direction, name in (("i2t", "image_to_text"), ("t2i", "text_to_image")):
            for k in (1, 5, 10):
                out[f"val_{direction}_r{k}"] = 100.0 * float(recall[name][f"R@{k}"])
        out["val_rsum"] = sum(out[f"val_{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
        return out

    return validate


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        cut = argv.index("--")
        own, rest = argv[:cut], argv[cut + 1:]
    else:
        own, rest = [], argv
    p = argparse.ArgumentParser(prog="lit_train.py", description=__doc__.split("\n")[0])
    p.add_argument("--feature-cache", required=True, help="shared tower-feature cache dir")
    args = p.parse_args(own)
    feature_dir = os.path.abspath(args.feature_cache)
    os.makedirs(feature_dir, exist_ok=True)
    if "--workdir" in rest:
        workdir = rest[rest.index("--workdir") + 1]
        os.makedirs(workdir, exist_ok=True)
        link = os.path.join(workdir, "features")
        if not os.path.lexists(link):
            os.symlink(feature_dir, link)

    import train
    from dualencoder import runtime

    runtime.validate = _cached_validate(feature_dir, runtime.validate)
    return train.main(rest)


if __name__ == "__main__":
    sys.exit(main())
