"""What a training run is set up from: its records (the synthetic default built once), the
distribution strategy, precision, model, optimizer and input pipeline. Each is small and
testable alone; `dualencoder.train.loop.train` assembles them."""

from __future__ import annotations

import os

from dualencoder.config import Config, ConfigError

SYNTHETIC_VERSION = 1


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------
def synthetic_default(cache_dir: str, num_images: int, image_size: int = 64, seed: int = 0,
                      *, log=print) -> dict:
    """Build (once) and return the synthetic default splits: {"train", "val", "zeroshot"}.

    A split is rebuilt when its manifest is missing or `records verify` fails on it. Each
    split is built in a folder of its own process and renamed into place, so runs started
    together on a fresh cache do not write into each other's build; the first rename wins.
    """
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
            _build_split_into_place(out, num_images=count, image_size=image_size,
                                    seed=seed + 1000 * offset, split=split)
        dirs[split] = out
    return dirs


def _build_split_into_place(out: str, **options) -> None:
    """Build synthetic records in a private sibling folder, then rename it to `out`. A broken
    `out` is moved aside first; if another process renames its build into place first, ours is
    dropped and theirs verified."""
    import shutil

    from records.build import build_records
    from records.schema import RecordsError
    from records.verify import verify_records

    private = f"{out}.building-{os.getpid()}"
    shutil.rmtree(private, ignore_errors=True)
    build_records("synthetic", private, **options)
    if os.path.isdir(out):
        try:
            verify_records(out)  # another process finished while we built
            shutil.rmtree(private, ignore_errors=True)
            return
        except (RecordsError, OSError):  # broken: move it aside, then replace it
            broken = f"{out}.broken-{os.getpid()}"
            os.rename(out, broken)
            shutil.rmtree(broken, ignore_errors=True)
    try:
        os.rename(private, out)
    except OSError:  # another process renamed its build into place first
        shutil.rmtree(private, ignore_errors=True)
        verify_records(out)


def resolve_records(cfg: Config, *, log=print) -> tuple[str, str]:
    """The (train, val) records dirs, checked (and verified unless `data.verify=false`).

    With `data.skip_bad=true` the training records are checked shard by shard instead: each
    damaged shard is named in one warning line and its intact records are what every pass
    reads (`data.shards.checked_paths`). Validation records are always verified strictly."""
    from dualencoder.data.shards import checked_paths
    from records.schema import RecordsError, read_manifest
    from records.verify import verify_records

    if not cfg.data.records:
        dirs = synthetic_default(cfg.data.cache_dir, cfg.data.synthetic_images,
                                 seed=cfg.run.seed, log=log)
        return dirs["train"], cfg.data.val_records or dirs["val"]
    train_dir, val_dir = cfg.data.records, cfg.data.val_records
    for where, flag in ((train_dir, "--records"), (val_dir, "--val-records")):
        if not where:
            continue
        manifest = read_manifest(where)  # content checks; raises RecordsError naming it
        training = flag == "--records"
        if cfg.data.skip_bad and training:
            checked_paths(where, manifest, skip_bad=True)  # salvaged once, warned once
        elif cfg.data.verify:
            try:
                verify_records(where)
            except RecordsError as exc:
                raise RecordsError(f"{exc}. {_damaged_hint(where, flag, training)}") from exc
    return train_dir, val_dir


def _damaged_hint(where: str, flag: str, training: bool) -> str:
    """How to go on from damaged records given as `flag`."""
    rebuild = f"rebuild {flag} {where} with `python -m records build ... --out {where}`"
    if not training:
        return f"Validation reads every record: {rebuild}"
    return (f"To train on its intact records, add --set data.skip_bad=true (each damaged "
            f"shard's unreadable records are left out); or {rebuild}")


def check_training_pairs(cfg: Config, records: str) -> int:
    """The training pairs per epoch of `records`; `ConfigError` when there is not one whole
    batch of them (records without captions, or `data.batch_size` above the pair count)."""
    from dualencoder.data.order import steps_per_epoch

    pairs = steps_per_epoch(records, 1, all_captions=cfg.data.all_captions)
    batch = cfg.data.batch_size
    if pairs == 0:
        raise ConfigError(f"{records} has no captioned images, so nothing to train on "
                          "(class-folder records are for evaluation: zero-shot, k-shot); "
                          "train on records with captions")
    if batch > pairs:
        what = "captions" if cfg.data.all_captions else "captioned images"
        suggestion = 2 ** (pairs.bit_length() - 1)
        raise ConfigError(f"data.batch_size={batch} is larger than the {pairs} training pairs "
                          f"({what}) in {records}: not one batch per epoch; use a batch of at "
                          f"most {pairs} (e.g. --batch-size {suggestion}) or more training "
                          "data")
    return pairs


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
    """The global policy for `run.precision`; "auto" is mixed_bfloat16 where the device
    computes bfloat16 natively (`tower_precision.native_bfloat16`), float32 elsewhere."""
    import keras

    from dualencoder.model.tower_precision import native_bfloat16

    if precision == "auto":
        precision = "mixed_bfloat16" if native_bfloat16() else "float32"
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
    if o.tower_lr_mult != 1.0 or o.tower_weight_decay is not None:
        from dualencoder.train.optimizer import TowerAdamW

        opt = TowerAdamW(learning_rate=lr, weight_decay=o.weight_decay,
                         tower_lr_mult=o.tower_lr_mult, tower_weight_decay=o.tower_weight_decay)
    else:
        opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=o.weight_decay)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "logit_scale",
                                             "logit_bias", "embeddings"])
    if cfg.run.precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def model_and_optimizer(cfg: Config, strategy, records: str, *, log=print):
    """The model and its (built) optimizer in `strategy`'s scope, after the precision policy and
    the seed (`run.seed`: initialisation) are set."""
    import keras
    import tensorflow as tf

    from dualencoder.data.order import steps_per_epoch

    if cfg.run.jit_compile and not tf.config.list_logical_devices("GPU"):
        log("warning: run.jit_compile=true without a GPU: XLA on CPU compiled for minutes and "
            "ran ~3x slower per step in bench/train_step.py; consider turning it off")
    set_precision(cfg.run.precision)
    keras.utils.set_random_seed(cfg.run.seed)
    with strategy.scope():
        model = build(cfg)
        optimizer = make_optimizer(cfg, steps_per_epoch(
            records, cfg.data.batch_size, all_captions=cfg.data.all_captions))
        optimizer.build(model.trainable_variables)
        if hasattr(optimizer, "set_tower_variables"):
            optimizer.set_tower_variables(model.image_tower.trainable_variables
                                          + model.text_tower.trainable_variables)
    return model, optimizer


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
