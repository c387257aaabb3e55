"""The evaluators, chosen by name: `EVALUATORS["zeroshot"]`, `["retrieval"]`,
`["linear-probe"]`, `["kshot"]`, `["prompt-tune"]`, `["baseline"]`, `["compare"]`.

Each `Evaluator` knows its command-line options, a one-line description and an example, how
to validate and prepare its input from the parsed options (`prepare`, cheap: no model and no
TensorFlow, except that raw folders are built into records), and how to run (`run`, given
the prepared input and the loaded encoder). `dualencoder.cli.evaluate` builds its parser
from this table and runs one entry:

```python
evaluator = EVALUATORS[args.command]
prepared = evaluator.prepare(args)                 # EvaluationError on bad input
encoder, info = load_encoder(args.model) if evaluator.model else (None, None)
evaluator.run(args, prepared, encoder, info)       # writes report.json, report.md, figures
```

The heavy modules are imported inside the functions, so importing this table is cheap.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable

from dualencoder.eval import compare
from dualencoder.eval.errors import EvaluationError
from records.cli import int_list, output_dir, positive_int

__all__ = ["Evaluator", "EVALUATORS", "comparable_kinds"]


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """One evaluation on the command line.

    Attributes:
        help: one line: what it measures.
        example: one command line.
        add_arguments: `(parser) -> None`, the evaluator's own options.
        prepare: `(args) -> dict`, validated input ready for `run`; raises EvaluationError.
        run: `(args, prepared, encoder, model_info) -> report dict`.
        model: takes `--model` (the caller checks the spec before `prepare` and loads the
            encoder after it).
        images: takes the image options (`--resize`, `--batch-size`, caches, `--class-map`).
        table_rows: `(report) -> [(row label, value)]` when `compare` can put its reports in
            the comparison table (None: it cannot).
    """

    help: str
    example: str
    add_arguments: Callable
    prepare: Callable
    run: Callable
    model: bool = True
    images: bool = True
    table_rows: Callable | None = None


# ---------------------------------------------------------------------------- shared steps


def run_options(args) -> dict:
    """The keyword arguments every image evaluator's `run_*` takes, from the options."""
    return dict(resize=args.resize, batch_size=args.batch_size,
                cache_dir=False if args.no_cache else args.cache_dir, progress=not args.quiet)


def _class_data(args, path):
    from dualencoder.eval.inputs import prepare_class_data

    # records built from raw folders are always cached (--no-cache is for embeddings)
    return prepare_class_data(path, class_map=args.class_map, cache_dir=args.cache_dir,
                              skip_bad=args.skip_bad, build=True, name=args.name)


def _train_test(args):
    from dualencoder.eval.inputs import check_same_classes

    train, test = _class_data(args, args.train), _class_data(args, args.test)
    check_same_classes(train, test)
    return train, test


def _check_templates(spec) -> None:
    from dualencoder.eval.zeroshot import load_templates

    try:
        load_templates(spec)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from exc


def _smallest_class(data) -> int:
    from dualencoder.eval.inputs import class_counts, ensure_records

    return int(class_counts(ensure_records(data) if data.counts is None else data).min())


def _add_name(p):
    p.add_argument("--name", default=None, help="dataset name in reports")


def _add_train_test(p):
    p.add_argument("--train", required=True,
                   help="training class folders: a records dir or raw DIR/<class>/<images>")
    p.add_argument("--test", required=True,
                   help="test class folders, the same classes as --train")
    _add_name(p)


# ---------------------------------------------------------------------------- zero-shot


def _zeroshot_arguments(p):
    p.add_argument("--data", required=True, help="class-folder records dir or raw class folders")
    p.add_argument("--templates", default="simple", help="simple | clip80 | FILE")
    _add_name(p)


def _zeroshot_prepare(args):
    _check_templates(args.templates)
    return {"data": _class_data(args, args.data)}


def _zeroshot_run(args, prepared, encoder, info):
    from dualencoder.eval.zeroshot_eval import run_zeroshot

    return run_zeroshot(encoder, prepared["data"], args.out, model_info=info,
                        templates=args.templates, **run_options(args))


# ---------------------------------------------------------------------------- retrieval


def _retrieval_arguments(p):
    from dualencoder.eval.caption_inputs import spec_kinds

    specs = [cls.spec_syntax for cls in spec_kinds().values()] + ["records:DIR", "DIR"]
    p.add_argument("--data", required=True, help=" | ".join(specs))
    p.add_argument("--ks", type=int_list, default=[1, 5, 10], help="comma-separated K values")
    _add_name(p)
    p.add_argument("--bank", default=None, metavar="SPEC",
                   help="captioned *training* data, in --data's forms: rank by CSLS against "
                        "this bank (hubness correction) instead of plain cosine; the report "
                        "keeps both")
    p.add_argument("--bank-k", type=positive_int, default=10,
                   help="bank neighbours averaged per gallery item")


