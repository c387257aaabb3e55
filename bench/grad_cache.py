"""Gradient caching (`optim.micro_batch`): peak memory and seconds per step of a fine-tuned image
tower, at batch B without caching, B in micro-batches of M, and plain batch M.

Each configuration runs in a fresh subprocess (so one's memory cannot hide another's): it builds
the dual encoder (a `keras.applications` image tower with random weights, trained in full, at a
reduced image size so it fits a CPU; the tiny text tower), runs `dualencoder.train.step.make_train_step` on
random batches, and reports seconds per step (median of the timed steps after one warm-up step)
and memory: the process RSS high-water mark (`ru_maxrss`, includes the TensorFlow runtime and
the model), the RSS just before the first step, and on a GPU TensorFlow's own peak
(`tf.config.experimental.get_memory_info`). The targets: a cached step's peak within 1.3x of
plain batch M's, its time at most 1.5x plain batch B's.

Usage:
    python bench/grad_cache.py                                    # EfficientNetB0 at 96 px
    python bench/grad_cache.py --pairs 64:16 128:16 --tower efficientnetb0 --size 96
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import command_line, run_child, write_result  # noqa: E402
from records.cli import positive_int  # noqa: E402


def pair(text: str):
    """"B:M" with M dividing B."""
    try:
        b, m = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B:M (e.g. 128:16), got {text!r}") from None
    if b < 2 or m < 1 or m >= b or b % m:
        raise argparse.ArgumentTypeError(
            f"expected B:M with 1 <= M < B and M dividing B, got {text!r}")
    return b, m


def rss_now_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(spec: dict) -> dict:
    """One configuration in this (fresh) process."""
    from records.machine import tensorflow_defaults

    tensorflow_defaults()
    import keras
    import tensorflow as tf

    from dualencoder.train import setup
    from dualencoder.config import Config
    from dualencoder.testing import tiny_batch
    from dualencoder.train.step import make_train_step

    cfg = Config.from_sources(None, [
        f"model.image_tower={spec['tower']}", "model.image_weights=none",
        f"model.image_size={spec['size']}", "model.image_trainable=all",
        "model.text_tower=tiny", "model.sequence_length=16", "model.embed_dim=128",
        f"data.batch_size={spec['batch']}", f"optim.micro_batch={spec['micro']}",
        "optim.warmup_steps=0"])
    keras.utils.set_random_seed(0)
    model = setup.build(cfg)
    optimizer = setup.make_optimizer(cfg, steps_per_epoch=100)
    optimizer.build(model.trainable_variables)
    step = make_train_step(model, optimizer, tf.distribute.get_strategy(), cfg)
    batches = []
    for s in range(spec["steps"] + 1):
        b = tiny_batch(model, batch_size=spec["batch"], seed=s)
        batches.append({k: tf.convert_to_tensor(v) for k, v in b.items() if k != "caption"})
    before = rss_now_mb()
    times, losses = [], []
    for b in batches:
        t0 = time.perf_counter()
        losses.append(float(step(b)["loss"]))
        times.append(time.perf_counter() - t0)
    gpu = None
    if tf.config.list_logical_devices("GPU"):
        gpu = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return {"rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_first_step_mb": before, "gpu_peak_mb": gpu,
            "seconds_per_step": statistics.median(times[1:]), "first_step_seconds": times[0],
            "losses": losses}


def measure(spec: dict) -> dict:
    """One configuration measured in a fresh child process: `spec` and what it reported."""
    return {**spec, **run_child(__file__, spec, what="the configuration")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tower", default="efficientnetb0", help="model.image_tower")
    parser.add_argument("--size", type=positive_int, default=96, help="image size in pixels")
    parser.add_argument("--pairs", type=pair, nargs="+", default=[(64, 16), (128, 16)],
                        metavar="B:M", help="batch and micro-batch pairs")
    parser.add_argument("--steps", type=positive_int, default=3,
                        help="timed steps per configuration (after one warm-up step)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "grad_cache.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    command = command_line(argv)
    common = {"tower": args.tower, "size": args.size, "steps": args.steps}
    runs, rows = {}, []

    def run(batch, micro):
        key = (batch, micro)
        if key not in runs:
            runs[key] = measure({**common, "batch": batch, "micro": micro})
            r = runs[key]
            print(f"  batch {batch:4d} micro {micro or '-':>4}: {r['seconds_per_step']:.2f} s/step,"
                  f" RSS peak {r['rss_peak_mb']:.0f} MB", flush=True)
        return runs[key]

    for b, m in args.pairs:
        full, cached, small = run(b, 0), run(b, m), run(m, 0)
        np_loss = abs(cached["losses"][0] - full["losses"][0])
        rows.append({
            "batch": b, "micro_batch": m,
            "plain_B": {k: full[k] for k in ("seconds_per_step", "rss_peak_mb",
                                             "rss_before_first_step_mb", "gpu_peak_mb")},
            "cached_B_by_M": {k: cached[k] for k in ("seconds_per_step", "rss_peak_mb",
                                                     "rss_before_first_step_mb", "gpu_peak_mb")},
            "plain_M": {k: small[k] for k in ("seconds_per_step", "rss_peak_mb",
                                              "rss_before_first_step_mb", "gpu_peak_mb")},
            "peak_cached_over_plain_M": cached["rss_peak_mb"] / small["rss_peak_mb"],
            "step_growth_cached_over_plain_M": (
                (cached["rss_peak_mb"] - cached["rss_before_first_step_mb"])
                / (small["rss_peak_mb"] - small["rss_before_first_step_mb"])),
            "time_cached_over_plain_B": cached["seconds_per_step"] / full["seconds_per_step"],
            "first_loss_difference": np_loss,
        })
    head = (f"{'B':>5} {'M':>4} | {'plain B':>17} | {'cached B/M':>17} | {'plain M':>17} | "
            f"peak c/M  time c/B")
    print(f"\n{args.tower} at {args.size} px, trained in full; RSS high-water MB, s/step\n{head}")
    for r in rows:
        cells = [f"{r[k]['rss_peak_mb']:7.0f} MB {r[k]['seconds_per_step']:5.2f} s"
                 for k in ("plain_B", "cached_B_by_M", "plain_M")]
        print(f"{r['batch']:5d} {r['micro_batch']:4d} | " + " | ".join(cells)
              + f" | {r['peak_cached_over_plain_M']:8.2f}x {r['time_cached_over_plain_B']:8.2f}x")
    write_result(args.out, "grad_cache", command, tower=args.tower, image_size=args.size,
                 text_tower="tiny", steps=args.steps, rows=rows,
                 targets={"peak_cached_over_plain_M": 1.3, "time_cached_over_plain_B": 1.5},
                 note="RSS includes the TensorFlow runtime and the model (rss_before_first_step_mb"
                      "); step_growth_* compares only what the step adds. No GPU here: "
                      "gpu_peak_mb is null.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
