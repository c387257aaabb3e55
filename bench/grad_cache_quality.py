"""Does a big batch by gradient caching train like the big batch? The synthetic default on CPU.

Four runs of `configs/synthetic_default.json` (a 3-block CNN from scratch at 64 px against the
locked MiniLM, MLP heads, `clip` loss), each seeing the same number of training pairs:

* `plain B`:            batch B in one piece;
* `cached B as M`:      batch B by gradient caching in micro-batches of M (`optim.micro_batch`);
* `split B as N x M`:   the older accumulation, a loss per micro-batch (`optim.split_loss_accum`);
* `plain M`:            batch M (B/M times as many steps).

The warm-up covers the same number of pairs in every run; everything else is the synthetic
default's. The table shows the first and last training losses, the largest difference between
the per-step losses of `cached` and `plain B` (the CNN's BatchNorm normalises per micro-batch
of M in the cached run and per B in the plain one: the runs agree closely, not to the digit),
and held-out retrieval on the 375 validation scenes (`report.synthetic_report`, R@1/5/10 both
ways). Writes bench/results/grad_cache_quality.json.

Usage:
    python bench/grad_cache_quality.py                         # B=1024, M=64, 45 steps of B
    python bench/grad_cache_quality.py --batch 512 --micro 64 --big-steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from records.cli import positive_int  # noqa: E402
from records.files import write_json_atomic  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=positive_int, default=1024, help="the big batch B")
    parser.add_argument("--micro", type=positive_int, default=64, help="the micro-batch M")
    parser.add_argument("--big-steps", type=positive_int, default=45,
                        help="optimizer steps of batch B (batch M runs B/M times as many)")
    parser.add_argument("--lr-scaling", choices=("none", "sqrt"), default="none",
                        help="learning rate of a batch-b run: the default's (none) or the "
                             "default's times sqrt(b / 64) (sqrt)")
    parser.add_argument("--workdirs", default=str(ROOT / "runs" / "grad_cache_quality"),
                        help="folder for the four run folders (replaced)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" /
                                             "grad_cache_quality.json"))
    args = parser.parse_args(argv)
    if args.micro >= args.batch or args.batch % args.micro:
        parser.error(f"argument --micro: must be smaller than --batch and divide it, got "
                     f"--batch {args.batch} --micro {args.micro}")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    from records.machine import cpu_model, tensorflow_defaults

    tensorflow_defaults()
    from dualencoder.config import Config
    from dualencoder.train.report import synthetic_report
    from dualencoder.train.loop import train

    b, m = args.batch, args.micro
    n = b // m
    pairs = b * args.big_steps
    base = str(ROOT / "configs" / "synthetic_default.json")
    common = ["optim.epochs=1000", "optim.early_stopping=0", "run.checkpoint_every=0",
              "run.ledger=true", f"run.features_dir={os.path.join(args.workdirs, 'features')}"]
    default = Config.from_sources(base)
    default_warmup = default.optim.warmup_steps  # in steps of batch 64
    runs = {
        f"plain {b}": [f"data.batch_size={b}"],
        f"cached {b} as {m}": [f"data.batch_size={b}", f"optim.micro_batch={m}"],
        f"split {b} as {n}x{m}": [f"data.batch_size={b}", f"optim.split_loss_accum={n}"],
        f"plain {m}": [f"data.batch_size={m}"],
    }
    results = {}
    for name, sets in runs.items():
        batch = int(sets[0].split("=")[1])
        steps = pairs // batch
        warmup = max(1, round(default_warmup * 64 / batch))
        lr = default.optim.lr * ((batch / 64) ** 0.5 if args.lr_scaling == "sqrt" else 1.0)
        cfg = Config.from_sources(base, common + sets + [
            f"optim.max_steps={steps}", f"optim.warmup_steps={warmup}", f"optim.lr={lr:.6g}"])
        workdir = os.path.join(args.workdirs, name.replace(" ", "_"))
        shutil.rmtree(workdir, ignore_errors=True)
        t0 = time.time()
        summary = train(cfg, workdir, log=lambda *_: None)
        seconds = time.time() - t0
        with open(os.path.join(workdir, "ledger.jsonl")) as fh:
            losses = [json.loads(line)["loss"] for line in fh]
        report = synthetic_report(workdir, cfg)
        r = report["retrieval"]
        results[name] = {
            "batch": batch, "steps": summary["steps"], "pairs_seen": summary["steps"] * batch,
            "warmup_steps": warmup, "lr": lr, "train_seconds": round(seconds, 1), "losses": losses,
            "i2t": _percent(r["image_to_text"]), "t2i": _percent(r["text_to_image"]),
            "zeroshot_top1": 100 * report["zeroshot"]["top1"]}
        print(f"{name}: {summary['steps']} steps in {seconds:.0f} s, i2t R@1 "
              f"{results[name]['i2t']['R@1']:.1f}, t2i R@1 {results[name]['t2i']['R@1']:.1f}",
              flush=True)

    plain, cached = results[f"plain {b}"]["losses"], results[f"cached {b} as {m}"]["losses"]
    diffs = [abs(x - y) for x, y in zip(plain, cached)]
    step_match = {"max_abs_loss_difference": max(diffs),
                  "max_rel_loss_difference": max(d / abs(y) for d, y in zip(diffs, plain)),
                  "first_step_abs_difference": diffs[0]}
    print(f"\nsynthetic default, {pairs:,} training pairs per run; held-out retrieval on "
          f"375 validation scenes (R@1/5/10)")
    print(f"{'run':<22} {'steps':>5} {'loss first':>10} {'last':>7} {'image->text':>17} "
          f"{'text->image':>17} {'zero-shot':>9} {'train s':>7}")
    for name, row in results.items():
        fmt = lambda d: "/".join(f"{d[f'R@{k}']:.1f}" for k in (1, 5, 10))  # noqa: E731
        print(f"{name:<22} {row['steps']:5d} {row['losses'][0]:10.3f} {row['losses'][-1]:7.3f} "
              f"{fmt(row['i2t']):>17} {fmt(row['t2i']):>17} {row['zeroshot_top1']:8.1f}% "
              f"{row['train_seconds']:7.0f}")
    print(f"cached vs plain {b}, step by step: largest loss difference "
          f"{step_match['max_abs_loss_difference']:.4f} "
          f"({100 * step_match['max_rel_loss_difference']:.2f}%), first step "
          f"{step_match['first_step_abs_difference']:.2e}")
    result = {"benchmark": "grad_cache_quality", "command": command, "cpu": cpu_model(),
              "cores": os.cpu_count(), "config": "configs/synthetic_default.json",
              "batch": b, "micro_batch": m, "pairs_per_run": pairs, "runs": results,
              "cached_vs_plain_step_by_step": step_match}
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result, indent=2)
    print(f"wrote {args.out}")
    return 0


def _percent(recall: dict) -> dict:
    """R@k as percentages; ranks and counts as they are."""
    return {k: 100 * v if k.startswith("R@") else v for k, v in recall.items()}


if __name__ == "__main__":
    sys.exit(main())
