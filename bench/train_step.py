"""Training-step throughput: `dualencoder.train.step.make_train_step` vs the keras-io example's
step, and cached-feature (LiT) epochs vs uncached ones.

Part 1, pairs/s of one optimizer step, Xception + all-MiniLM-L6-v2, both towers fully
fine-tuned, batch 32, at 224 and 299 px, side by side in one process on the same batch
(random 0..255 images, real tokenized captions), timed steps interleaved (ours, ours+XLA,
keras-io, ours, ...) so machine noise hits all of them alike; medians and ratios reported:

* `ours`: `make_train_step(model, optimizer, strategy, cfg)` as `dualencoder.train.loop.train` builds it
  (clip loss with multi-positive targets, in-batch accuracy metrics, AdamW with warmup+cosine
  and weight-decay exclusions, float32), called the way the trainer calls it;
* `ours_xla`: the same with `run.jit_compile=true` (the replica step compiled by XLA);
* `keras_io`: `bench/reference/keras_io_train_step.py`, the example's `DualEncoder.train_step`
  (GradientTape, soft-target loss, fixed temperature, float32, no XLA) through Keras'
  own `train_function`, with the *same* towers (Xception from the shared ImageNet weights,
  the keras-hub MiniLM backbone, masked-mean pooling) and the same projection head.

A breakdown then times everything of each step that is *not* the towers (heads, loss, metrics,
gradients of the heads, optimizer update) on precomputed tower features of the same batch:
what the step implementation itself can win or lose.

Part 2, cached LiT: both towers locked, one epoch of our training loop over small synthetic
records (`records.build.build_records("synthetic", ...)`) with `run.cache_features=off` (the
towers run every step) vs with the cache on (`features.pairs.CachedPairs`: heads only), same model,
same step builder, epochs after the first (tracing) one, interleaved; the one-time cost of
computing the cache is reported beside it.

`--gpu` (only where a GPU is visible, skipped otherwise): our step with mixed_float16 + XLA
at batch 256 (and float32 without XLA at batch 256 for scale).

Usage:
    python bench/train_step.py            # 224 and 299 px, 2 warm + 3 timed steps each
                                          # (ours_xla: 224 px, 1 timed step)
    python bench/train_step.py --quick    # 224 px only, 1 warm + 2 timed steps, small LiT set

On the shared 2-core dev machine one float32 step at 224 px takes ~40-50 s and an XLA step
~3-4 min (XLA:CPU runs the convolutions without oneDNN), so the defaults keep repeats small.
    python bench/train_step.py --gpu      # adds the mixed_float16 + XLA batch-256 rows
"""

from __future__ import annotations

import argparse
import gc
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.common import command_line, write_result  # noqa: E402
from records.machine import tensorflow_defaults  # noqa: E402

tensorflow_defaults()  # the programs' TensorFlow settings, before TensorFlow loads

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

XCEPTION_WEIGHTS = ROOT.parent / "shared" / "weights" / "xception_imagenet_notop.weights.h5"
TEXT_TOWER = "all-minilm-l6-v2"

CAPTION_PARTS = (["a", "two", "a small", "a large", "three"],
                 ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"],
                 ["circle", "square", "triangle", "star", "dog", "child", "bicycle", "boat"],
                 ["on the left of", "above", "next to", "running towards", "behind"],
                 ["a wooden fence", "the grey wall", "a river in the park", "a crowded street",
                  "two people wearing hats and coats"])


# ----------------------------------------------------------------------------- inputs
def captions(n, seed=0):
    """Flickr-like captions (8..17 words) so padding masks look like real batches."""
    rng = np.random.default_rng(seed)
    return [" ".join(str(rng.choice(part)) for part in CAPTION_PARTS) for _ in range(n)]


