"""Captioned evaluation inputs: `prepare_caption_data` resolves a retrieval spec
(`flickr:DIR[:SPLITFILE]`, `coco:DIR:SPLIT`, `records:DIR` or a bare records directory) to a
verified records directory, building raw data into the cache once. Bad input is a one-line
`EvaluationError` before any model is loaded; nothing here imports TensorFlow at import time.
"""

from __future__ import annotations

import os

from dualencoder.eval.errors import EvaluationError
from dualencoder.eval.inputs import (build_cached_records, folder_key, is_records_dir,
                                     verify_records_dir)

__all__ = ["prepare_caption_data"]


def prepare_caption_data(spec: str, *, cache_dir=None, skip_bad=False, build=True):
    """Resolve a retrieval data spec to a records directory.

    Specs: `flickr:DIR[:SPLITFILE]`, `coco:DIR:SPLIT`, `records:DIR`, or a bare
    records directory.

    Returns:
        `(records_dir or None when build=False, name, info dict)`.
    """
    from records import schema

    kind, _, rest = spec.partition(":")
    if kind not in ("flickr", "coco", "records") or not rest:
        kind, rest = "records", spec
    if kind == "records":
        if not os.path.exists(rest):
            raise EvaluationError(f"{rest}: no such directory")
        if not is_records_dir(rest):
            raise EvaluationError(f"{rest}: not a records directory (no manifest.json); use "
                                  "flickr:DIR[:SPLITFILE] or coco:DIR:SPLIT for raw data")
        try:
            manifest = schema.read_manifest(rest)
        except schema.RecordsError as exc:
            raise EvaluationError(str(exc)) from exc
        if not manifest.get("num_captions"):
            raise EvaluationError(f"{rest}: these records have no captions (class-folder "
                                  "records? use zeroshot or linear-probe); retrieval needs "
                                  "captioned records")
        verify_records_dir(rest)  # the cheap checks first
        return rest, os.path.basename(os.path.normpath(rest)), {"spec": spec}
    if kind == "flickr":
        root, _, split = rest.partition(":")
        if not os.path.isdir(root):
            raise EvaluationError(f"{root}: no such directory (flickr:DIR[:SPLITFILE])")
        if split and not os.path.isfile(split) and not os.path.isfile(os.path.join(root, split)):
            raise EvaluationError(f"{split}: no such split file")
        if split and not os.path.isfile(split):
            split = os.path.join(root, split)
        options = {"root": root}
        if split:
            options["split_file"] = split
        name = "flickr8k" + (f"-{os.path.basename(split).split('.')[-2]}" if split else "")
    else:
        root, _, split = rest.partition(":")
        if not os.path.isdir(root):
            raise EvaluationError(f"{root}: no such directory (coco:DIR:SPLIT)")
        if not split:
            raise EvaluationError("coco data needs a split: coco:DIR:SPLIT (e.g. val2017)")
        _check_coco_split(root, split)
        options = {"root": root, "split": split}
        name = f"coco-{split}"
    if not build:
        return None, name, {"spec": spec}
    key = folder_key(root, {"options": options, "skip_bad": skip_bad}) if kind == "flickr" \
        else folder_key(os.path.join(root, "annotations"), {"options": options,
                                                               "skip_bad": skip_bad})
    out, manifest = build_cached_records(kind, key, cache_dir, skip_bad, **options)
    return out, name, {"spec": spec, "skipped": len((manifest.get("build") or {}).get(
        "skipped") or [])}


def _check_coco_split(root: str, split: str) -> None:
    """Raises EvaluationError naming the missing annotation file and the splits there are."""
    annotations = os.path.join(root, "annotations")
    wanted = os.path.join(annotations, f"captions_{split}.json")
    if os.path.isfile(wanted):
        return
    try:
        found = sorted(f[len("captions_"):-len(".json")] for f in os.listdir(annotations)
                       if f.startswith("captions_") and f.endswith(".json"))
    except OSError:
        found = []
    there = (f"splits found: {', '.join(found)}" if found else
             f"no captions_<split>.json in {annotations}")
    raise EvaluationError(f"{wanted}: no such COCO annotation file for split {split!r} "
                          f"({there})")
