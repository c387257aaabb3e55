"""Run a recipe: records -> training of every member -> evaluations -> OUT/REPORT.md.

    python recipe.py configs/recipes/flickr8k.json                  # or: make flickr8k
    python recipe.py configs/recipes/coco_mini.json --out runs/coco_mini
    python recipe.py configs/recipes/coco.json --set dataset.root=/data/coco
    python recipe.py configs/recipes/flickr8k.json --dry-run         # print the commands

A recipe file (JSON, configs/recipes/) declares the dataset, the training config, the
members (seeds x overrides, one head each, evaluated as one ensemble), the evaluations and
the output folder. `--set key=value` changes any field: `dataset.root=DIR`,
`members.0.seeds=[0]`, `set.model.extra_loss=max_violation` (a training setting for every
member), `evaluations.zeroshot=null` (drop an evaluation). Rerunning is cheap: records are
built only when missing, train.py resumes or keeps a finished workdir, existing evaluation
reports are kept. Relative paths are relative to the current directory (the project root).
Bad input prints one `error: ...` line and exits with status 2; a failed stage exits 1.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from records.cli import Parser, UsageError, output_dir, report_error

# The folder of the top-level programs (train.py, evaluate.py) that the stages run.
HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="recipe.py", description=__doc__)
    p.add_argument("recipe", help="recipe file, e.g. configs/recipes/flickr8k.json")
    p.add_argument("--out", type=output_dir,
                   help="output folder (default: the recipe's out)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set dataset.root=/data/coco "
                        "(repeatable; values are JSON when they parse, null removes a key)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the recipe and print the stages' commands, run nothing")
    return p


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return report_error(exc)
    from dualencoder.recipe import RecipeError, commands, load_recipe, run_recipe

    try:
        recipe = load_recipe(args.recipe, args.set, out=args.out)
    except RecipeError as exc:
        return report_error(exc)
    if args.dry_run:
        for label, argv_, marker in commands(recipe, HERE):
            done = " (done: kept)" if marker and os.path.exists(marker) else ""
            print(f"# {label}{done}\n{shlex.join(argv_)}")
        return 0
    try:
        run_recipe(recipe, args.recipe, HERE)
    except RecipeError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted (rerun the same command to continue)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
