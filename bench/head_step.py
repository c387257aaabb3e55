"""Head-only (locked-tower, cached-feature) training step at batch 4,096: the loss's cost.

With both towers locked, a LiT step is two linear heads, the contrastive loss over a
`[B, B]` logit matrix and an AdamW update. On a CPU the elementwise passes over that matrix
cost more than its matmul, so the form of the loss matters. This times, side by side in one
process on the same random features (Xception 2,048-d, MiniLM 384-d, 5 captions per image
as in Flickr8k's all-captions batches), one full step (forward, gradients, AdamW) with:

* `product`: `dualencoder.losses.clip_loss` (log-sum-exp form, positives by group sums);
* `explicit`: `bench/reference/clip_loss_explicit.py` (positive mask, targets, log-softmax);
* each also under XLA (`jit_compile=True`).

Rounds alternate the order of the variants; the table shows median seconds per step and
the speed-up over `explicit`, and the loss values (identical up to float rounding).

Usage:
    python bench/head_step.py            # batch 4096, 5 rounds of 3 steps
    python bench/head_step.py --batch 1024 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "reference"))

from bench.common import command_line, write_result  # noqa: E402
from records.cli import positive_int  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=positive_int, default=4096,
                        help="pairs per step, 5 per image (at least 5)")
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--steps", type=positive_int, default=3,
                        help="steps per variant per round")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "head_step.json"))
    args = parser.parse_args(argv)
    if args.batch < 5:
        parser.error(f"argument --batch: expected at least 5 (5 captions per image), "
                     f"got {args.batch}")
    command = command_line(argv)
    from records.machine import cpu_model, tensorflow_defaults

    tensorflow_defaults()
    import keras
    import numpy as np
    import tensorflow as tf
    from clip_loss_explicit import clip_loss_explicit

    from dualencoder import losses

    rng = np.random.default_rng(0)
    b = args.batch
    image_f = tf.constant(rng.normal(size=(b, 2048)).astype(np.float32))
    text_f = tf.constant(rng.normal(size=(b, 384)).astype(np.float32))
    index = tf.constant(rng.integers(0, b // 5, b), tf.int64)

    init_i = rng.normal(size=(2048, 256)).astype(np.float32) * 0.02  # every variant starts
    init_t = rng.normal(size=(384, 256)).astype(np.float32) * 0.05   # from these weights

    def variant(loss_fn, jit):
        w_i, w_t = tf.Variable(init_i), tf.Variable(init_t)
        scale = tf.Variable(14.0)
        opt = keras.optimizers.AdamW(1e-3, weight_decay=0.5)
        opt.build([w_i, w_t, scale])

        @tf.function(jit_compile=jit)
        def step():
            with tf.GradientTape() as tape:
                img = tf.math.l2_normalize(image_f @ w_i, -1)
                txt = tf.math.l2_normalize(text_f @ w_t, -1)
                loss = loss_fn(img, txt, scale, index)
            grads = tape.gradient(loss, [w_i, w_t, scale])
            opt.apply_gradients(zip(grads, [w_i, w_t, scale]))
            return loss
        return step

    def product(img, txt, scale, idx):
        return losses.clip_loss(img, txt, scale, image_index=idx)

    variants = {"explicit": variant(clip_loss_explicit, False),
                "product": variant(product, False),
                "explicit_xla": variant(clip_loss_explicit, True),
                "product_xla": variant(product, True)}
    first_loss = {k: float(fn()) for k, fn in variants.items()}  # tracing / compiling
    times = {k: [] for k in variants}
    for r in range(args.rounds):
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            t = time.perf_counter()
            for _ in range(args.steps):
                float(variants[name]())
            times[name].append((time.perf_counter() - t) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu = cpu_model()
    print(f"\nHead-only step, batch {b}, {os.cpu_count()} CPU cores ({cpu}), TF {tf.__version__}, "
          f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}\ncommand: {command}")
    print(f"{'variant':14s} {'s/step':>8s} {'vs explicit':>12s} {'first loss':>11s}   rounds")
    rows = []
    for k in variants:
        ratio = med["explicit"] / med[k]
        rows.append({"variant": k, "median_s_per_step": med[k], "rounds_s_per_step": times[k],
                     "speedup_vs_explicit": ratio, "first_loss": first_loss[k]})
        print(f"{k:14s} {med[k]:8.3f} {ratio:11.2f}x {first_loss[k]:11.5f}   "
              + " ".join(f"{x:.3f}" for x in times[k]))
    write_result(args.out, "head_step", command, tensorflow=tf.__version__, batch=b, rows=rows)


if __name__ == "__main__":
    main()
