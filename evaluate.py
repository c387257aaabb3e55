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
Bad input prints one `error: ...` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from records.cli import Parser, UsageError, int_list, positive_int
from records.machine import tensorflow_defaults


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="evaluate.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def common(sp, model=True):
        if model:
            sp.add_argument("--model", required=True,
                            help="training workdir, saved model dir, clip:PRESET, or "
                                 "ensemble:A,B,...")
        sp.add_argument("--out", required=True, help="report directory")
        sp.add_argument("--resize", choices=("bicubic", "bilinear"), default="bicubic",
                        help="how images are resized to the model's input size")
        sp.add_argument("--batch-size", type=positive_int, default=64)
        sp.add_argument("--cache-dir", default=None,
                        help="cache for embeddings and records built from raw folders "
                             "(default $DUALENCODER_CACHE or ~/.cache/dualencoder)")
        sp.add_argument("--no-cache", action="store_true", help="do not cache embeddings")
        sp.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable images (counted in the report) instead of failing")
        sp.add_argument("--class-map", default=None,
                        help="folder→class-name map: 'animals10' or a JSON / key=value file")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    z = sub.add_parser("zeroshot", help="zero-shot classification of class folders")
    common(z)
    z.add_argument("--data", required=True, help="class-folder records dir or raw class folders")
    z.add_argument("--templates", default="simple", help="simple | clip80 | FILE")
    z.add_argument("--name", default=None, help="dataset name in reports")

    r = sub.add_parser("retrieval", help="image↔text Recall@K over a captioned gallery")
    common(r)
    r.add_argument("--data", required=True,
                   help="flickr:DIR[:SPLITFILE] | coco:DIR:SPLIT | records:DIR | DIR")
    r.add_argument("--ks", type=int_list, default=[1, 5, 10], help="K values (default 1,5,10)")
    r.add_argument("--name", default=None)
    r.add_argument("--bank", default=None, metavar="SPEC",
                   help="captioned *training* data, in --data's forms: rank by CSLS against "
                        "this bank (hubness correction) instead of plain cosine; the report "
                        "keeps both")
    r.add_argument("--bank-k", type=positive_int, default=10,
                   help="bank neighbours averaged per gallery item (default 10)")

    for name, helptext in (("linear-probe", "softmax-regression probe on frozen embeddings"),
                           ("kshot", "k-shot probes with zero-shot as k=0"),
                           ("prompt-tune", "learn template weights + temperature on k shots")):
        sp = sub.add_parser(name, help=helptext)
        common(sp)
        sp.add_argument("--train", required=True)
        sp.add_argument("--test", required=True)
        sp.add_argument("--name", default=None, help="dataset name in reports")
        if name == "kshot":
            sp.add_argument("--shots", type=int_list, default=None,
                            help="shots per class, e.g. 1,2,4,8 (default: powers of two up to "
                                 "min(128, smallest class))")
            sp.add_argument("--seeds", type=positive_int, default=3)
            sp.add_argument("--templates", default="simple")
        if name == "prompt-tune":
            sp.add_argument("--shots", type=positive_int, required=True)
            sp.add_argument("--templates", default="clip80")
            sp.add_argument("--steps", type=positive_int, default=300)
            sp.add_argument("--seed", type=int, default=0)

    b = sub.add_parser("baseline", help="supervised keras.applications classifier")
    common(b, model=False)
    b.add_argument("--arch", required=True, help="xception | efficientnetb7 | any "
                   "keras.applications model name")
    b.add_argument("--weights", default="imagenet", help="imagenet | PATH (no-top weights) | none")
    b.add_argument("--train", required=True)
    b.add_argument("--test", required=True)
    b.add_argument("--mode", choices=("linear", "finetune"), default="linear")
    b.add_argument("--image-size", type=positive_int, default=None)
    b.add_argument("--epochs", type=positive_int, default=20)
    b.add_argument("--validation-split", type=float, default=0.2)
    b.add_argument("--patience", type=positive_int, default=3)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--name", default=None)

    c = sub.add_parser("compare", help="one table + bar chart from report directories")
    c.add_argument("reports", nargs="+", help="report directories (or report.json files)")
    c.add_argument("--out", required=True)
    return p


