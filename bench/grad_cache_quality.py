"""Does a big batch by gradient caching train like the big batch, and better than the others?

Four runs of one training config (default: `configs/synthetic_default.json`, a 3-block CNN from
scratch at 64 px against the locked MiniLM), each seeing the same number of training pairs:

* `plain B`:            batch B in one piece;
* `cached B as M`:      batch B by gradient caching in micro-batches of M (`optim.micro_batch`);
* `split B as N x M`:   the older accumulation, a loss per micro-batch (`optim.split_loss_accum`);
* `plain S`:            the small batch S (default M), B/S times as many steps.

The warm-up covers the same number of pairs in every run; the learning rate is the config's,
or (`--lr-scaling sqrt`) the config's times sqrt(batch / config batch). Each run is scored on
its validation records at its *last* epoch (no epoch is selected on them): R@1/5/10 both ways
and rsum, averaged over `--seeds`. The table also shows the first and last training losses and
the largest per-step loss difference between `cached` and `plain B` (zero up to float rounding
unless a tower has BatchNorm, which normalises per micro-batch of M in the cached run).
Writes bench/results/grad_cache_quality.json (or `--out`).

Usage:
    python bench/grad_cache_quality.py                # synthetic default, B=1024, M=64, 150 steps
    python bench/grad_cache_quality.py --big-steps 45 --lr-scaling sqrt --seeds 0 1 2
    python bench/grad_cache_quality.py --config configs/flickr8k_lit.json --batch 4096 \\
        --micro 256 --big-steps 105 --seeds 0 1 2 --set data.records=RECORDS/train \\
        data.val_records=RECORDS/dev run.features_dir=FEATURES
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import command_line, write_result  # noqa: E402
from records.cli import positive_int, report_error  # noqa: E402

RUNS = ("plain", "cached", "split", "small")
METRICS = [f"val_{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)] + ["val_rsum"]


def main(argv=None):
    args = _parser().parse_args(argv)
    b, m = args.batch, args.micro
    if m >= b or b % m:
        _parser().error(f"argument --micro: must be smaller than --batch and divide it, got "
                        f"--batch {b} --micro {m}")
    command = command_line(argv)
    from records.machine import tensorflow_defaults

    tensorflow_defaults()
    from dualencoder.config import Config, ConfigError

    small, n = args.small or m, b // m
    try:  # every run's config is this one plus a few fixed keys: check it before training
        base = Config.from_sources(args.config, args.set)
    except ConfigError as exc:
        return report_error(exc)
    runs = {"plain": (f"plain {b}", [f"data.batch_size={b}"]),
            "cached": (f"cached {b} as {m}", [f"data.batch_size={b}", f"optim.micro_batch={m}"]),
            "split": (f"split {b} as {n}x{m}",
                      [f"data.batch_size={b}", f"optim.split_loss_accum={n}"]),
            "small": (f"plain {small}", [f"data.batch_size={small}"])}
    pairs = b * args.big_steps
    results = {runs[k][0]: _run_seeds(*runs[k], base, args, pairs) for k in args.runs}
    step_match = (_step_match(results[runs["plain"][0]], results[runs["cached"][0]])
                  if {"plain", "cached"} <= set(args.runs) else None)
    _print_table(results, step_match, args, pairs, b)
    result = write_result(args.out, "grad_cache_quality", command, config=args.config,
                          set=args.set, batch=b, micro_batch=m, small_batch=small,
                          pairs_per_run=pairs, lr_scaling=args.lr_scaling, seeds=args.seeds,
                          scored_on="validation records, last epoch", runs=results,
                          cached_vs_plain_step_by_step=step_match)
    print(f"wrote {plot(result, str(pathlib.Path(args.out).with_suffix('.png')))}")
    return 0


def plot(result: dict, path: str) -> str:
    """Per-step training loss of every run (seed 0) against pairs seen, and each run's
    validation rsum (mean, with every seed as a dot), as a PNG at `path`."""
    from dualencoder.eval.plots import pyplot, save_png

    fig, (left, right) = pyplot().subplots(1, 2, figsize=(11, 3.8),
                                      gridspec_kw={"width_ratios": [3, 2]})
    names = list(result["runs"])
    for name in names:
        run = result["runs"][name]
        losses = run["per_seed"][0]["losses"]
        pairs = [(i + 1) * run["batch"] / 1000 for i in range(len(losses))]
        style = {"linestyle": "--", "linewidth": 2.5} if name.startswith("cached") else {}
        left.plot(pairs, losses, label=name, **style)
    left.set(xlabel="training pairs seen (thousands)", ylabel="training loss (over each batch)",
             title="loss per step, seed 0")
    left.legend(fontsize=8)
    for y, name in enumerate(names):
        run = result["runs"][name]
        right.barh(y, run["val_rsum"], color="#9ecae1")
        right.plot([r["val_rsum"] for r in run["per_seed"]], [y] * len(run["per_seed"]), "k.")
        right.text(run["val_rsum"], y, f" {run['val_rsum']:.1f}", va="center", fontsize=8)
    right.set_yticks(range(len(names)), names, fontsize=8)
    right.invert_yaxis()
    right.set(xlabel="validation rsum, last epoch (R@1+5+10 both ways)",
              title=f"{result['pairs_per_run']:,} pairs per run")
    fig.suptitle(f"{os.path.basename(result['config'])}: batch {result['batch']} cached in "
                 f"micro-batches of {result['micro_batch']} vs the alternatives", fontsize=10)
    return save_png(fig, path)


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "synthetic_default.json"),
                        help="the training config every run starts from")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run (records, features_dir, ...)")
    parser.add_argument("--batch", type=positive_int, default=1024, help="the big batch B")
    parser.add_argument("--micro", type=positive_int, default=64, help="the micro-batch M")
    parser.add_argument("--small", type=positive_int, default=0,
                        help="the small-batch baseline S (default: M)")
    parser.add_argument("--big-steps", type=positive_int, default=150,
                        help="optimizer steps of batch B (batch S runs B/S times as many)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="run.seed values; every run is repeated for each")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS),
                        help="which of the four runs to train (default: all)")
    parser.add_argument("--lr-scaling", choices=("none", "sqrt"), default="none",
                        help="learning rate of a batch-b run: the config's (none) or the "
                             "config's times sqrt(b / config batch) (sqrt)")
    parser.add_argument("--workdirs", default=str(ROOT / "runs" / "grad_cache_quality"),
                        help="folder for the run folders (each replaced)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" /
                                             "grad_cache_quality.json"))
    return parser


def _run_seeds(name, sets, base, args, pairs) -> dict:
    """Train `name` once per seed; the mean of the last epoch's validation metrics."""
    from dualencoder.config import Config
    from dualencoder.train.loop import train

    batch = int(sets[0].split("=")[1])
    warmup = max(1, round(base.optim.warmup_steps * base.data.batch_size / batch))
    scale = (batch / base.data.batch_size) ** 0.5 if args.lr_scaling == "sqrt" else 1.0
    lr = base.optim.lr * scale
    features = ([] if base.run.features_dir else
                [f"run.features_dir={os.path.join(args.workdirs, 'features')}"])
    per_seed = []
    for seed in args.seeds:
        cfg = Config.from_sources(args.config, args.set + features + sets + [
            "optim.epochs=100000", "optim.early_stopping=0", "run.checkpoint_every=0",
            "run.ledger=true", f"run.seed={seed}", f"optim.max_steps={pairs // batch}",
            f"optim.warmup_steps={warmup}", f"optim.lr={lr:.6g}"])
        workdir = os.path.join(args.workdirs, f"{name.replace(' ', '_')}_seed{seed}")
        shutil.rmtree(workdir, ignore_errors=True)
        t0 = time.time()
        summary = train(cfg, workdir, log=lambda *_: None)
        seconds = time.time() - t0
        with open(os.path.join(workdir, "ledger.jsonl")) as fh:
            losses = [json.loads(line)["loss"] for line in fh]
        last = summary["history"][-1]
        per_seed.append({"seed": seed, "steps": summary["steps"], "train_seconds": seconds,
                         "losses": losses, **{k: last[k] for k in METRICS}})
        print(f"{name}, seed {seed}: {summary['steps']} steps in {seconds:.0f} s, i2t R@1 "
              f"{last['val_i2t_r1']:.1f}, t2i R@1 {last['val_t2i_r1']:.1f}, rsum "
              f"{last['val_rsum']:.1f}", flush=True)
    mean = {k: sum(r[k] for r in per_seed) / len(per_seed) for k in METRICS}
    spread = {k: max(r[k] for r in per_seed) - min(r[k] for r in per_seed) for k in METRICS}
    return {"batch": batch, "steps": per_seed[0]["steps"], "warmup_steps": warmup, "lr": lr,
            "pairs_seen": per_seed[0]["steps"] * batch, **mean, "range": spread,
            "train_seconds": sum(r["train_seconds"] for r in per_seed) / len(per_seed),
            "per_seed": per_seed}