def make_batches(tokenizer, image_size, batch_size, seed=0):
    """(our batch, keras-io batch): the same images and tokens in each one's format."""
    rng = np.random.default_rng(seed)
    images = tf.constant(rng.uniform(0, 255, (batch_size, image_size, image_size, 3))
                         .astype("float32"))
    tokens = tokenizer(tf.constant(captions(batch_size, seed)))
    ours = {"images": images, "token_ids": tokens["token_ids"],
            "padding_mask": tokens["padding_mask"],
            "image_index": tf.range(batch_size, dtype=tf.int64)}
    ref = {"image": images, "token_ids": tokens["token_ids"],
           "padding_mask": tokens["padding_mask"]}
    return ours, ref


def our_config(image_size, batch_size, *, jit=False, precision="float32", extra=()):
    from dualencoder.config import Config

    return Config.from_sources(None, [
        "model.image_tower=xception", f"model.image_weights={XCEPTION_WEIGHTS}",
        f"model.image_size={image_size}", f"model.text_tower={TEXT_TOWER}",
        "model.image_trainable=all", "model.text_trainable=all", "model.loss=clip",
        "model.head=mlp", f"data.batch_size={batch_size}", f"run.precision={precision}",
        f"run.jit_compile={'true' if jit else 'false'}", *extra])


# ----------------------------------------------------------------------------- steps
class Variant:
    """A named step callable `run() -> loss`; it blocks until the step's results are ready."""

    def __init__(self, name, run, describe, tracing_count=None):
        self.name, self.run, self.describe = name, run, describe
        self.tracing_count = tracing_count
        self.first_call_s = None
        self.times = []
        self.repeats = None  # None: every round

    def step(self):
        start = time.perf_counter()
        loss = self.run()
        seconds = time.perf_counter() - start
        if not np.isfinite(loss):
            raise RuntimeError(f"{self.name}: loss became {loss}")
        return seconds


def our_variants(image_size, batch_size, *, xla=True, precision="float32", names=None):
    """Our model/optimizer plus one step function per variant (sharing model and optimizer)."""
    import keras

    from dualencoder.train import setup
    from dualencoder.train.step import make_train_step

    names = names or {False: "ours", True: "ours_xla"}
    cfg = our_config(image_size, batch_size, precision=precision)
    setup.set_precision(precision)
    keras.utils.set_random_seed(0)
    strategy = setup.make_strategy(cfg.run.strategy)
    with strategy.scope():
        model = setup.build(cfg)
        optimizer = setup.make_optimizer(cfg, steps_per_epoch=1000)
        optimizer.build(model.trainable_variables)
    batch, ref_batch = make_batches(model.tokenizer, image_size, batch_size)
    variants = []
    for jit in ([False, True] if xla else [False]):
        step = make_train_step(model, optimizer, strategy,
                               our_config(image_size, batch_size, jit=jit, precision=precision))

        def run(step=step):
            # as train.loop.train: every metric to a Python float after each step
            metrics = {k: float(v) for k, v in step(batch).items()}
            return metrics["loss"]

        variants.append(Variant(
            names[jit], run,
            f"dualencoder make_train_step, clip loss, {precision}, jit_compile={jit}",
            tracing_count=step.experimental_get_tracing_count))
    return model, optimizer, variants, ref_batch


def reference_variant(model_text_backbone_path, image_size, batch_size, ref_batch):
    from bench.reference import keras_io_train_step as ref

    keras_utils_seed()
    model = ref.build_reference(image_size, xception_weights=str(XCEPTION_WEIGHTS),
                                text_backbone=model_text_backbone_path,
                                sequence_length=int(ref_batch["token_ids"].shape[1]))
    iterator = iter(tf.data.Dataset.from_tensors(ref_batch).repeat())
    model.make_train_function()

    def run():
        logs = model.train_function(iterator)
        return float(logs["loss"])

    return model, Variant("keras_io", run, "keras-io DualEncoder.train_step via Keras "
                          "train_function, soft-target loss, float32, no XLA")


def keras_utils_seed():
    import keras

    keras.utils.set_random_seed(0)


def text_backbone_path():
    from dualencoder.model.text_tower import TextTower

    return TextTower.resolve_preset(TEXT_TOWER)


