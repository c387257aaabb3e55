"""Boundary caching: tuned-tower epochs from cached tower outputs vs re-running frozen parts.

Side by side in one process, on the same synthetic records, real towers (Xception at 299 px,
all-MiniLM-L6-v2), the training loop's own compiled step and `CachedPairs` batches:

* `rerun_all`: text top-N trained, nothing cached: Xception and MiniLM's frozen layers run
  on every batch (what `run.cache_features=off` does).
* `image_cached`: Xception's pooled features cached once; MiniLM runs whole every step (its
  frozen lower layers included).
* `boundary_cached`: Xception's features and the token states entering MiniLM's first
  trained layer cached once; each step runs only the trained layers (in length buckets), the
  heads and the loss.

Ratios: `rerun_all / boundary_cached` (target >= 10x for top-1) and `image_cached /
boundary_cached` (target >= 1.5x for N <= 2); and Xception's top block trained with text
locked, re-running the frozen blocks vs reading their cached output. Then the caches' build time and size per 1,000
captions (text states) and per 1,000 images (Xception's top-block input), and the scale
check: an epoch's host-side batches read from a text-state store of 1x and 10x the rows
(each in a child process, batches of 1,024 captions), with its peak anonymous memory (the process's own), peak resident
set (which also counts file pages of the memory map the kernel may drop) and read time.

Usage:
    python bench/boundary_cache.py                 # 256 images, batch 64, top-1 and top-2
    python bench/boundary_cache.py --quick
Writes bench/results/boundary_cache.json (and prints a table).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import command_line, run_child, write_result  # noqa: E402

XCEPTION = ROOT.parent / "shared" / "weights" / "xception_imagenet_notop.weights.h5"


def config(records: str, text_trainable: int, batch: int, image_trainable="none"):
    from dualencoder.config import Config

    weights = str(XCEPTION) if XCEPTION.exists() else "none"
    return Config.from_sources(None, [
        f"data.records={records}", f"data.batch_size={batch}", "model.head=linear",
        f"model.image_weights={weights}", f"model.image_trainable={image_trainable}",
        f"model.text_trainable={text_trainable}", "model.head_dropout=0",
        "optim.warmup_steps=1", "run.precision=float32"])


def epoch_seconds(cfg, plan, records, feature_dir, epochs=2):
    """Seconds of the last of `epochs` epochs (the first traces) and the cache build time."""
    import keras

    from dualencoder.features.pairs import CachedPairs
    from dualencoder.train import setup
    from dualencoder.train.loop import training_batches
    from dualencoder.train.step import make_train_step

    strategy = setup.make_strategy("auto")
    model, optimizer = setup.model_and_optimizer(cfg, strategy, records)
    start = time.perf_counter()
    source = (CachedPairs(model, cfg, records, feature_dir, plan=plan, log=lambda *a: None)
              if plan else None)
    build = time.perf_counter() - start
    step = make_train_step(model, optimizer, strategy, cfg)
    seconds = None
    for epoch in range(epochs):
        start = time.perf_counter()
        for batch in training_batches(cfg, records, model, source, plan, strategy, 1,
                                      epoch=epoch, skip_batches=0):
            float(step(batch)["loss"])
        seconds = time.perf_counter() - start
    keras.backend.clear_session()
    return seconds, build


def epochs_table(args, records, workdir, log):
    from dualencoder.data.order import steps_per_epoch
    from dualencoder.features.plan import CachePlan

    rows = []
    for top in args.top:
        cfg = config(records, top, args.batch)
        features = os.path.join(workdir, "features")  # shared: each tower pass runs once
        variants = {"rerun_all": None, "image_cached": CachePlan("pooled", None),
                    "boundary_cached": CachePlan("pooled", "boundary")}
        if top > args.top[0]:
            variants.pop("rerun_all")  # the towers' cost is the same for every N
        row = {"text_trainable": top, "pairs": steps_per_epoch(records, args.batch) * args.batch}
        for name, plan in variants.items():
            seconds, build = epoch_seconds(cfg, plan, records, features)
            row[name] = {"epoch_s": round(seconds, 2), "cache_build_s": round(build, 2)}
            log(f"  text top-{top} {name:16s} epoch {seconds:7.2f} s (caches {build:.1f} s)")
        base = row["boundary_cached"]["epoch_s"]
        row["image_cached_over_boundary"] = round(row["image_cached"]["epoch_s"] / base, 2)
        if "rerun_all" in row:
            row["rerun_all_over_boundary"] = round(row["rerun_all"]["epoch_s"] / base, 2)
        rows.append(row)
    if args.image:  # Xception's top block trained, text locked
        cfg = config(records, "none", args.batch, image_trainable=1)
        row = {"image_trainable": 1, "pairs": steps_per_epoch(records, args.batch) * args.batch}
        for name, plan in (("image_rerun", CachePlan(None, "pooled")),
                           ("image_boundary_cached", CachePlan("boundary", "pooled"))):
            seconds, build = epoch_seconds(cfg, plan, records, os.path.join(workdir, "features"))
            row[name] = {"epoch_s": round(seconds, 2), "cache_build_s": round(build, 2)}
            log(f"  image top block {name:22s} epoch {seconds:7.2f} s (caches {build:.1f} s)")
        row["rerun_over_boundary"] = round(row["image_rerun"]["epoch_s"]
                                           / row["image_boundary_cached"]["epoch_s"], 2)
        rows.append(row)
    return rows


def build_costs(args, records, workdir, log):
    """Build time and size per 1,000 of the text-state and image-map caches."""
    import keras

    from dualencoder.data.annotations import read_captions
    from dualencoder.features import compute
    from dualencoder.train import setup

    out = {}
    cfg = config(records, 1, args.batch, image_trainable=1)
    model = setup.build(cfg)
    captions = len(read_captions(records)[0])
    for name, fn, count in (("text_states_top1", compute.text_states, captions),
                            ("image_maps_top_block", compute.image_states, args.images)):
        directory = tempfile.mkdtemp(dir=workdir)
        start = time.perf_counter()
        store = fn(model, cfg, records, directory, log=lambda *a: None)
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in pathlib.Path(store.path).iterdir())
        out[name] = {"items": count, "seconds_per_1000": round(1000 * seconds / count, 2),
                     "mb_per_1000": round(1000 * size / count / 2**20, 2),
                     "row_shape": list(store.rows.shape[1:])}
        log(f"  {name}: {out[name]['seconds_per_1000']} s and {out[name]['mb_per_1000']} MB "
            f"per 1,000 (rows {out[name]['row_shape']})")
    out["image_boundary"] = model.image_tower.boundary
    keras.backend.clear_session()
    return out


def scale_child(spec: dict) -> dict:
    """One epoch of host-side text-state batches from a synthetic store of `rows` captions."""
    from dualencoder.features.boundary import gather_text_states
    from dualencoder.features.store import RowStore, RowWriter

    rng = np.random.default_rng(0)
    captions, hidden, batch = spec["captions"], 384, spec["batch"]
    lengths = rng.integers(8, 24, captions)
    path = os.path.join(spec["dir"], f"states-{captions}")
    store = RowStore.open(path)
    if store is None:
        writer = RowWriter(path, int(lengths.sum()), (hidden,))
        chunk = rng.standard_normal((1 << 16, hidden)).astype(np.float16)
        left = int(lengths.sum())
        while left:
            writer.append(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        store = writer.close({"start": starts, "length": lengths,
                              "caption_image_index": np.arange(captions)})
    order = rng.permutation(captions)
    peak = {"anon": 0, "rss": 0}
    start = time.perf_counter()
    for i in range(0, captions - batch + 1, batch):
        states, _ = gather_text_states(store, order[i:i + batch])
        status = _status()
        peak = {"anon": max(peak["anon"], status["RssAnon"]), "rss": max(peak["rss"],
                                                                           status["VmRSS"])}
    return {"captions": captions, "store_mb": round(store.rows.nbytes / 2**20),
            "epoch_read_s": round(time.perf_counter() - start, 2),
            "peak_anon_mb": round(peak["anon"] / 1024), "peak_rss_mb": round(peak["rss"] / 1024)}


def _status() -> dict:
    values = {}
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "VmRSS"):
                values[key] = int(rest.split()[0])
    return values


def scale_table(args, workdir, log):
    rows = []
    for factor in (1, 10):
        spec = {"captions": args.scale_captions * factor, "batch": 1024, "dir": workdir}
        measured = run_child(__file__, spec, cwd=ROOT, what=f"the {factor}x scale check")
        rows.append({"factor": factor, **measured})
        r = rows[-1]
        log(f"  {factor:2d}x: {r['captions']} captions, store {r['store_mb']} MB, epoch read "
            f"{r['epoch_read_s']} s, peak anon {r['peak_anon_mb']} MB, peak RSS "
            f"{r['peak_rss_mb']} MB")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="synthetic training images")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--top", type=int, nargs="+", default=[1, 2],
                        help="MiniLM layers trained (model.text_trainable)")
    parser.add_argument("--no-image", dest="image", action="store_false",
                        help="skip the image-top-block epochs")
    parser.add_argument("--scale-captions", type=int, default=30000,
                        help="captions of the 1x text-state store in the scale check")
    parser.add_argument("--quick", action="store_true", help="64 images, top-1, 3,000 captions")
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "bench_boundary_cache"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "boundary_cache.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(scale_child(json.loads(args.child))))
        return 0
    if args.quick:
        args.images, args.top, args.scale_captions = 64, [1], 3000
    command = command_line(argv)
    from records.machine import tensorflow_defaults

    tensorflow_defaults()
    from records.build import build_records

    os.makedirs(args.workdir, exist_ok=True)
    records = os.path.join(args.workdir, f"synthetic_{args.images}")
    if not os.path.exists(os.path.join(records, "manifest.json")):
        build_records("synthetic", records, num_images=args.images, image_size=64, seed=0)
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    log(f"epochs: {args.images} images, batch {args.batch}, Xception 299 px + MiniLM")
    epochs = epochs_table(args, records, args.workdir, log)
    log("cache build cost")
    costs = build_costs(args, records, args.workdir, log)
    log("scale: text-state store at 1x and 10x rows")
    scale = scale_table(args, args.workdir, log)
    print(f"\n{'text top-N':>10} | {'rerun all':>9} | {'image cached':>12} | "
          f"{'boundary':>8} | all/boundary | image/boundary")
    for r in (r for r in epochs if "text_trainable" in r):
        rerun = f"{r['rerun_all']['epoch_s']:8.1f}s" if "rerun_all" in r else f"{'-':>9}"
        ratio = (f"{r['rerun_all_over_boundary']:11.1f}x" if "rerun_all" in r
                 else f"{'-':>12}")
        print(f"{r['text_trainable']:>10} | {rerun} | {r['image_cached']['epoch_s']:11.1f}s"
              f" | {r['boundary_cached']['epoch_s']:7.1f}s | {ratio} | "
              f"{r['image_cached_over_boundary']:13.2f}x")
    for r in (r for r in epochs if "image_trainable" in r):
        print(f"image top block: re-run Xception {r['image_rerun']['epoch_s']:.1f}s, from cached "
              f"maps {r['image_boundary_cached']['epoch_s']:.1f}s: {r['rerun_over_boundary']:.1f}x")
    write_result(args.out, "boundary_cache", command, images=args.images, batch=args.batch,
                 precision="float32", epochs=epochs, build=costs, scale=scale,
                 targets={"rerun_all_over_boundary": 10, "image_cached_over_boundary": 1.5})
    return 0


if __name__ == "__main__":
    sys.exit(main())