def _run(args) -> None:
    from dualencoder.encoders.load import check_model_spec, load_encoder
    from dualencoder.eval import compare, inputs, probes, retrieval, zeroshot_eval
    from dualencoder.eval.errors import EvaluationError

    progress = not getattr(args, "quiet", False)
    if args.command == "compare":
        compare.run_compare(args.reports, args.out)
        return
    cache = False if args.no_cache else args.cache_dir
    records_cache = args.cache_dir  # records built from raw folders are always cached

    if args.command == "baseline":
        from dualencoder.eval import baselines
        if not 0.0 < args.validation_split < 1.0:
            raise EvaluationError("--validation-split must be between 0 and 1")
        baselines.check_arch(args.arch, args.weights)
        train = inputs.prepare_class_data(args.train, class_map=args.class_map,
                                     cache_dir=records_cache, skip_bad=args.skip_bad,
                                     build=True, name=args.name)
        test = inputs.prepare_class_data(args.test, class_map=args.class_map,
                                    cache_dir=records_cache, skip_bad=args.skip_bad,
                                    build=True, name=args.name)
        inputs.check_same_classes(train, test)
        baselines.run_baseline(train, test, args.out, arch=args.arch, weights=args.weights,
                               mode=args.mode, image_size=args.image_size, epochs=args.epochs,
                               validation_split=args.validation_split, patience=args.patience,
                               resize=args.resize, batch_size=args.batch_size, seed=args.seed,
                               cache_dir=cache, progress=progress)
        return

    check_model_spec(args.model)  # cheap checks first: nothing heavy before input is valid
    if args.command == "zeroshot":
        from dualencoder.eval.zeroshot import load_templates
        try:
            load_templates(args.templates)  # validate before any heavy work
        except ValueError as exc:
            raise EvaluationError(str(exc)) from exc
        data = inputs.prepare_class_data(args.data, class_map=args.class_map, cache_dir=records_cache,
                                    skip_bad=args.skip_bad, build=True, name=args.name)
        encoder, info = load_encoder(args.model)
        zeroshot_eval.run_zeroshot(encoder, data, args.out, model_info=info, templates=args.templates,
                       resize=args.resize, batch_size=args.batch_size, cache_dir=cache,
                       progress=progress)
        return

    if args.command == "retrieval":
        records_dir, name, data_info = inputs.prepare_caption_data(
            args.data, cache_dir=records_cache, skip_bad=args.skip_bad, build=True)
        from records import schema
        manifest = schema.read_manifest(records_dir)
        n_img, n_cap = manifest.get("num_records", 0), manifest.get("num_captions")
        k = max(args.ks)
        if k > n_img or (n_cap is not None and k > n_cap):
            raise EvaluationError(f"--ks {k} is larger than the gallery ({n_img} images, "
                                    f"{n_cap} captions)")
        bank = None
        if args.bank is not None:  # the same forms as --data (raw data is built once, cached)
            bank, _, _ = inputs.prepare_caption_data(args.bank, cache_dir=records_cache,
                                                skip_bad=args.skip_bad, build=True)
            retrieval.check_bank(bank, records_dir, args.bank_k)
        encoder, info = load_encoder(args.model)
        retrieval.run_retrieval(encoder, records_dir, args.out, model_info=info,
                        name=args.name or name, ks=args.ks, resize=args.resize,
                        batch_size=args.batch_size, cache_dir=cache, progress=progress,
                        data_info=data_info, bank=bank, bank_k=args.bank_k)
        return

    # linear-probe, kshot, prompt-tune
    train = inputs.prepare_class_data(args.train, class_map=args.class_map, cache_dir=records_cache,
                                 skip_bad=args.skip_bad, build=True, name=args.name)
    test = inputs.prepare_class_data(args.test, class_map=args.class_map, cache_dir=records_cache,
                                skip_bad=args.skip_bad, build=True, name=args.name)
    inputs.check_same_classes(train, test)
    templates = getattr(args, "templates", None)
    if templates is not None:
        from dualencoder.eval.zeroshot import load_templates
        try:
            load_templates(templates)
        except ValueError as exc:
            raise EvaluationError(str(exc)) from exc
    if args.command in ("kshot", "prompt-tune"):
        counts = inputs.class_counts(inputs.ensure_records(train) if train.counts is None else train)
        smallest = int(counts.min())
        if args.command == "kshot":
            shots = args.shots or probes.default_shots(smallest)
            if max(shots) > smallest:
                raise EvaluationError(f"--shots {max(shots)} is more than the smallest "
                                        f"training class has ({smallest} images)")
        elif args.shots > smallest:
            raise EvaluationError(f"--shots {args.shots} is more than the smallest training "
                                    f"class has ({smallest} images)")
    encoder, info = load_encoder(args.model)
    kwargs = dict(model_info=info, resize=args.resize, batch_size=args.batch_size,
                  cache_dir=cache, progress=progress)
    if args.command == "linear-probe":
        probes.run_linear_probe(encoder, train, test, args.out, **kwargs)
    elif args.command == "kshot":
        probes.run_kshot(encoder, train, test, args.out, shots=shots, seeds=args.seeds,
                    templates=templates, **kwargs)
    else:
        probes.run_prompt_tune(encoder, train, test, args.out, shots=args.shots, templates=templates,
                          steps=args.steps, seed=args.seed, **kwargs)


def main(argv=None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input)."""
    tensorflow_defaults()  # before TensorFlow loads
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    from dualencoder.encoders.load import ModelSpecError
    from dualencoder.eval.errors import EvaluationError
    try:
        _run(args)
    except (EvaluationError, ModelSpecError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    out = getattr(args, "out", None)
    if out:
        print(f"wrote {os.path.join(out, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