def _step_match(plain: dict, cached: dict) -> dict:
    """The largest per-step training-loss difference between two runs, over all seeds."""
    diffs, rel, first = [], [], []
    for p, c in zip(plain["per_seed"], cached["per_seed"]):
        d = [abs(x - y) for x, y in zip(p["losses"], c["losses"])]
        diffs.append(max(d))
        rel.append(max(di / abs(y) for di, y in zip(d, p["losses"])))
        first.append(d[0])
    return {"max_abs_loss_difference": max(diffs), "max_rel_loss_difference": max(rel),
            "first_step_abs_difference": max(first)}


def _print_table(results, step_match, args, pairs, b):
    seeds = ", ".join(map(str, args.seeds))
    print(f"\n{os.path.relpath(args.config, ROOT)}, {pairs:,} training pairs per run, seeds "
          f"{seeds}, lr scaling {args.lr_scaling}; validation records at the last epoch "
          f"(R@1/5/10, mean over seeds; rsum range across seeds)")
    print(f"{'run':<22} {'steps':>6} {'loss first':>10} {'last':>7} {'image->text':>17} "
          f"{'text->image':>17} {'rsum':>6} {'range':>6} {'train s':>7}")
    for name, row in results.items():
        first = sum(r["losses"][0] for r in row["per_seed"]) / len(row["per_seed"])
        last = sum(r["losses"][-1] for r in row["per_seed"]) / len(row["per_seed"])
        i2t = "/".join(f"{row[f'val_i2t_r{k}']:.1f}" for k in (1, 5, 10))
        t2i = "/".join(f"{row[f'val_t2i_r{k}']:.1f}" for k in (1, 5, 10))
        print(f"{name:<22} {row['steps']:6d} {first:10.3f} {last:7.3f} {i2t:>17} {t2i:>17} "
              f"{row['val_rsum']:6.1f} {row['range']['val_rsum']:6.1f} "
              f"{row['train_seconds']:7.0f}")
    if step_match is None:
        return
    print(f"cached vs plain {b}, step by step: largest loss difference "
          f"{step_match['max_abs_loss_difference']:.2e} "
          f"({100 * step_match['max_rel_loss_difference']:.3f}%), first step "
          f"{step_match['first_step_abs_difference']:.2e}")


if __name__ == "__main__":
    sys.exit(main())