def time_interleaved(variants, warmup, repeats, log):
    """First call (trace/compile + one step), `warmup - 1` more untimed steps, then `repeats`
    rounds each timing one step of every variant, the order rotated every round."""
    for v in variants:
        start = time.perf_counter()
        v.run()
        v.first_call_s = time.perf_counter() - start
        log(f"  {v.name:10s} first call (trace/compile + step) {v.first_call_s:7.1f} s")
        for _ in range(max(0, (warmup if v.repeats is None else 1) - 1)):
            v.step()
    for r in range(repeats):
        active = [v for v in variants if v.repeats is None or r < v.repeats]
        order = active[r % len(active):] + active[:r % len(active)]
        for v in order:
            v.times.append(v.step())
        log(f"  round {r + 1}/{repeats}: " + ", ".join(
            f"{v.name} {v.times[-1]:.2f} s" for v in active))


# ----------------------------------------------------------------------------- breakdown
def head_step_costs(model, batch, temperature=0.05, repeats=30):
    """Median seconds per step of everything except the towers, on precomputed features.

    Both sides get the same tower features of the same batch and run, under one
    `tf.function`, what their step adds to the towers: ours the heads, L2 normalisation, the
    multi-positive clip loss and the accuracy metrics, gradients of the heads and the learned
    temperature, and an AdamW update (metrics read back as floats, as the trainer does);
    keras-io a fresh copy of its projection heads, its soft-target loss, their gradients and
    an AdamW update. What is left of a step is the towers' forward and backward passes.
    """
    import keras

    from bench.reference import keras_io_train_step as ref

    img_f = model.image_features(batch["images"], training=False)
    txt_f = model.text_features({"token_ids": batch["token_ids"],
                                 "padding_mask": batch["padding_mask"]}, training=False)
    index = batch["image_index"]
    ours_vars = (model.image_head.trainable_variables + model.text_head.trainable_variables
                 + [model.log_logit_scale])
    ours_opt = keras.optimizers.AdamW(learning_rate=1e-4)
    ours_opt.build(ours_vars)

    @tf.function
    def ours_heads():
        with tf.GradientTape() as tape:
            img, txt = model.embed_from_features(img_f, txt_f, training=True)
            loss, metrics = model.compute_contrastive_loss(img, txt, index)
        grads = tape.gradient(loss, ours_vars)
        ours_opt.apply_gradients(zip(grads, ours_vars))
        return metrics

    def head(dim):
        inputs = keras.Input(shape=(dim,))
        return keras.Model(inputs, ref.project_embeddings(inputs, 1, model.embed_dim, 0.1))

    v_head, t_head = head(int(img_f.shape[-1])), head(int(txt_f.shape[-1]))
    ref_vars = v_head.trainable_variables + t_head.trainable_variables
    ref_opt = keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=1e-3)
    ref_opt.build(ref_vars)

    @tf.function
    def ref_heads():
        with tf.GradientTape() as tape:
            loss = ref.keras_io_loss(t_head(txt_f, training=True), v_head(img_f, training=True),
                                     temperature)
        grads = tape.gradient(loss, ref_vars)
        ref_opt.apply_gradients(zip(grads, ref_vars))
        return {"loss": loss}

    fns = {"ours": ours_heads, "keras_io": ref_heads}
    times = {name: [] for name in fns}
    for name, fn in fns.items():
        {k: float(v) for k, v in fn().items()}  # trace
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            {k: float(v) for k, v in fn().items()}
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ----------------------------------------------------------------------------- LiT
def lit_epochs(args, log):
    """Steady epoch seconds of our loop with both towers locked: uncached vs cached features."""
    import keras

    from dualencoder.features.pairs import CachedPairs
    from dualencoder.features.plan import CachePlan
    from dualencoder.train import setup
    from dualencoder.train.step import make_train_step
    from records.build import build_records
    from records.schema import RecordsError
    from records.verify import verify_records

    records = os.path.join(args.workdir, f"lit_synthetic_{args.lit_images}")
    try:
        verify_records(records)
    except (RecordsError, OSError):
        build_records("synthetic", records, num_images=args.lit_images, image_size=64, seed=0)
    size, bs = args.lit_image_size, args.batch_size
    base = [f"data.records={records}", "model.image_trainable=none",
            "model.text_trainable=none", "data.augment=false"]
    cfg_off = our_config(size, bs, extra=base + ["run.cache_features=off"])
    cfg_on = our_config(size, bs, extra=base + ["run.cache_features=on"])
    setup.set_precision("float32")
    keras.utils.set_random_seed(0)
    strategy = setup.make_strategy("auto")
    from dualencoder.data.order import steps_per_epoch

    steps = steps_per_epoch(records, bs)
    with strategy.scope():
        model = setup.build(cfg_off)
        optimizer = setup.make_optimizer(cfg_off, steps)
        optimizer.build(model.trainable_variables)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    feature_dir = os.path.join(args.workdir, f"lit_features_{os.getpid()}")
    start = time.perf_counter()
    source = CachedPairs(model, cfg_on, records, feature_dir,
                         plan=CachePlan(image="pooled", text="pooled"), log=lambda *a: None)
    cache_build_s = time.perf_counter() - start
    step_off = make_train_step(model, optimizer, strategy, cfg_off)
    step_on = make_train_step(model, optimizer, strategy, cfg_on)

    def epoch_seconds(cached, epoch):
        # the trainer's per-epoch work: build the epoch's dataset, distribute, step, floats
        start = time.perf_counter()
        if cached:
            batches, step = source.epoch(epoch), step_on
        else:
            batches, step = setup.train_dataset(cfg_off, records, model.tokenizer,
                                                  epoch=epoch), step_off
        n, in_steps = 0, 0.0
        for batch in strategy.experimental_distribute_dataset(batches):
            t = time.perf_counter()
            metrics = {k: float(v) for k, v in step(batch).items()}
            in_steps += time.perf_counter() - t
            n += 1
        if not np.isfinite(metrics["loss"]):
            raise RuntimeError("LiT loss is not finite")
        step_seconds[cached].append(in_steps)
        return time.perf_counter() - start, n

    step_seconds = {False: [], True: []}

    first = {"uncached": epoch_seconds(False, 0)[0], "cached": epoch_seconds(True, 0)[0]}
    times = {"uncached": [], "cached": []}
    for e in range(1, args.lit_epochs + 1):
        for name in (["uncached", "cached"] if e % 2 else ["cached", "uncached"]):
            seconds, n = epoch_seconds(name == "cached", e)
            times[name].append(seconds)
        log(f"  LiT epoch {e}: uncached {times['uncached'][-1]:.2f} s, "
            f"cached {times['cached'][-1]:.3f} s ({n} steps)")
    import shutil

    shutil.rmtree(feature_dir, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"records": records, "num_images": args.lit_images, "image_size": size,
            "batch_size": bs, "steps_per_epoch": steps, "trainable_params": trainable,
            "uncached_epoch_s": med["uncached"], "cached_epoch_s": med["cached"],
            "all_uncached_epoch_s": times["uncached"], "all_cached_epoch_s": times["cached"],
            "first_epoch_s": first, "cache_build_s": cache_build_s,
            "speedup": med["uncached"] / med["cached"],
            # of the cached epoch: time inside the step calls (the rest is building and
            # iterating the epoch's dataset: pair_order reads the records every epoch)
            "cached_epoch_in_steps_s": statistics.median(step_seconds[True][1:]),
            "uncached_epoch_in_steps_s": statistics.median(step_seconds[False][1:]),
            "break_even_epochs": cache_build_s / max(med["uncached"] - med["cached"], 1e-9)}


