"""Cached-feature epochs: building an epoch's pair order and iterating its feature batches.

Locked-tower (LiT) training runs only the heads, so on a CPU its epochs are short and the
input side shows. This compares, on the same records, side by side in one process:

* `order_streaming`: `pair_order(records)` (the reference): the streaming tf.data
  pipeline without decoding; reads the records, draws each element's caption and shuffle key
  element by element (stateless tf.random), sorts windows, batches.
* `order_index_numpy`: `pair_order_arrays(records, index=RecordIndex)`: the same order
  computed in NumPy from an in-memory index (vectorised Philox draws, the interleave order).
* `batches_dataset`: `CachedPairs.epoch(e)`, the tf.data dataset of feature batches (what a
  distribution strategy iterates), created, iterated to its end and dropped.
* `batches_host`: `CachedPairs.host_batches(e)`, the NumPy batches a one-device trainer
  iterates directly.

Both orders are checked equal for every timed epoch (the benchmark fails otherwise); epochs
alternate between the variants so machine noise hits them alike. Features are random arrays of
the recipe's widths (2,048 image, 384 text), so no tower runs.

Usage:
    python bench/epoch_order.py                        # 6,000 synthetic images x 5 captions
    python bench/epoch_order.py --records runs/flickr8k/records/train
    python bench/epoch_order.py --quick
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


def make_records(out: str, num_images: int, captions: int) -> str:
    """Small records with `captions` captions per image (tiny PNGs: only the order matters)."""
    import io

    import tensorflow as tf
    from PIL import Image

    from records import schema
    from records.files import write_json_atomic

    if os.path.exists(os.path.join(out, schema.MANIFEST_NAME)):
        return out
    os.makedirs(out, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    png, shards, per_shard = buf.getvalue(), [], 1000
    for start in range(0, num_images, per_shard):
        n = min(per_shard, num_images - start)
        name = f"shard-{start // per_shard:05d}-of-bench.tfrecord"
        with tf.io.TFRecordWriter(os.path.join(out, name)) as writer:
            for i in range(start, start + n):
                writer.write(schema.encode_example(
                    image_id=f"img{i}", image_bytes=png, image_format="png", height=8, width=8,
                    captions=[f"image {i} caption {j}" for j in range(captions)], index=i))
        shards.append({"name": name, "records": n, "captions": n * captions, "sha256": "",
                       "bytes": 0, "first_index": start})
    write_json_atomic(os.path.join(out, schema.MANIFEST_NAME), {
        "schema_version": schema.SCHEMA_VERSION, "source": "bench", "num_records": num_images,
        "num_captions": num_images * captions, "shards": shards, "class_names": None,
        "image_stats": {}, "build": {}})
    return out


def cached_pairs(records: str, batch_size: int, seed: int):
    """A `CachedPairs` over random feature tables (no towers): the object the trainer uses."""
    from dualencoder.config import Config
    from dualencoder.data.annotations import read_captions
    from dualencoder.data.order import RecordIndex
    from dualencoder.features.pairs import CachedPairs
    from dualencoder.features.plan import CachePlan

    cfg = Config.from_sources(None, [f"data.batch_size={batch_size}", "data.all_captions=true",
                                   f"run.seed={seed}"])
    texts, owner = read_captions(records)
    index = RecordIndex(records)
    rng = np.random.default_rng(0)
    src = CachedPairs.__new__(CachedPairs)
    src.cfg, src.records, src.views = cfg, records, 1
    src.plan = CachePlan(image="pooled", text="pooled")
    src.text_store = src.image_store = None
    src.image_keys = np.sort(index.image_index).astype(np.int64)
    src.image_table = rng.standard_normal((len(src.image_keys), 2048), np.float32)
    src.text_table = rng.standard_normal((len(texts), 384), np.float32)
    src.image_rows = np.arange(len(src.image_keys), dtype=np.int64)
    src.per_view = len(src.image_keys)
    src.caption_keys, first = np.unique(np.asarray(owner, np.int64), return_index=True)
    src.caption_rows = first.astype(np.int64)
    src.record_index = index
    return src, cfg


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", help="a records directory (default: synthetic, built once)")
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--captions", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs per variant")
    parser.add_argument("--workdir", default="runs/bench_epoch_order")
    parser.add_argument("--out", default="bench/results/epoch_order.json")
    parser.add_argument("--quick", action="store_true", help="1,500 images, 2 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.batch_size = 1500, 2, 1024
    command = command_line(argv)
    from records.machine import tensorflow_defaults

    tensorflow_defaults()  # the programs' TensorFlow settings, before TensorFlow loads
    import tensorflow as tf

    from dualencoder.data.order import pair_order, pair_order_arrays

    records = args.records or make_records(
        os.path.join(args.workdir, f"records_{args.images}x{args.captions}"), args.images,
        args.captions)
    t = time.perf_counter()
    src, cfg = cached_pairs(records, args.batch_size, seed=0)
    index_s = time.perf_counter() - t
    kw = dict(batch_size=args.batch_size, seed=0, all_captions=True)

    def order_streaming(e):
        b = list(pair_order(records, epoch=e, **kw).as_numpy_iterator())
        return np.stack([x["image_index"] for x in b]), np.stack([x["caption_index"] for x in b])

    def order_index_numpy(e):
        o = pair_order_arrays(records, epoch=e, index=src.record_index, **kw)
        return o["image_index"], o["caption_index"]

    def batches_dataset(e):
        return sum(1 for _ in src.epoch(e))

    def batches_host(e):
        return sum(1 for _ in (tf.nest.map_structure(tf.convert_to_tensor, b)
                               for b in src.host_batches(e)))

    variants = {"order_streaming": order_streaming, "order_index_numpy": order_index_numpy,
                "batches_dataset": batches_dataset, "batches_host": batches_host}
    times = {k: [] for k in variants}
    for e in range(args.epochs + 1):  # epoch 0: warm-up (tracing), not timed
        names = list(variants) if e % 2 else list(reversed(variants))
        results = {}
        for name in names:
            t = time.perf_counter()
            results[name] = variants[name](e)
            if e:
                times[name].append(time.perf_counter() - t)
        for a, b in zip(results["order_streaming"], results["order_index_numpy"]):
            if not np.array_equal(a, b):
                raise SystemExit(f"epoch {e}: the NumPy order differs from pair_order's")
        assert results["batches_dataset"] == results["batches_host"]
    med = {k: statistics.median(v) for k, v in times.items()}
    steps = int(results["batches_host"])
    rows = [{"variant": k, "median_epoch_s": med[k], "all_epoch_s": times[k]} for k in variants]
    ratios = {"order_streaming_over_index_numpy":
              med["order_streaming"] / med["order_index_numpy"],
              "batches_dataset_over_host": med["batches_dataset"] / med["batches_host"]}
    print(f"\nCached-feature epoch input, {os.cpu_count()} CPU cores, TF {tf.__version__}: "
          f"{len(src.record_index.image_index)} images, {src.text_table.shape[0]} "
          f"captions, batch {args.batch_size}, {steps} steps per epoch, all_captions\n"
          f"command: {command}\n(RecordIndex built once: {index_s:.2f} s; orders checked equal)")
    print(f"{'variant':20s} {'median s/epoch':>15s}   epochs")
    for r in rows:
        print(f"{r['variant']:20s} {r['median_epoch_s']:15.3f}   "
              + " ".join(f"{x:.3f}" for x in r["all_epoch_s"]))
    for k, v in ratios.items():
        print(f"{k}: {v:.1f}x")
    write_result(args.out, "epoch_order", command, tensorflow=tf.__version__, records=records,
                 steps_per_epoch=steps, batch_size=args.batch_size, record_index_s=index_s,
                 rows=rows, ratios=ratios)


if __name__ == "__main__":
    main()
