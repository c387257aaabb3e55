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

SKIPPED_SHOWN = 20


# Per source: (help, [(flags, kwargs)]). Each option's dest is the source's keyword argument.
_SOURCES = {
    "synthetic": ("seeded captioned shape scenes (the embedded default)", [
        (["--split"], dict(default="train", choices=["train", "val", "zeroshot"],
                           help="train/val: captioned scenes; zeroshot: class-folder records of "
                                "the 36 '<colour> <shape>' classes incl. held-out ones")),
        (["--num-images"], dict(type=positive_int, default=None,
                                help="images (default 5000 train, 500 val, 720 zeroshot)")),
        (["--image-size"], dict(type=positive_int, default=64, help="side in px (default 64)")),
        (["--seed"], dict(type=int, default=0, help="generator seed (default 0)")),
    ]),
    "coco": ("MS-COCO captions in the official layout (annotations/captions_<split>.json)", [
        (["root"], dict(help="COCO directory holding annotations/ and <split>/")),
        (["--split"], dict(default="train2017",
                           help="train2017, val2017, train2014, ... (default train2017)")),
        (["--annotations"], dict(default=None, help="captions json (default "
                                 "ROOT/annotations/captions_<split>.json)")),
        (["--images-dir"], dict(default=None, help="image folder (default ROOT/<split>)")),
    ]),
    "flickr": ("Flickr8k/30k Kaggle layout (captions.txt 'image,caption' + Images/)", [
        (["root"], dict(help="dataset directory")),
        (["--split-file"], dict(default=None, help="list of image names to keep, one a line "
                                "(e.g. Flickr_8k.trainImages.txt)")),
        (["--captions"], dict(default=None, help="captions file (default ROOT/captions.txt; "
                              "a Flickr8k.token.txt is read too)")),
        (["--images-dir"], dict(default=None, help="image folder (default ROOT/Images)")),
    ]),
    "csv": ("a CSV of image,caption rows (paths relative to the file)", [
        (["path"], dict(help="the CSV file (with a header)")),
        (["--image-column"], dict(default="image", help="image path column (default image)")),
        (["--caption-column"], dict(default="caption", help="caption column (default caption)")),
        (["--delimiter"], dict(default=",", help="field separator (default ,)")),
    ]),
    "jsonl": ("a JSON-lines file of {image, caption|captions} (paths relative to the file)", [
        (["path"], dict(help="the .jsonl file")),
        (["--image-key"], dict(default="image", help="image path key (default image)")),
        (["--caption-key"], dict(default="caption", help="caption key (default caption; a list "
                                 "under 'captions' is read too)")),
    ]),
    "folders": ("class-folder images (ROOT/<class>/*.jpg) for classification", [
        (["root"], dict(help="directory of class folders")),
        (["--class-map"], dict(default=None, help="rename classes: 'animals10' (shipped "
                               "Italian->English map), a JSON file or 'src,dst' lines")),
    ]),
    "tfds": ("a dataset TFDS has already prepared (read with download=False)", [
        (["dataset"], dict(help="TFDS name, e.g. coco_captions or coco_captions/2017")),
        (["--data-dir"], dict(default=None, help="TFDS data dir holding the prepared dataset")),
        (["--split"], dict(default="train", help="TFDS split (default train)")),
        (["--image-key"], dict(default=None, help="image feature (default: found)")),
        (["--caption-key"], dict(default=None, help="caption text feature, nested keys joined "
                                 "by / (default: found, e.g. captions/text)")),
        (["--label-key"], dict(default=None, help="ClassLabel feature for classification data")),
        (["--id-key"], dict(default=None, help="feature giving image ids (default: found)")),
    ]),
}


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
    for name, (help_text, options) in _SOURCES.items():
        sub = sources.add_parser(name, help=help_text, description=help_text)
        for flags, kwargs in options:
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
    _, options = _SOURCES[args.source]
    names = [kw.get("dest") or flags[0].lstrip("-").replace("-", "_") for flags, kw in options]
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
