"""Build sharded TFRecords plus `manifest.json` from any source.

Example:
>>> from records.build import build_records
>>> manifest = build_records("synthetic", "data/synth_train", num_images=2000, image_size=64)
>>> manifest["num_records"], [s["name"] for s in manifest["shards"]]
"""

from __future__ import annotations

import datetime
import os

from records import images as images_lib
from records import writer as writer_lib
from records.schema import MANIFEST_NAME, SCHEMA_VERSION, RecordsError, encode_example
from records.sources import get_source
from records.files import jsonable, write_json_atomic
from records.progress import discard, progress_bar


def build_records(source, out_dir, *, shard_size=1000, max_side=None, skip_bad=False,
                  **source_options) -> dict:
    """Write `source` to `out_dir` as sharded TFRecords and return the manifest.

    Each image becomes one example holding all of its captions (`records/schema.py`), with
    `image/index` 0..N-1 in source order. Images are decoded once to validate them and read their
    size; plain RGB or greyscale JPEG and PNG bytes are stored unchanged unless `max_side` asks
    for a smaller image, and everything else (EXIF-rotated or CMYK JPEGs, GIF, BMP, WebP, ...)
    as an upright RGB JPEG (`records.images.normalize_image`, which photo search uses too).
    Shards are moved into place only when complete and `manifest.json` is written last, both
    atomically, so an interrupted build leaves no manifest and no partial shard, and a rerun
    completes it. A rebuild into an existing directory first removes its manifest and, once the
    new manifest is written, removes shards it no longer lists.

    Args:
        source: a source name (`"synthetic"`, `"coco"`, `"flickr"`, `"csv"`, `"jsonl"`,
            `"folders"`, `"tfds"`) or a source object (an iterable of
            `(image_id, image_bytes_or_path, captions, label)` with a `name`).
        out_dir: the records directory (created if needed).
        shard_size: records per shard.
        max_side: if set, re-encode (JPEG) images whose longer side exceeds it.
        skip_bad: skip bad images and rows instead of raising; they are listed in
            `manifest["build"]["skipped"]`.
        **source_options: passed to the source (e.g. `root=`, `split=`, `num_images=`).

    Returns:
        The manifest dict (also written to `out_dir/manifest.json`).

    Raises:
        RecordsError: bad input (naming the file and row or id), an empty build, or bad options.
    """
    shard_size = int(shard_size)
    if shard_size < 1:
        raise RecordsError(f"shard_size must be >= 1, got {shard_size}")
    if max_side is not None and int(max_side) < 1:
        raise RecordsError(f"max_side must be >= 1, got {max_side}")
    src = _open_source(source, skip_bad, source_options)
    source_name = getattr(src, "name", type(src).__name__)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, MANIFEST_NAME)
    if os.path.exists(manifest_path):  # the directory stops being a complete build right now
        os.remove(manifest_path)

    written = _write_shards(src, source_name, out_dir, shard_size=shard_size,
                            max_side=max_side, skip_bad=skip_bad)
    skipped = list(getattr(src, "skipped", [])) + written.skipped
    if written.num_records == 0:
        detail = f" ({len(skipped)} skipped as bad)" if skipped else ""
        raise RecordsError(f"source {source_name!r} yielded no usable images{detail}")
    args = {"source": source_name, "shard_size": shard_size, "max_side": max_side,
            "skip_bad": skip_bad, **source_options}
    manifest = _manifest(src, source_name, written, skipped, args)
    write_json_atomic(manifest_path, manifest)
    writer_lib.remove_stale(out_dir, keep={s["name"] for s in written.shards})
    return manifest


def _open_source(source, skip_bad, source_options):
    """The source object: a named source built with its options, or `source` itself."""
    if isinstance(source, str):
        return get_source(source, skip_bad=skip_bad, **source_options)
    if source_options:
        raise RecordsError("source options are only accepted with a source name")
    return source


class _Written:
    """What a build wrote: shard manifest entries, the images it skipped, image statistics."""

    def __init__(self):
        self.shards: list[dict] = []
        self.skipped: list[dict] = []
        self.num_records = 0
        self.heights: list[int] = []
        self.widths: list[int] = []
        self.formats: dict[str, int] = {}
        self.reencoded = 0

    def add_image(self, prepared):
        self.num_records += 1
        self.heights.append(prepared.height)
        self.widths.append(prepared.width)
        self.formats[prepared.image_format] = self.formats.get(prepared.image_format, 0) + 1
        self.reencoded += prepared.reencoded

    def image_stats(self):
        return _image_stats(self.heights, self.widths, self.formats, self.reencoded)