# ----------------------------------------------------------------------------- main
def throughput_rows(args, log):
    rows, breakdowns = [], []
    text_path = text_backbone_path()
    for size in args.sizes:
        log(f"[{size}px] building our model and the keras-io reference (batch {args.batch_size})")
        xla = not args.no_xla and size in args.xla_sizes
        model, optimizer, variants, ref_batch = our_variants(size, args.batch_size, xla=xla)
        for v in variants:
            if v.name == "ours_xla" and args.xla_repeats:
                v.repeats = min(args.xla_repeats, args.repeats)
        ref_model, ref_variant = reference_variant(text_path, size, args.batch_size, ref_batch)
        params = {"ours": sum(int(np.prod(v.shape)) for v in model.trainable_variables),
                  "keras_io": sum(int(np.prod(v.shape)) for v in ref_model.trainable_variables)}
        variants.append(ref_variant)
        time_interleaved(variants, args.warmup, args.repeats, log)
        ref_median = statistics.median(ref_variant.times)
        for v in variants:
            median = statistics.median(v.times)
            rows.append({
                "image_size": size, "batch_size": args.batch_size, "variant": v.name,
                "description": v.describe, "median_step_s": median,
                "pairs_per_s": args.batch_size / median,
                "vs_keras_io": ref_median / median,
                "step_s": v.times, "first_call_s": v.first_call_s,
                "trainable_params": params["keras_io" if v.name == "keras_io" else "ours"],
                "tracings": int(v.tracing_count()) if v.tracing_count else None,
            })
        if args.breakdown:
            ours_batch, _ = make_batches(model.tokenizer, size, args.batch_size)
            heads = head_step_costs(model, ours_batch)
            breakdowns.append({
                "image_size": size, "batch_size": args.batch_size,
                "non_tower_step_s": heads,
                "non_tower_share_of_step": {
                    "ours": heads["ours"] / statistics.median(variants[0].times),
                    "keras_io": heads["keras_io"] / ref_median}})
            log(f"  non-tower part of a step (heads+loss+metrics+grads+AdamW on features): "
                f"ours {1e3 * heads['ours']:.1f} ms, keras_io {1e3 * heads['keras_io']:.1f} ms")
        del model, optimizer, variants, ref_model, ref_variant
        gc.collect()
        import keras

        keras.backend.clear_session()
    return rows, breakdowns


