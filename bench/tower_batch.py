"""Image-tower throughput at inference, by batch size (what feature caching and evaluation run).

Locked-tower training and every evaluation spend most of their time in one forward pass of the
image tower over each image. On a CPU the batch size matters: small batches keep the large
early activations (e.g. Xception's 150x150x128 maps at 299 px) in the caches. This times, side
by side in one process, the compiled tower (`encoding.tower_functions`' graph, no chunking) on
random images for several batch sizes, and the product's `image_fn` (which runs a batch in
chunks of `encoding.image_chunk_size()`: 8 without a GPU) on batches of 32, the size the
feature cache feeds it. Rounds alternate the order of the variants so machine noise hits them
alike; the table shows the median images/s of the rounds and the ratio to batch 32. The
product's outputs are checked against one batch-32 call (max |difference|, float rounding).

Usage:
    python bench/tower_batch.py                              # Xception, 299 px, random weights
    python bench/tower_batch.py --size 224 --batches 4 8 32
    python bench/tower_batch.py --tower efficientnetb0 --size 224 --quick
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import command_line, write_result  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tower", default="xception", help="image tower name (model.image_tower)")
    parser.add_argument("--size", type=int, default=299, help="image size in pixels")
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--images", type=int, default=64, help="images per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 32 images")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "tower_batch.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.images = 2, 32
    command = command_line(argv)
    from records.machine import tensorflow_defaults

    tensorflow_defaults()  # the programs' TensorFlow settings, before TensorFlow loads
    import tensorflow as tf

    from dualencoder.model import encoding
    from records import machine
    from dualencoder.model.dual_encoder import build_model

    model = build_model({"image_tower": args.tower, "image_weights": None,
                         "image_size": args.size, "text_tower": "tiny",
                         "image_trainable": "none"})
    image_fn, _ = encoding.tower_functions(model)
    graph = tf.function(lambda x: model.image_features(x, training=False),
                        reduce_retracing=True)
    rng = np.random.default_rng(0)
    pixels = tf.constant(rng.uniform(0, 255, (32, args.size, args.size, 3)).astype(np.float32))

    def batched(bs):
        def run():
            x = pixels[:bs] if bs <= 32 else tf.concat([pixels] * (bs // 32 + 1), 0)[:bs]
            for _ in range(max(1, args.images // bs)):
                graph(x).numpy()
            return max(1, args.images // bs) * bs
        return run

    def product():
        for _ in range(max(1, args.images // 32)):
            image_fn(pixels).numpy()
        return max(1, args.images // 32) * 32

    variants = {f"batch_{bs}": batched(bs) for bs in args.batches}
    variants["product_image_fn_on_32"] = product
    for fn in variants.values():  # warm-up: tracing
        graph(pixels[:2])
        fn()
    rates = {k: [] for k in variants}
    for r in range(args.rounds):
        names = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in names:
            t = time.perf_counter()
            n = variants[name]()
            rates[name].append(n / (time.perf_counter() - t))
    diff = float(np.abs(np.asarray(image_fn(pixels)) - np.asarray(graph(pixels))).max())
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med.get("batch_32")
    chunk = encoding.image_chunk_size()
    cpu = machine.cpu_model()
    print(f"\nImage tower {args.tower} at {args.size} px, inference, {os.cpu_count()} CPU cores "
          f"({cpu}), "
          f"TF {tf.__version__}, GPU: {bool(tf.config.list_logical_devices('GPU'))}; "
          f"image_chunk_size() = {chunk}\ncommand: {command}")
    print(f"{'variant':26s} {'median img/s':>12s} {'vs batch 32':>12s}   rounds")
    rows = []
    for k in variants:
        ratio = med[k] / base if base else None
        rows.append({"variant": k, "median_img_per_s": med[k], "rounds_img_per_s": rates[k],
                     "vs_batch_32": ratio})
        print(f"{k:26s} {med[k]:12.2f} {('%.2fx' % ratio) if ratio else '-':>12s}   "
              + " ".join(f"{x:.2f}" for x in rates[k]))
    print(f"product vs one batch-32 call: max |difference| {diff:.2e}")
    write_result(args.out, "tower_batch", command, tensorflow=tf.__version__, tower=args.tower,
                 size=args.size, image_chunk_size=chunk, images_per_round=args.images, rows=rows,
                 product_max_abs_difference=diff)


if __name__ == "__main__":
    main()