def _write_shards(src, source_name, out_dir, *, shard_size, max_side, skip_bad) -> _Written:
    """Every usable image of `src` written in order to shards of `shard_size` records.

    Each shard is moved into place once complete; on any error the shard being written is
    removed (its temporary file only) and the error propagates."""
    written = _Written()
    seen_ids: set[str] = set()
    shard_writer = None
    progress = _progress(src, source_name)
    try:
        for item in src:
            example = _prepare_example(item, source_name, seen_ids, max_side=max_side,
                                       skip_bad=skip_bad, skipped=written.skipped)
            if example is None:
                progress.update(1)
                continue
            if shard_writer is None:
                shard_writer = writer_lib.ShardWriter(out_dir, len(written.shards),
                                                      first_index=written.num_records)
                shard_writer.__enter__()
            image_id, prepared, captions, label = example
            shard_writer.write(
                encode_example(image_bytes=prepared.data, image_id=image_id,
                               index=written.num_records, captions=captions,
                               height=prepared.height, width=prepared.width,
                               image_format=prepared.image_format, label=label,
                               source=source_name),
                num_captions=len(captions))
            written.add_image(prepared)
            progress.update(1)
            if shard_writer.records >= shard_size:
                shard_writer.__exit__(None, None, None)
                written.shards.append(shard_writer.entry)
                shard_writer = None
        if shard_writer is not None:
            shard_writer.__exit__(None, None, None)
            written.shards.append(shard_writer.entry)
            shard_writer = None
    except BaseException as exc:
        if shard_writer is not None:  # removes the temporary file; no final name is touched
            shard_writer.__exit__(type(exc), exc, exc.__traceback__)
        discard(progress)
        raise
    finally:
        progress.close()
    return written


def _prepare_example(item, source_name, seen_ids, *, max_side, skip_bad, skipped):
    """One source item checked and its image validated (and re-encoded for `max_side`):
    `(image_id, prepared_image, captions, label)`, or None when `skip_bad` skips it (then
    it is listed in `skipped`)."""
    image_id, image, captions, label = _unpack(item, source_name)
    what = f"{source_name} image {image_id!r}"
    if image_id in seen_ids:
        raise RecordsError(f"{what}: duplicate image id (ids must be unique per build)")
    if any(not c.strip() for c in captions):  # sources clean theirs; objects may not
        if not skip_bad:
            raise RecordsError(f"{what}: empty caption")
        skipped.append({"where": what, "reason": "empty caption"})
        return None
    try:
        prepared = images_lib.prepare_image(
            images_lib.read_image_bytes(image, what=what), what=what, max_side=max_side)
    except RecordsError as exc:
        if not skip_bad:
            raise
        skipped.append({"where": what, "reason": str(exc)})
        return None
    seen_ids.add(image_id)
    return image_id, prepared, captions, label


def _manifest(src, source_name, written, skipped, args) -> dict:
    """The manifest of a finished build (`records/schema.py` documents its fields)."""
    class_names = getattr(src, "class_names", None)
    return {
        "schema_version": SCHEMA_VERSION,
        "source": source_name,
        "num_records": written.num_records,
        "num_captions": sum(s["captions"] for s in written.shards),
        "shards": written.shards,
        "class_names": list(class_names) if class_names is not None else None,
        "image_stats": written.image_stats(),
        "build": {
            "args": jsonable(args),
            "skipped": skipped,
            "num_skipped": len(skipped),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
        "source_info": jsonable(getattr(src, "info", {}) or {}),
    }


def _unpack(item, source_name):
    try:
        image_id, image, captions, label = item
    except (TypeError, ValueError) as exc:
        raise RecordsError(f"source {source_name!r} yielded {item!r}; expected "
                           "(image_id, image_bytes_or_path, captions, label)") from exc
    return str(image_id), image, [str(c) for c in (captions or [])], int(label)


def _image_stats(heights, widths, formats, reencoded):
    n = len(heights)
    return {
        "min_height": min(heights), "max_height": max(heights), "mean_height": sum(heights) / n,
        "min_width": min(widths), "max_width": max(widths), "mean_width": sum(widths) / n,
        "formats": formats, "reencoded": reencoded,
    }


def _progress(src, source_name):
    """Progress of the build on stderr: a bar on a terminal, a few plain lines in a log."""
    try:
        total = len(src)
    except TypeError:
        total = None
    return progress_bar(total, desc=f"records {source_name}", unit="img")