def gpu_rows(args, log):
    if not tf.config.list_physical_devices("GPU"):
        log("--gpu: no GPU visible, skipping the mixed_float16 + XLA rows")
        return [], "skipped: no GPU visible"
    rows = []
    for size in args.sizes:
        for precision, jit in (("mixed_float16", True), ("float32", False)):
            name = f"ours_{'mixed_float16_xla' if jit else 'float32'}"
            model, optimizer, variants, _ = our_variants(
                size, args.gpu_batch_size, xla=jit, precision=precision,
                names={False: "ours_float32", True: "ours_mixed_float16_xla"})
            variants = [v for v in variants if v.name == name]
            time_interleaved(variants, args.warmup, args.repeats, log)
            v = variants[0]
            median = statistics.median(v.times)
            rows.append({"image_size": size, "batch_size": args.gpu_batch_size,
                         "variant": v.name, "precision": precision, "jit_compile": jit,
                         "median_step_s": median, "pairs_per_s": args.gpu_batch_size / median,
                         "step_s": v.times, "first_call_s": v.first_call_s,
                         "device": tf.config.list_physical_devices("GPU")[0].name})
            del model, optimizer, variants
            gc.collect()
    from dualencoder.train import setup

    setup.set_precision("float32")
    return rows, None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="224 px only, 1 warm + 2 timed steps, 64-image LiT set")
    parser.add_argument("--out", default="bench/results/train_step.json")
    parser.add_argument("--workdir", default="runs/bench_train_step",
                        help="where the LiT records are written (reused)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 299])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps incl. the first")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--no-xla", action="store_true", help="skip the ours_xla variant")
    parser.add_argument("--xla-sizes", type=int, nargs="+", default=[224],
                        help="sizes with the ours_xla variant (XLA on CPU is slow: ~4x)")
    parser.add_argument("--xla-repeats", type=int, default=1,
                        help="timed ours_xla steps (first rounds only; 0 = every round); its "
                             "first call is its only warm-up")
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false")
    parser.add_argument("--no-lit", dest="lit", action="store_false")
    parser.add_argument("--lit-images", type=int, default=128)
    parser.add_argument("--lit-image-size", type=int, default=224)
    parser.add_argument("--lit-epochs", type=int, default=2, help="timed epochs each")
    parser.add_argument("--gpu", action="store_true",
                        help="also mixed_float16 + XLA at --gpu-batch-size (GPU only)")
    parser.add_argument("--gpu-batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.warmup, args.repeats, args.xla_repeats = [224], 1, 2, 2
        args.lit_images, args.lit_epochs = 64, 1
    command = command_line(argv)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    if not XCEPTION_WEIGHTS.is_file():
        raise SystemExit(f"{XCEPTION_WEIGHTS} is absent: this benchmark needs the shared weights")

    started = time.time()
    rows, breakdowns = throughput_rows(args, log)
    lit = None
    if args.lit:
        log(f"[LiT] both towers locked, {args.lit_images} synthetic images at "
            f"{args.lit_image_size}px, batch {args.batch_size}")
        lit = lit_epochs(args, log)
    gpu, gpu_note = gpu_rows(args, log) if args.gpu else ([], "not requested (--gpu)")

    devices = [d.name for d in tf.config.list_physical_devices()]
    header = (f"Training step throughput, Xception + all-MiniLM-L6-v2, full fine-tuning, "
              f"float32, {os.cpu_count()} CPU cores, TF {tf.__version__}, "
              f"warmup {args.warmup}, {args.repeats} timed steps each, interleaved")
    print("\n" + header)
    print(f"command: {command}\n")
    print("| px | batch | variant | median s/step | pairs/s | vs keras-io | first call s |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['image_size']} | {r['batch_size']} | {r['variant']} | "
              f"{r['median_step_s']:.2f} | {r['pairs_per_s']:.2f} | {r['vs_keras_io']:.2f}x | "
              f"{r['first_call_s']:.1f} |")
    if breakdowns:
        print("\n| px | non-tower step ms: ours | keras-io | share of step: ours | keras-io |")
        print("|---:|---:|---:|---:|---:|")
        for b in breakdowns:
            print(f"| {b['image_size']} | {1e3 * b['non_tower_step_s']['ours']:.1f} | "
                  f"{1e3 * b['non_tower_step_s']['keras_io']:.1f} | "
                  f"{100 * b['non_tower_share_of_step']['ours']:.2f}% | "
                  f"{100 * b['non_tower_share_of_step']['keras_io']:.2f}% |")
    if lit:
        print(f"\n| LiT ({lit['num_images']} images, {lit['image_size']}px, batch "
              f"{lit['batch_size']}, {lit['steps_per_epoch']} steps) | epoch s |")
        print("|---|---:|")
        print(f"| uncached (towers every step) | {lit['uncached_epoch_s']:.2f} |")
        print(f"| cached features | {lit['cached_epoch_s']:.3f} |")
        print(f"| (cached: inside the step calls) | {lit['cached_epoch_in_steps_s']:.3f} |")
        print(f"| **speedup** | **{lit['speedup']:.0f}x** |")
        print(f"| one-time cache build | {lit['cache_build_s']:.2f} |")
    if args.gpu:
        if gpu:
            print("\n| px | batch | variant | median s/step | pairs/s |")
            print("|---:|---:|---|---:|---:|")
            for r in gpu:
                print(f"| {r['image_size']} | {r['batch_size']} | {r['variant']} | "
                      f"{r['median_step_s']:.3f} | {r['pairs_per_s']:.1f} |")
        else:
            print(f"\n--gpu: {gpu_note}")
    print()
    write_result(args.out, "train_step", command, quick=args.quick,
                 load_average_at_end=os.getloadavg(), tensorflow=tf.__version__,
                 devices=devices, wall_s=time.time() - started,
                 settings={"sizes": args.sizes, "batch_size": args.batch_size,
                           "warmup": args.warmup, "repeats": args.repeats},
                 rows=rows, non_tower_breakdown=breakdowns, lit=lit, gpu_rows=gpu,
                 gpu_note=gpu_note)


if __name__ == "__main__":
    main()
