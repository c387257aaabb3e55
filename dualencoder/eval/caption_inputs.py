"""Captioned evaluation inputs: `prepare_caption_data` resolves a retrieval spec
(`records:DIR`, a bare records directory, or raw data named as a source declares it, e.g.
`flickr:DIR[:SPLITFILE]`, `coco:DIR:SPLIT`: `records.sources`) to a verified records
directory, building raw data into the cache once. Bad input is a one-line
`EvaluationError` before any model is loaded; nothing here imports TensorFlow at import time.
"""

from __future__ import annotations

import os

from dualencoder.eval.errors import EvaluationError
from dualencoder.eval.inputs import (build_cached_records, folder_key, is_records_dir,
                                     verify_records_dir)

__all__ = ["prepare_caption_data", "spec_kinds"]


def prepare_caption_data(spec: str, *, cache_dir=None, skip_bad=False, build=True):
    """Resolve a retrieval data spec to a records directory.

    Specs: `records:DIR`, a bare records directory, or `KIND:REST` for a source that builds
    raw data (`spec_kinds()`: `flickr:DIR[:SPLITFILE]`, `coco:DIR:SPLIT`).

    Returns:
        `(records_dir or None when build=False, name, info dict)`.
    """
    from records import schema

    kinds = spec_kinds()
    kind, _, rest = spec.partition(":")
    if kind not in kinds or not rest:
        return _records_spec(rest if kind == "records" and rest else spec, spec, kinds)
    try:
        options, name, key_dir = kinds[kind].from_spec(rest)
    except schema.RecordsError as exc:
        raise EvaluationError(str(exc)) from exc
    if not build:
        return None, name, {"spec": spec}
    key = folder_key(key_dir, {"options": options, "skip_bad": skip_bad})
    out, manifest = build_cached_records(kind, key, cache_dir, skip_bad, **options)
    return out, name, {"spec": spec, "skipped": len((manifest.get("build") or {}).get(
        "skipped") or [])}


def spec_kinds() -> dict:
    """`{kind: Source class}` of the registered sources with an evaluation data spec
    (`Source.spec_syntax`), in registry order."""
    from records.sources import source_classes

    return {name: cls for name, cls in source_classes().items() if cls.spec_syntax}


def _records_spec(path: str, spec: str, kinds: dict):
    """A records directory with captions, verified: `(path, name, info)`."""
    from records import schema

    if not os.path.exists(path):
        raise EvaluationError(f"{path}: no such directory")
    if not is_records_dir(path):
        raw = " or ".join(cls.spec_syntax for cls in kinds.values())
        raise EvaluationError(f"{path}: not a records directory (no manifest.json)"
                              + (f"; use {raw} for raw data" if raw else ""))
    try:
        manifest = schema.read_manifest(path)
    except schema.RecordsError as exc:
        raise EvaluationError(str(exc)) from exc
    if not manifest.get("num_captions"):
        raise EvaluationError(f"{path}: these records have no captions (class-folder "
                              "records? use zeroshot or linear-probe); retrieval needs "
                              "captioned records")
    verify_records_dir(path)  # the cheap checks first
    return path, os.path.basename(os.path.normpath(path)), {"spec": spec}
