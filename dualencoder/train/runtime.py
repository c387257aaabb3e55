"""The pieces `trainer.train` assembles: records, strategy, precision, model, optimizer,
input pipeline, per-epoch validation and the curves plot. Each is small and testable alone."""

from __future__ import annotations

import os

import numpy as np

from dualencoder.config import Config, ConfigError
from records.files import atomic_write

SYNTHETIC_VERSION = 1


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------
def synthetic_default(cache_dir: str, num_images: int, image_size: int = 64, seed: int = 0,
                      *, log=print) -> dict:
    """Build (once) and return the synthetic default splits: {"train", "val", "zeroshot"}.

    A split is rebuilt when its manifest is missing or `records verify` fails on it.
    """
    from records.build import build_records
    from records.schema import RecordsError
    from records.verify import verify_records

    root = os.path.join(cache_dir, f"synthetic-v{SYNTHETIC_VERSION}-n{num_images}-"
                                   f"s{image_size}-seed{seed}")
    sizes = {"train": num_images, "val": max(200, num_images // 8),
             "zeroshot": 720}  # 20 images for each of the 36 colour-shape classes
    dirs = {}
    for offset, (split, count) in enumerate(sizes.items()):
        out = os.path.join(root, split)
        try:
            verify_records(out)
        except (RecordsError, OSError):
            log(f"building the synthetic default ({split}: {count} images) in {out}")
            build_records("synthetic", out, num_images=count, image_size=image_size,
                          seed=seed + 1000 * offset, split=split)
        dirs[split] = out
    return dirs


def resolve_records(cfg: Config, *, log=print) -> tuple[str, str]:
    """The (train, val) records dirs, checked (and verified unless `data.verify=false`)."""
    from records.schema import read_manifest
    from records.verify import verify_records

    if not cfg.data.records:
        dirs = synthetic_default(cfg.data.cache_dir, cfg.data.synthetic_images,
                                 seed=cfg.run.seed, log=log)
        return dirs["train"], cfg.data.val_records or dirs["val"]
    train_dir, val_dir = cfg.data.records, cfg.data.val_records
    for where in (train_dir, val_dir):
        if where:
            read_manifest(where)  # content checks; raises RecordsError naming the problem
            if cfg.data.verify:
                verify_records(where)
    return train_dir, val_dir


# --------------------------------------------------------------------------------------------
# Devices, precision, model, optimizer
# --------------------------------------------------------------------------------------------
def make_strategy(name: str):
    """`auto`: MirroredStrategy over all GPUs when there are several, else the default."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("run.strategy=multi_worker needs the TF_CONFIG environment "
                              "variable (cluster and task); see README 'Multi-device'")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"run.strategy={name!r}: unknown")


def set_precision(precision: str) -> None:
    import keras

    keras.mixed_precision.set_dtype_policy(precision)


def model_config(cfg: Config) -> dict:
    """The `build_model` dict for this config."""
    return dict(vars(cfg.model))


def build(cfg: Config):
    """The model; a bad tower name, weights file or preset becomes a `ConfigError`."""
    from dualencoder.model.dual_encoder import build_model

    try:
        return build_model(model_config(cfg))
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise ConfigError(f"model: {exc}") from exc


def make_optimizer(cfg: Config, steps_per_epoch: int):
    """AdamW with warmup + cosine (or a plain rate for ReduceLROnPlateau); no weight decay on
    biases, normalisation gains and the logit scale; loss scaling under mixed_float16."""
    import keras

    o = cfg.optim
    if o.schedule == "cosine":
        total = max(1, (o.max_steps or o.epochs * steps_per_epoch))
        warmup = min(o.warmup_steps, total - 1) if total > 1 else 0
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=o.lr / max(warmup, 1) if warmup else o.lr,
            decay_steps=max(total - warmup, 1), warmup_target=o.lr if warmup else None,
            warmup_steps=warmup)
    else:
        lr = o.lr
    opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=o.weight_decay)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "logit_scale",
                                             "logit_bias", "embeddings"])
    if cfg.run.precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def distribute(strategy, make_dataset):
    """A distributed dataset from `make_dataset(num_shards, shard_index)`.

    One input pipeline (one machine, any number of devices): the global batch is split across
    the replicas in order. Several workers (MultiWorkerMirroredStrategy): worker i reads every
    n-th element (`shard_index=i`) in per-worker batches, so the all-gathered global batch is
    the same set of pairs whatever the number of workers.
    """
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return strategy.experimental_distribute_dataset(make_dataset(1, 0))

    def fn(ctx):
        return make_dataset(ctx.num_input_pipelines, ctx.input_pipeline_id)

    return strategy.distribute_datasets_from_function(fn)


def input_shards(strategy) -> int:
    """Input pipelines of the strategy (workers of a multi-worker run, else 1)."""
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return strategy.cluster_resolver.cluster_spec().num_tasks("worker") or 1
    return 1


def train_dataset(cfg: Config, records: str, tokenizer, *, epoch: int, skip_batches: int = 0,
                  num_shards: int = 1, shard_index: int = 0):
    """One epoch of training pairs for input worker `shard_index` of `num_shards`."""
    from dualencoder.data import pipeline as data

    if cfg.data.batch_size % num_shards:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by the "
                          f"{num_shards} workers")
    return data.pair_dataset(
        records, image_size=cfg.model.image_size, tokenizer=tokenizer,
        batch_size=cfg.data.batch_size // num_shards, seed=cfg.run.seed, epoch=epoch,
        skip_batches=skip_batches, shuffle=True, augment=cfg.data.augment,
        all_captions=cfg.data.all_captions, resize_method=cfg.data.resize_method,
        skip_bad=cfg.data.skip_bad, num_shards=num_shards, shard_index=shard_index)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
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
        feats, index = [], []
        for batch in data.image_dataset(records, image_size=image_size, batch_size=batch_size,
                                        resize_method=resize_method):
            feats.append(image_fn(batch["images"]))
            index.append(batch["image_index"].numpy())
            if limit and sum(len(i) for i in index) >= limit:
                break
        image_index = np.concatenate(index)
        if model.image_tower.frozen and tower_cache is not None:
            cache[image_key] = (feats, image_index)
    image_emb = np.concatenate([np.asarray(model.embed_from_features(f, None)[0])
                                for f in feats])
    if limit:
        image_emb, image_index = image_emb[:limit], image_index[:limit]
    texts, owner = data.read_captions(records)
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
             feature_dir: str | None = None, log=print) -> dict:
    """Recall@1/5/10 both ways, and the training loss on (image, first caption) pairs in
    record order, over the first `run.val_subset` images of the validation records.

    With `feature_dir`, the outputs of locked towers on the validation records come from the
    same on-disk cache as the training features (computed once, shared by every run)."""
    from dualencoder.train import features
    from dualencoder.eval import metrics
    cached_features = {}
    if feature_dir and tower_cache is not None and "disk_features" in tower_cache:
        cached_features = tower_cache["disk_features"]  # locked towers: read once per run
    elif feature_dir:
        if model.image_tower.frozen:
            cached_features.update(features.image_features(model, cfg, val_records, feature_dir,
                                                           log=log))
        if model.text_tower.frozen:
            cached_features.update(features.text_features(model, cfg, val_records, feature_dir,
                                                          log=log))
        if tower_cache is not None:
            tower_cache["disk_features"] = cached_features
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


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------
def plot_curves(history: list[dict], path: str) -> None:
    """Train/val loss, temperature, in-batch retrieval accuracy and val Recall@K per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
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
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
