"""Image-tower inference with TensorFlow's oneDNN kernels on and off (`TF_ENABLE_ONEDNN_OPTS`).

TensorFlow turns oneDNN on by default only on CPUs with AVX-512 VNNI/BF16 or AMX; the
command-line programs set `TF_ENABLE_ONEDNN_OPTS=1` on x86-64 (`machine.tensorflow_defaults`).
The variable is read when TensorFlow loads, so each measurement is a fresh child process
(this file with `--child '{"size": 224, "images": 64, "tower": "xception"}'`), the two settings alternating round by round so machine noise hits
both alike. A child times the product's compiled tower (`encoding.tower_functions`: chunks of
8 images on a CPU) on random images and reports images/s, its user and system CPU seconds
and minor page faults. The table shows the medians and the ratio on/off.

Usage:
    python bench/onednn.py                      # Xception at 299 and 224 px, 3 rounds
    python bench/onednn.py --sizes 224 --rounds 2 --images 32
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


def child(size: int, images: int, tower: str) -> dict:
    """Images/s, CPU seconds and page faults of `tower` at `size` px over `images` random
    images, in this (fresh) process, with the oneDNN state TensorFlow really ran."""
    from records.machine import tensorflow_defaults

    tensorflow_defaults()  # keeps the TF_ENABLE_ONEDNN_OPTS the parent set
    import numpy as np
    from tensorflow.python.util import _pywrap_util_port

    from dualencoder.model import encoding
    from dualencoder.model.dual_encoder import build_model

    model = build_model({"image_tower": tower, "image_weights": None, "image_size": size,
                         "text_tower": "tiny", "image_trainable": "none"})
    image_fn, _ = encoding.tower_functions(model)
    pixels = np.random.default_rng(0).uniform(0, 255, (32, size, size, 3)).astype(np.float32)
    np.asarray(image_fn(pixels[:16]))  # tracing, warm-up
    r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(images // 32):
        np.asarray(image_fn(pixels))
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"onednn": bool(_pywrap_util_port.IsMklEnabled()),  # what TensorFlow really ran
            "img_per_s": images / wall, "user_s": r1.ru_utime - r0.ru_utime,
            "sys_s": r1.ru_stime - r0.ru_stime, "minor_faults": r1.ru_minflt - r0.ru_minflt}


def multiple_of_32(text: str) -> int:
    value = positive_int(text)
    if value % 32:
        raise argparse.ArgumentTypeError(f"expected a multiple of 32 (the batch), got {text!r}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tower", default="xception")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[299, 224])
    parser.add_argument("--images", type=multiple_of_32, default=64,
                        help="images per measurement (a multiple of 32)")
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "onednn.json"))
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(spec["size"], spec["images"], spec["tower"])))
        return
    command = command_line(argv)
    results = {}
    for r in range(args.rounds):
        for size in args.sizes:
            for flag in (("1", "0") if r % 2 == 0 else ("0", "1")):
                measured = run_child(
                    __file__, {"size": size, "images": args.images, "tower": args.tower},
                    env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS=flag),
                    what=f"the measurement of {args.tower} at {size} px with "
                         f"TF_ENABLE_ONEDNN_OPTS={flag}")
                if measured["onednn"] != (flag == "1"):
                    parser.exit(1, f"error: TF_ENABLE_ONEDNN_OPTS={flag} did not set TensorFlow's "
                                   f"oneDNN state (it ran with oneDNN "
                                   f"{'on' if measured['onednn'] else 'off'}): nothing to compare\n")
                results.setdefault((size, flag), []).append(measured)
    from records.machine import cpu_model

    cpu = cpu_model()
    print(f"\n{args.tower} inference, oneDNN on vs off, {os.cpu_count()} CPU cores ({cpu})"
          f"\ncommand: {command}")
    print(f"{'size':>5s} {'oneDNN':>7s} {'img/s':>7s} {'on/off':>7s} {'sys s':>6s} "
          f"{'page faults':>12s}   rounds img/s")
    rows = []
    for size in args.sizes:
        med = {f: statistics.median(x["img_per_s"] for x in results[(size, f)]) for f in "10"}
        for f in "10":
            runs = results[(size, f)]
            row = {"size": size, "onednn": f == "1", "median_img_per_s": med[f],
                   "on_over_off": med["1"] / med["0"],
                   "median_sys_s": statistics.median(x["sys_s"] for x in runs),
                   "median_minor_faults": statistics.median(x["minor_faults"] for x in runs),
                   "rounds": runs}
            rows.append(row)
            print(f"{size:5d} {'on' if f == '1' else 'off':>7s} {med[f]:7.2f} "
                  f"{row['on_over_off']:6.2f}x {row['median_sys_s']:6.1f} "
                  f"{row['median_minor_faults']:12.0f}   "
                  + " ".join(f"{x['img_per_s']:.2f}" for x in runs))
    write_result(args.out, "onednn", command, tower=args.tower, images=args.images, rows=rows)


if __name__ == "__main__":
    main()
