"""Command line: `python -m records build|verify|inspect` (see `--help` of each).

Examples:
    python -m records build synthetic --out data/synth_train --num-images 5000
    python -m records build synthetic --out data/synth_zeroshot --split zeroshot
    python -m records build coco ../shared/data/coco_mini --split val2017 --out data/coco_val
    python -m records build flickr ../shared/data/flickr8k --out data/f8k_train \\
        --split-file ../shared/data/flickr8k/splits/Flickr_8k.trainImages.txt --max-side 256
    python -m records build csv captions.csv --out data/mine
    python -m records build folders raw-img --class-map animals10 --out data/animals
    python -m records build tfds coco_captions --data-dir ~/tensorflow_datasets --split val \\
        --out data/coco_tfds
    python -m records verify data/synth_train
    python -m records inspect data/synth_train --out synth.png

Exit status: 0 success; 1 `verify` found a problem; 2 bad arguments or bad input.
"""

from __future__ import annotations

import argparse
import os
import sys

from records.cli import Parser, UsageError, output_dir, output_png, positive_int
from records.machine import tensorflow_defaults
from records.sources import source_class, source_classes
from records.sources.base import argument_dest

SKIPPED_SHOWN = 20


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m records", description="Build, verify and inspect sharded TFRecords of "
        "images with captions (or class labels).", epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=Parser)

    build = commands.add_parser("build", help="write records from a source",
                                description="Write a source to sharded TFRecords plus "
                                "manifest.json (atomically; the manifest last).")
    sources = build.add_subparsers(dest="source", required=True, metavar="SOURCE",
                                   parser_class=Parser)
    for name, cls in source_classes().items():  # each source declares its own arguments
        sub = sources.add_parser(name, help=cls.description, description=cls.description)
        for flags, kwargs in cls.arguments:
            sub.add_argument(*flags, **kwargs)
        common = sub.add_argument_group("output")
        common.add_argument("--out", required=True, type=output_dir,
                            help="records directory to write")
        common.add_argument("--shard-size", type=positive_int, default=1000,
                            help="records per shard (default 1000)")
        common.add_argument("--max-side", type=positive_int, default=None,
                            help="re-encode (JPEG) images whose longer side exceeds this")
        common.add_argument("--skip-bad", action="store_true",
                            help="skip bad images/rows (listed in the manifest) instead of failing")

    verify = commands.add_parser("verify", help="re-check counts and checksums (exit 1 if bad)",
                                 description="Re-check every shard against manifest.json: size, "
                                 "sha256, record and caption counts, indices. Exit 1 on failure.")
    verify.add_argument("dir", help="records directory")

    inspect = commands.add_parser("inspect", help="print a summary; save a contact sheet PNG",
                                  description="Print a summary of a records directory and "
                                  "optionally save a PNG contact sheet of sample images.")
    inspect.add_argument("dir", help="records directory")
    inspect.add_argument("--out", default=None, type=output_png,
                         help="PNG contact sheet to write")
    inspect.add_argument("--num-images", type=positive_int, default=16,
                         help="images on the contact sheet (default 16)")
    return parser


def _source_options(args) -> dict:
    """The source's keyword arguments given on the command line (None: its own default)."""
    names = [argument_dest(flags, kw) for flags, kw in source_class(args.source).arguments]
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _error(message) -> int:
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    return 2


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    tensorflow_defaults()  # before TensorFlow loads
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0)
        return int(exc.code or 0)
    except UsageError as exc:
        return _error(exc)
    path = getattr(args, "dir", None)
    if path is not None and not os.path.isdir(path):  # bad argument (2), not a failed check (1)
        return _error(f"{path}: no such records directory")
    out = getattr(args, "out", None)
    if args.command == "build" and os.path.exists(out) and not os.path.isdir(out):
        return _error(f"--out {out}: exists and is not a directory")
    from records.schema import RecordsError

    try:
        if args.command == "build":
            return _build(args)
        if args.command == "verify":
            return _verify(args)
        return _inspect(args)
    except RecordsError as exc:
        return _error(exc)
    except OSError as exc:  # the disk, not the program: a full disk, a read-only folder, ...
        where = f"{exc.filename}: " if exc.filename else ""
        return _error(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        print("error: interrupted (no manifest was written; rerun to complete)", file=sys.stderr)
        return 130


def _build(args) -> int:
    from records.build import build_records

    manifest = build_records(args.source, args.out, shard_size=args.shard_size,
                             max_side=args.max_side, skip_bad=args.skip_bad,
                             **_source_options(args))
    print(f"wrote {manifest['num_records']} images ({manifest['num_captions']} captions) in "
          f"{len(manifest['shards'])} shard(s) to {args.out}")
    skipped = manifest["build"]["skipped"]
    if skipped:
        print(f"skipped {len(skipped)} bad input(s):")
        for entry in skipped[:SKIPPED_SHOWN]:
            print(f"  {entry['where']}: {entry['reason']}")
        if len(skipped) > SKIPPED_SHOWN:
            print(f"  ... and {len(skipped) - SKIPPED_SHOWN} more (manifest.json build.skipped)")
    return 0


def _verify(args) -> int:
    from records.schema import RecordsError
    from records.verify import verify_records

    try:
        report = verify_records(args.dir, raise_on_error=False)
    except RecordsError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    for shard in report["shards"]:
        status = "ok" if shard["ok"] else f"BAD: {shard['problem']}"
        print(f"  {shard['name']}: {shard['records']} records, {shard['captions']} captions, "
              f"{status}")
    if not report["ok"]:
        for problem in report["problems"]:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    print(f"ok: {report['num_records']} records, {report['num_captions']} captions in "
          f"{len(report['shards'])} shard(s)")
    return 0


def _inspect(args) -> int:
    from records.inspect import contact_sheet, format_summary, summarize

    print(format_summary(summarize(args.dir)))
    if args.out:
        print(f"contact sheet: {contact_sheet(args.dir, args.out, num_images=args.num_images)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
