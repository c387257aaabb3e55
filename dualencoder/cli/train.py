"""Train a CLIP-style dual encoder.

    python train.py                                   # the synthetic default, a few CPU minutes
    python train.py --records data/flickr8k-train --val-records data/flickr8k-dev \\
        --workdir runs/flickr8k --config configs/flickr8k_lit.json --set optim.lr=1e-3

Rerunning the same command in the same --workdir resumes exactly where it stopped.
Every setting is a `section.key` of dualencoder/config.py (see --help-config).
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTHETIC_CONFIG = os.path.join(ROOT, "configs", "synthetic_default.json")


def parse_args(argv=None) -> argparse.Namespace:
    from dualencoder.config import TOWER_PRECISIONS
    from records.cli import Parser, output_dir

    p = Parser(prog="train.py", description=__doc__)
    p.add_argument("--records", help="training records dir (python -m records build ...); "
                   "default: the synthetic default, built into data.cache_dir")
    p.add_argument("--val-records", help="validation records dir (selection, early stopping)")
    p.add_argument("--workdir", type=output_dir, help="run folder; an existing one is resumed "
                   "(default runs/synthetic-default without --records, else required)")
    p.add_argument("--config", help="JSON file of {section: {key: value}} settings")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set optim.lr=1e-4 (repeatable)")
    p.add_argument("--epochs", type=int, help="shortcut for --set optim.epochs=N")
    p.add_argument("--batch-size", type=int, help="shortcut for --set data.batch_size=N")
    p.add_argument("--precision", choices=["float32", "mixed_float16", "mixed_bfloat16", "auto"],
                   help="run.precision")
    p.add_argument("--tower-precision", choices=TOWER_PRECISIONS,
                   help="run.tower_precision: frozen-tower passes that fill the caches")
    p.add_argument("--jit-compile", action="store_true", default=None, help="run.jit_compile (XLA)")
    p.add_argument("--strategy", choices=["auto", "one_device", "mirrored", "multi_worker"],
                   help="run.strategy (multi_worker reads TF_CONFIG)")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation after "
                   "training on the synthetic default")
    p.add_argument("--help-config", action="store_true", help="print every setting with its "
                   "default and exit")
    return p.parse_args(argv)


def default_workdir(args) -> str | None:
    """--workdir, or runs/synthetic-default without --records (None: --workdir is missing)."""
    if args.workdir:
        return args.workdir
    return None if args.records else os.path.join("runs", "synthetic-default")


def resolve_config(args, workdir: str | None = None):
    """Defaults -> the workdir's saved config.json (a rerun) or the synthetic-default config
    (no --records/--config) -> --config -> --set and the shortcut flags.

    A rerun in an existing workdir starts from the settings it was started with, so resuming
    needs no flags; explicit ones that change the model are refused later (`train`)."""
    from dualencoder.config import Config

    overrides = []
    saved = os.path.join(workdir, "config.json") if workdir else None
    saved = saved if saved and os.path.isfile(saved) else None
    config = args.config
    if not args.records and not args.config and not saved:
        config = SYNTHETIC_CONFIG
    if args.records:
        overrides.append(f"data.records={args.records}")
    if args.val_records:
        overrides.append(f"data.val_records={args.val_records}")
    for flag, key in (("epochs", "optim.epochs"), ("batch_size", "data.batch_size"),
                      ("precision", "run.precision"), ("strategy", "run.strategy"),
                      ("tower_precision", "run.tower_precision")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.jit_compile:
        overrides.append("run.jit_compile=true")
    return Config.from_sources(config, overrides + list(args.set), base=saved)


def help_config() -> str:
    """Every setting: `section.key = default` and its description, section by section."""
    import dataclasses
    import json
    import textwrap

    from dualencoder.config import Config

    lines = ["Settings (--set section.key=value, or --config FILE.json of {section: {key: "
             "value}}); a rerun in a workdir starts from its saved config.json."]
    for section in dataclasses.fields(Config):
        body = getattr(Config(), section.name)
        lines.append("")
        lines.append(f"[{section.name}]  " + " ".join(type(body).__doc__.split()))
        for f in dataclasses.fields(body):
            lines.append(f"  {section.name}.{f.name} = {json.dumps(getattr(body, f.name))}")
            lines.extend(textwrap.wrap(f.metadata["help"], 92, initial_indent=" " * 6,
                                       subsequent_indent=" " * 6))
    return "\n".join(lines)


def main(argv=None) -> int:
    from records.machine import tensorflow_defaults

    from records.cli import UsageError, report_error

    tensorflow_defaults()  # before TensorFlow loads
    try:
        args = parse_args(argv)
    except UsageError as exc:
        return report_error(exc)
    if args.help_config:
        print(help_config())
        return 0
    from dualencoder.config import ConfigError

    workdir = default_workdir(args)
    if workdir is None:
        print("error: --workdir is required with --records (e.g. --workdir runs/flickr8k)",
              file=sys.stderr)
        return 2
    try:
        cfg = resolve_config(args, workdir)
    except ConfigError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    for path in (cfg.data.records, cfg.data.val_records):
        if path and not os.path.isdir(path):
            print(f"error: records dir {path} does not exist; build it with "
                  f"`python -m records build ... --out {path}`", file=sys.stderr)
            return 2
    weights = cfg.model.image_weights
    if weights not in ("imagenet", "none") and not os.path.isfile(weights):
        print(f"error: model.image_weights={weights!r}: no such file (use \"imagenet\", "
              "\"none\" or a local weights file)", file=sys.stderr)
        return 2

    from dualencoder.train.checkpoint import CheckpointError
    from dualencoder.train.loop import TrainingDiverged, TrainingInterrupted, train
    from records.schema import RecordsError

    try:
        summary = train(cfg, workdir)
    except (ConfigError, RecordsError, CheckpointError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        print(f"interrupted at step {exc.step}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted before the first step; rerun the same command to start again",
              file=sys.stderr)
        return 130
    best = summary.get("best") or {}
    print(f"trained {summary['steps']} steps in {workdir}; best epoch {best.get('epoch')}")
    if not cfg.data.records and cfg.run.eval_after and not args.no_eval:
        from dualencoder.train.report import synthetic_report

        report = synthetic_report(workdir, cfg)
        print(report["text"])
    return 0
