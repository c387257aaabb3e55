"""Summarise a records directory and draw a contact sheet of sample images with captions."""

from __future__ import annotations

import io
import itertools
import os
import textwrap

from records.reader import iter_records
from records.schema import read_manifest


def summarize(records_dir) -> dict:
    """The manifest's headline numbers for a records directory.

    Example:
    >>> summarize("data/synth_train")["num_records"]
    """
    m = read_manifest(os.fspath(records_dir))
    return {
        "records_dir": os.fspath(records_dir), "source": m["source"],
        "num_records": m["num_records"], "num_captions": m.get("num_captions"),
        "num_shards": len(m["shards"]), "bytes": sum(s.get("bytes", 0) for s in m["shards"]),
        "class_names": m.get("class_names"), "image_stats": m.get("image_stats"),
        "num_skipped": len(m.get("build", {}).get("skipped", [])),
        "created": m.get("build", {}).get("created"),
    }


def format_summary(summary: dict) -> str:
    """Human-readable lines for `summarize`'s dict."""
    s = summary
    lines = [f"records: {s['records_dir']}",
             f"  source: {s['source']}   shards: {s['num_shards']}   "
             f"size: {s['bytes'] / 1e6:.1f} MB   built: {s['created']}",
             f"  images: {s['num_records']}   captions: {s['num_captions']}   "
             f"skipped at build: {s['num_skipped']}"]
    st = s.get("image_stats") or {}
    if st:
        lines.append(f"  image height {st['min_height']}..{st['max_height']} "
                     f"(mean {st['mean_height']:.0f}), width {st['min_width']}..{st['max_width']} "
                     f"(mean {st['mean_width']:.0f}), formats {st.get('formats')}")
    if s.get("class_names"):
        names = s["class_names"]
        shown = ", ".join(names[:12]) + (f", ... ({len(names)} classes)" if len(names) > 12 else "")
        lines.append(f"  classes: {shown}")
    return "\n".join(lines)


def sample_records(records_dir, num_images: int) -> list:
    """The records a contact sheet shows: the first `num_images` of captioned records; of
    class-folder records, images taken round-robin over the classes (the first image of each
    class in label order, then the second of each, ...), so that the sheet shows many classes.

    Example:
    >>> [r["label"] for r in sample_records("data/synth_zeroshot", 4)]
    [0, 1, 2, 3]
    """
    records = iter_records(records_dir, skip_bad=True)
    num_classes = len(read_manifest(os.fspath(records_dir)).get("class_names") or [])
    if num_classes < 2:
        return list(itertools.islice(records, num_images))
    # with more classes than images, one image of each of the first classes is enough
    cap = num_images if num_classes <= num_images else 1
    buckets: dict = {}
    for rec in records:
        bucket = buckets.setdefault(rec["label"], [])
        if len(bucket) < cap:
            bucket.append(rec)
            if len(buckets) == num_classes and all(len(b) >= cap for b in buckets.values()):
                break
    rounds = itertools.zip_longest(*(buckets[label] for label in sorted(buckets)))
    return [rec for row in rounds for rec in row if rec is not None][:num_images]


def title_lines(record: dict, class_names, *, width: int = 38) -> list:
    """A contact-sheet title: up to 3 captions of up to 2 lines each, a cut caption ending
    with "…"; else the class name in brackets; else the image id."""
    if record["captions"]:
        return [line for c in record["captions"][:3]
                for line in textwrap.wrap(c, width, max_lines=2, placeholder=" …")]
    if 0 <= record["label"] < len(class_names):
        return [f"[{class_names[record['label']]}]"]
    return [record["image_id"]]


def contact_sheet(records_dir, out_png, *, num_images: int = 16, columns: int = 4) -> str:
    """Save a PNG grid of `num_images` images (`sample_records`) with their captions or class
    names (`title_lines`).

    Args:
        records_dir: a records directory.
        out_png: the PNG path to write.
        num_images: how many images to show.
        columns: grid columns.

    Returns:
        `out_png`.

    Example:
    >>> contact_sheet("data/synth_train", "synth.png", num_images=12)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    manifest = read_manifest(os.fspath(records_dir))
    class_names = manifest.get("class_names") or []
    samples = sample_records(records_dir, num_images)
    rows = max(1, -(-len(samples) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 4.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, rec in zip(axes.flat, samples):
        ax.imshow(Image.open(io.BytesIO(rec["image_bytes"])).convert("RGB"))
        ax.set_title("\n".join(title_lines(rec, class_names)), fontsize=7)
    fig.suptitle(f"{records_dir} ({manifest['source']}, {manifest['num_records']} images)",
                 fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return os.fspath(out_png)
