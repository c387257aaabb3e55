"""How far bfloat16 tower passes move the cached features: float32 vs bfloat16 pooled outputs
of the locked towers on the same records, row by row (cosine mean, min and percentiles).

The features come from the product's own caches (`dualencoder.features.compute`), keyed by
precision: after a recipe ran both precisions (configs/recipes/flickr8k_tuned.json has
float32 and bfloat16 members) this reads them back in seconds; otherwise it computes them.
What the difference does to retrieval is in the recipe's REPORT.md (dev rsum per member).

Usage:
    python bench/precision_parity.py --config configs/flickr8k_lit.json \\
        --records runs/flickr8k/records/train runs/flickr8k/records/dev \\
        --features runs/flickr8k/features
Writes bench/results/precision_parity.json (and prints a table).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import command_line, write_result  # noqa: E402


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def summary(cos: np.ndarray) -> dict:
    return {"rows": int(len(cos)), "mean": round(float(cos.mean()), 6),
            "min": round(float(cos.min()), 6),
            "p01": round(float(np.percentile(cos, 1)), 6),
            "p50": round(float(np.percentile(cos, 50)), 6)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="training config of the locked towers")
    parser.add_argument("--records", nargs="+", required=True, help="records directories")
    parser.add_argument("--features", required=True, help="feature cache folder")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" /
                                             "precision_parity.json"))
    args = parser.parse_args(argv)
    from records.machine import tensorflow_defaults

    tensorflow_defaults()
    from dualencoder.config import Config
    from dualencoder.features import compute
    from dualencoder.train import setup

    command = command_line(argv)
    cfgs = {p: Config.from_sources(args.config, [f"run.tower_precision={p}"])
            for p in ("float32", "bfloat16")}
    model = setup.build(cfgs["float32"])
    rows = []
    for records in args.records:
        for side, fn, key in (("image", compute.image_features, "image_features"),
                              ("text", compute.text_features, "text_features")):
            start = time.perf_counter()
            feats = {p: np.asarray(fn(model, cfg, records, args.features, log=print)[key],
                                   np.float32) for p, cfg in cfgs.items()}
            row = {"records": records, "side": side,
                   **summary(cosines(feats["float32"], feats["bfloat16"])),
                   "seconds": round(time.perf_counter() - start, 1)}
            rows.append(row)
            print(f"{os.path.basename(records):8} {side:5}: cosine mean {row['mean']:.6f}, "
                  f"min {row['min']:.6f}, 1st percentile {row['p01']:.6f} ({row['rows']} rows)",
                  flush=True)
    write_result(args.out, "precision_parity", command, config=args.config,
                 image_tower=cfgs["float32"].model.image_tower,
                 image_size=cfgs["float32"].model.image_size, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