def _retrieval_prepare(args):
    from dualencoder.eval.caption_inputs import prepare_caption_data
    from dualencoder.eval.retrieval import check_bank
    from records import schema

    records_dir, name, data_info = prepare_caption_data(
        args.data, cache_dir=args.cache_dir, skip_bad=args.skip_bad, build=True)
    manifest = schema.read_manifest(records_dir)
    n_img, n_cap = manifest.get("num_records", 0), manifest.get("num_captions")
    k = max(args.ks)
    if k > n_img or (n_cap is not None and k > n_cap):
        raise EvaluationError(f"--ks {k} is larger than the gallery ({n_img} images, "
                              f"{n_cap} captions)")
    bank = None
    if args.bank is not None:  # the same forms as --data (raw data is built once, cached)
        bank, _, _ = prepare_caption_data(args.bank, cache_dir=args.cache_dir,
                                          skip_bad=args.skip_bad, build=True)
        check_bank(bank, records_dir, args.bank_k)
    return {"records_dir": records_dir, "name": args.name or name, "data_info": data_info,
            "bank": bank}


def _retrieval_run(args, prepared, encoder, info):
    from dualencoder.eval.retrieval import run_retrieval

    return run_retrieval(encoder, prepared["records_dir"], args.out, model_info=info,
                         name=prepared["name"], ks=args.ks, data_info=prepared["data_info"],
                         bank=prepared["bank"], bank_k=args.bank_k, **run_options(args))


# ---------------------------------------------------------------------------- probes


def _linear_probe_prepare(args):
    train, test = _train_test(args)
    return {"train": train, "test": test}


def _linear_probe_run(args, prepared, encoder, info):
    from dualencoder.eval.probes import run_linear_probe

    return run_linear_probe(encoder, prepared["train"], prepared["test"], args.out,
                            model_info=info, **run_options(args))


def _kshot_arguments(p):
    _add_train_test(p)
    p.add_argument("--shots", type=int_list, default=None,
                   help="shots per class, e.g. 1,2,4,8 (default: powers of two up to "
                        "min(128, smallest class))")
    p.add_argument("--seeds", type=positive_int, default=3,
                   help="probes per number of shots, each on its own balanced sample")
    p.add_argument("--templates", default="simple",
                   help="templates of the zero-shot (k=0) point: simple | clip80 | FILE")


def _kshot_prepare(args):
    from dualencoder.eval.inputs import check_shots
    from dualencoder.eval.probes import default_shots

    train, test = _train_test(args)
    _check_templates(args.templates)
    smallest = _smallest_class(train)
    shots = args.shots or default_shots(smallest)
    check_shots(max(shots), smallest)
    return {"train": train, "test": test, "shots": shots}


def _kshot_run(args, prepared, encoder, info):
    from dualencoder.eval.probes import run_kshot

    return run_kshot(encoder, prepared["train"], prepared["test"], args.out, model_info=info,
                     shots=prepared["shots"], seeds=args.seeds, templates=args.templates,
                     **run_options(args))


MAX_STEPS = 100_000  # full-batch steps; more only burns time (the loss settles in hundreds)


def _steps(text: str) -> int:
    value = positive_int(text)
    if value > MAX_STEPS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_STEPS} steps, got {text!r}")
    return value


def _prompt_tune_arguments(p):
    _add_train_test(p)
    p.add_argument("--shots", type=positive_int, required=True,
                   help="training images per class the weights are learned on")
    p.add_argument("--templates", default="clip80",
                   help="the templates to weight: simple | clip80 | FILE")
    p.add_argument("--steps", type=_steps, default=300,
                   help=f"optimisation steps of the template weights and temperature "
                        f"(1..{MAX_STEPS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the shot sample")


def _prompt_tune_prepare(args):
    from dualencoder.eval.inputs import check_shots

    train, test = _train_test(args)
    _check_templates(args.templates)
    check_shots(args.shots, _smallest_class(train))
    return {"train": train, "test": test}


def _prompt_tune_run(args, prepared, encoder, info):
    from dualencoder.eval.probes import run_prompt_tune

    return run_prompt_tune(encoder, prepared["train"], prepared["test"], args.out,
                           model_info=info, shots=args.shots, templates=args.templates,
                           steps=args.steps, seed=args.seed, **run_options(args))


# ---------------------------------------------------------------------------- baseline


