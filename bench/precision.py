"""Tower passes and tuned layers in float32 vs bfloat16, side by side, on this CPU.

Each measurement runs in a fresh child process (this file with `--child`), because oneDNN
reads its settings when TensorFlow loads. A child times float32 and bfloat16 alternately,
round by round, so machine noise hits both alike:

* image-tower inference the way the product runs it (`encoding.tower_functions`: chunks of
  8 images on a CPU; bfloat16 = `model.tower_precision`, float32 weights): Xception at the
  Flickr8k recipe's 299 and 224 px, EfficientNetB0 at 224 px (random weights: speed only);
* MiniLM inference (batches of 256 captions x 32 tokens) and training (forward + backward,
  all six layers or the top two), bfloat16 training being `run.precision=mixed_bfloat16`.

Environments: `default` (what the programs set: `TF_ENABLE_ONEDNN_OPTS=1`), `onednn_off`
(`TF_ENABLE_ONEDNN_OPTS=0`) and `no_bf16_isa` (`ONEDNN_MAX_CPU_ISA=AVX512_CORE`: oneDNN may
not use AMX or AVX512-BF16 instructions, i.e. a CPU without bfloat16 units, where bfloat16
is emulated). A last child runs one bfloat16 Xception batch with `ONEDNN_VERBOSE=1` and lists
the oneDNN kernels that executed (AMX / AVX512-BF16 ones, or not).

Usage:
    python bench/precision.py            # all of the above, 3 rounds
    python bench/precision.py --quick    # 1 round, default environment + the kernel check
Writes bench/results/precision.json (and prints a table).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import command_line, run_child, write_result  # noqa: E402

ENVIRONMENTS = {
    "default": {"TF_ENABLE_ONEDNN_OPTS": "1"},
    "onednn_off": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    "no_bf16_isa": {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}
# work -> (unit, items per call); the environments other than default run the first two.
WORKS = {
    "xception_299": ("img/s", 16), "minilm_infer": ("captions/s", 256),
    "xception_224": ("img/s", 16), "efficientnetb0_224": ("img/s", 16),
    "minilm_train_all": ("captions/s", 256), "minilm_train_top2": ("captions/s", 256),
}


def _image_model(work: str):
    from dualencoder.model.dual_encoder import build_model

    tower, size = work.rsplit("_", 1)
    return build_model({"image_tower": tower, "image_weights": "none", "image_size": int(size),
                        "text_tower": "tiny", "embed_dim": 16}), int(size)


def _timer(work: str, precision: str):
    """A no-argument function running `work` once in `precision` (traced and warmed up)."""
    import numpy as np
    import tensorflow as tf

    from dualencoder.model.encoding import tower_functions
    from dualencoder.model.tower_precision import set_tower_precision

    rng = np.random.default_rng(0)
    if work.startswith(("xception", "efficientnet")):
        model, size = _image_model(work)
        set_tower_precision(model, precision)
        image_fn, _ = tower_functions(model)
        images = tf.constant(rng.uniform(0, 255, (16, size, size, 3)).astype("float32"))
        return lambda: image_fn(images).numpy()
    import keras

    from dualencoder.model.dual_encoder import build_model

    ids = tf.constant(rng.integers(1000, 20000, (256, 32)), tf.int32)
    mask = tf.ones((256, 32), tf.bool)
    if work == "minilm_infer":
        model = build_model({"image_tower": "tiny", "image_size": 32, "embed_dim": 16})
        set_tower_precision(model, precision)
        _, text_fn = tower_functions(model)
        return lambda: text_fn({"token_ids": ids, "padding_mask": mask}).numpy()
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        model = build_model({"image_tower": "tiny", "image_size": 32, "embed_dim": 16,
                             "text_trainable": "all" if work.endswith("all") else 2})
    finally:
        keras.config.set_dtype_policy("float32")
    tower = model.text_tower
    variables = tower.trainable_variables

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = tf.cast(tower({"token_ids": ids, "padding_mask": mask}, training=True),
                          tf.float32)
            loss = tf.reduce_mean(tf.square(out))
        return [tf.reduce_sum(g) for g in tape.gradient(loss, variables) if g is not None]

    return lambda: [g.numpy() for g in step()]


def child(spec: dict) -> dict:
    from records.machine import tensorflow_defaults

    tensorflow_defaults()
    fns, rows = {}, collections.defaultdict(list)
    for work in spec["works"]:
        for precision in ("float32", "bfloat16"):
            fns[work, precision] = _timer(work, precision)
            fns[work, precision]()  # trace + warm up
    for _ in range(spec["rounds"]):
        for (work, precision), fn in fns.items():
            calls, start = 0, time.perf_counter()
            while calls < spec["min_calls"] or time.perf_counter() - start < spec["seconds"]:
                fn()
                calls += 1
            rows[f"{work}/{precision}"].append(
                calls * WORKS[work][1] / (time.perf_counter() - start))
    return dict(rows)


def kernel_check() -> dict:
    """One bfloat16 Xception batch with ONEDNN_VERBOSE=1: the oneDNN kernels that ran."""
    code = ("import sys; sys.path[:0] = [%r, %r]; from precision import _timer; "
            "_timer('xception_96', 'bfloat16')()" % (str(ROOT), str(ROOT / "bench")))
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_VERBOSE": "1",
           "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    kernels = collections.Counter()
    for line in out.splitlines():
        parts = line.split(",")
        if line.startswith("onednn_verbose") and "exec" in parts and len(parts) > 6:
            at = parts.index("exec")
            kernels[f"{parts[at + 2]}:{parts[at + 3]}"] += 1
    isa = next((m.group(1).strip() for m in re.finditer(r"cpu,isa:([^\n]+)", out)), None)
    return {"isa": isa, "kernels": dict(kernels.most_common(12)),
            "bf16_kernels": any(re.search(r"amx|bf16", k) for k in kernels)}


def measure(env_name: str, works, args) -> dict:
    """The timings of `works` from a fresh child process in environment `env_name`."""
    spec = {"works": works, "rounds": args.rounds, "seconds": args.seconds, "min_calls": 2}
    env = {**os.environ, **ENVIRONMENTS[env_name], "KERAS_BACKEND": "tensorflow",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    return run_child(__file__, spec, env=env, what=f"the child in environment {env_name}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per timing, at least")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "precision.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.quick:
        args.rounds = 1
    command = command_line(argv)
    envs = ["default"] if args.quick else list(ENVIRONMENTS)
    rows = []
    for env_name in envs:
        works = list(WORKS) if env_name == "default" else list(WORKS)[:2]
        print(f"{env_name}: {', '.join(works)} ...", flush=True)
        timings = measure(env_name, works, args)
        for work in works:
            f32, b16 = (statistics.median(timings[f"{work}/{p}"])
                        for p in ("float32", "bfloat16"))
            rows.append({"environment": env_name, "work": work, "unit": WORKS[work][0],
                         "float32": round(f32, 1), "bfloat16": round(b16, 1),
                         "bf16_over_fp32": round(b16 / f32, 2),
                         "rounds": {p: [round(v, 1) for v in timings[f"{work}/{p}"]]
                                    for p in ("float32", "bfloat16")}})
    print("kernel check (ONEDNN_VERBOSE=1, one bfloat16 Xception batch) ...", flush=True)
    kernels = kernel_check()
    print(f"\n{'environment':12} | {'work':20} | {'float32':>9} | {'bfloat16':>9} | ratio")
    for r in rows:
        print(f"{r['environment']:12} | {r['work']:20} | {r['float32']:9.1f} | "
              f"{r['bfloat16']:9.1f} | {r['bf16_over_fp32']:.2f}x  ({r['unit']})")
    print(f"oneDNN ISA: {kernels['isa']}; bfloat16 kernels ran: {kernels['bf16_kernels']}; "
          f"top kernels: {', '.join(list(kernels['kernels'])[:5])}")
    write_result(args.out, "precision", command, rounds=args.rounds, rows=rows,
                 onednn_kernels=kernels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
