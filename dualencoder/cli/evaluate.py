"""Evaluate dual encoders: zero-shot, retrieval, probes, prompt tuning, baselines, comparison.

Each subcommand writes `report.json`, `report.md` and PNG figures into `--out`.

    python evaluate.py zeroshot --model runs/exp1 --data ../shared/data/cifar10_dev --out out/zs
    python evaluate.py zeroshot --model clip:clip_vit_base_patch32 --data DIR --templates clip80
    python evaluate.py retrieval --model runs/exp1 --data flickr:../shared/data/flickr8k:\
../shared/data/flickr8k/splits/Flickr_8k.devImages.txt --out out/ret
    python evaluate.py retrieval --model runs/exp1 --data records:runs/f8k/records/dev \
--bank runs/f8k/records/train --out out/ret_csls
    python evaluate.py linear-probe --model runs/exp1 --train TRAIN --test TEST --out out/lp
    python evaluate.py kshot --model runs/exp1 --train TRAIN --test TEST --shots 1,2,4,8 --seeds 3
    python evaluate.py prompt-tune --model runs/exp1 --train TRAIN --test TEST --shots 16
    python evaluate.py baseline --arch xception --weights PATH --train TRAIN --test TEST \
--mode linear
    python evaluate.py compare out/zs out/lp out/base --out out/table

`--model` is a training workdir (with `model/`), a saved model directory,
`clip:PRESET` (a keras-hub preset name, or a local preset folder for offline use), or
`ensemble:A,B[,...]` (the mean-cosine ensemble of such models; heads that share locked
towers run the towers once).
Bad input prints one `error: ...` line and exits with status 2, before any model is loaded.
The subcommands are the entries of `dualencoder.eval.evaluators.EVALUATORS`.
"""

from __future__ import annotations

import argparse
import os

from dualencoder.eval.evaluators import EVALUATORS
from dualencoder.model.tower_precision import TOWER_PRECISIONS
from records.cli import Parser, UsageError, output_dir, positive_int, report_error
from records.machine import tensorflow_defaults

__all__ = ["build_parser", "main"]


def _add_model_options(sp) -> None:
    sp.add_argument("--model", required=True,
                    help="training workdir, saved model dir, clip:PRESET, or ensemble:A,B,...")
    sp.add_argument("--tower-precision", choices=TOWER_PRECISIONS, default="float32",
                    help="the towers' compute precision (heads and embeddings stay float32): "
                         "auto = bfloat16 where the device computes it natively")


def _add_image_options(sp) -> None:
    sp.add_argument("--out", required=True, type=output_dir, help="report directory")
    sp.add_argument("--resize", choices=("bicubic", "bilinear"), default="bicubic",
                    help="how images are resized to the model's input size")
    sp.add_argument("--batch-size", type=positive_int, default=64,
                    help="images per encoder call")
    sp.add_argument("--cache-dir", default=None,
                    help="cache for embeddings and records built from raw folders "
                         "(default $DUALENCODER_CACHE or ~/.cache/dualencoder)")
    sp.add_argument("--no-cache", action="store_true", help="do not cache embeddings")
    sp.add_argument("--skip-bad", action="store_true",
                    help="skip unreadable images (counted in the report) instead of failing")
    sp.add_argument("--class-map", default=None,
                    help="folder→class-name map: 'animals10' or a JSON / key=value file")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The parser: one subcommand per entry of `EVALUATORS`."""
    p = Parser(prog="evaluate.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, evaluator in EVALUATORS.items():
        sp = sub.add_parser(name, help=evaluator.help, description=evaluator.help + ".",
                            epilog=f"example:\n  python {evaluator.example}")
        if evaluator.model:
            _add_model_options(sp)
        if evaluator.images:
            _add_image_options(sp)
        evaluator.add_arguments(sp)
    return p


def _run(args) -> None:
    from dualencoder.encoders.load import check_model_spec, load_encoder

    evaluator = EVALUATORS[args.command]
    if evaluator.model:
        check_model_spec(args.model)  # cheap checks first: nothing heavy before input is valid
    prepared = evaluator.prepare(args)
    encoder, info = ((load_encoder(args.model, args.tower_precision)) if evaluator.model
                     else (None, None))
    evaluator.run(args, prepared, encoder, info)


def main(argv=None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input)."""
    tensorflow_defaults()  # before TensorFlow loads
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return report_error(exc)
    from dualencoder.encoders.load import ModelSpecError
    from dualencoder.eval.errors import EvaluationError

    try:
        _run(args)
    except (EvaluationError, ModelSpecError) as exc:
        return report_error(exc)
    out = getattr(args, "out", None)
    if out:
        print(f"wrote {os.path.join(out, 'report.md')}")
    return 0