def _baseline_arguments(p):
    p.add_argument("--arch", required=True, help="xception | efficientnetb7 | any "
                   "keras.applications model name")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet | PATH (no-top weights) | none")
    p.add_argument("--train", required=True,
                   help="training class folders: a records dir or raw DIR/<class>/<images>")
    p.add_argument("--test", required=True, help="test class folders, the same classes")
    p.add_argument("--mode", choices=("linear", "finetune"), default="linear",
                   help="linear: train a softmax layer on frozen features; finetune: then "
                        "train the whole network")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="input side in pixels (default: the architecture's own, else 224)")
    p.add_argument("--epochs", type=positive_int, default=20,
                   help="most epochs per stage; training stops early on validation loss")
    p.add_argument("--validation-split", type=float, default=0.2,
                   help="fraction of each training class held out for early stopping")
    p.add_argument("--patience", type=positive_int, default=3,
                   help="epochs without a better validation loss before stopping")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the training")
    _add_name(p)


def _baseline_prepare(args):
    from dualencoder.config import min_image_size
    from dualencoder.eval.baselines import check_arch

    if not 0.0 < args.validation_split < 1.0:
        raise EvaluationError("--validation-split must be between 0 and 1")
    check_arch(args.arch, args.weights)
    low = min_image_size(args.arch)
    if args.image_size is not None and args.image_size < low:
        raise EvaluationError(f"--image-size {args.image_size}: the {args.arch} baseline needs "
                              f"at least {low} px")
    train, test = _train_test(args)
    return {"train": train, "test": test}


def _baseline_run(args, prepared, encoder, info):
    from dualencoder.eval.baselines import run_baseline

    return run_baseline(prepared["train"], prepared["test"], args.out, arch=args.arch,
                        weights=args.weights, mode=args.mode, image_size=args.image_size,
                        epochs=args.epochs, validation_split=args.validation_split,
                        patience=args.patience, seed=args.seed, **run_options(args))


# ---------------------------------------------------------------------------- compare


def _compare_arguments(p):
    p.add_argument("reports", nargs="+", help="report directories (or report.json files)")
    p.add_argument("--out", required=True, type=output_dir,
                   help="directory for the table and the bar chart")


def _compare_run(args, prepared, encoder, info):
    return compare.run_compare(args.reports, args.out, comparable_kinds())


EVALUATORS = {
    "zeroshot": Evaluator(
        "zero-shot classification of class folders",
        "evaluate.py zeroshot --model runs/exp1 --data ../shared/data/cifar10_dev "
        "--templates clip80 --out out/zs",
        _zeroshot_arguments, _zeroshot_prepare, _zeroshot_run,
        table_rows=compare.classification_rows),
    "retrieval": Evaluator(
        "image↔text Recall@K over a captioned gallery",
        "evaluate.py retrieval --model runs/exp1 --data records:runs/f8k/records/dev "
        "--bank runs/f8k/records/train --out out/ret",
        _retrieval_arguments, _retrieval_prepare, _retrieval_run),
    "linear-probe": Evaluator(
        "softmax-regression probe on frozen embeddings",
        "evaluate.py linear-probe --model runs/exp1 --train TRAIN --test TEST --out out/lp",
        _add_train_test, _linear_probe_prepare, _linear_probe_run,
        table_rows=compare.probe_rows),
    "kshot": Evaluator(
        "k-shot probes with zero-shot as k=0",
        "evaluate.py kshot --model runs/exp1 --train TRAIN --test TEST --shots 1,2,4,8 "
        "--seeds 3 --out out/ks",
        _kshot_arguments, _kshot_prepare, _kshot_run,
        table_rows=compare.kshot_rows),
    "prompt-tune": Evaluator(
        "learn template weights + temperature on k shots",
        "evaluate.py prompt-tune --model runs/exp1 --train TRAIN --test TEST --shots 16 "
        "--out out/pt",
        _prompt_tune_arguments, _prompt_tune_prepare, _prompt_tune_run,
        table_rows=compare.prompt_tune_rows),
    "baseline": Evaluator(
        "supervised keras.applications classifier",
        "evaluate.py baseline --arch xception --weights PATH --train TRAIN --test TEST "
        "--mode linear --out out/xc",
        _baseline_arguments, _baseline_prepare, _baseline_run, model=False,
        table_rows=compare.classification_rows),
    "compare": Evaluator(
        "one table + bar chart from report directories",
        "evaluate.py compare out/zs out/lp out/xc --out out/table",
        _compare_arguments, lambda args: {}, _compare_run, model=False, images=False),
}


def comparable_kinds() -> dict:
    """{report kind: its table-rows function} of the evaluators `compare` can tabulate."""
    return {name: ev.table_rows for name, ev in EVALUATORS.items() if ev.table_rows}
