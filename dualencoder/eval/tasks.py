"""Evaluation runs behind `evaluate.py`: inputs, encoders, reports.

Each `run_*` function takes already validated inputs (see `prepare_class_data`,
`prepare_caption_data`, `load_encoder`), does the work and writes
`report.json`, `report.md` and PNG figures into an output directory. The
split lets the CLI reject bad input before any model is loaded.

Report JSON: every report has `kind` (`zeroshot`, `retrieval`, `linear-probe`,
`kshot`, `prompt-tune`, `baseline`, `compare`), `model` (`spec`, `name`,
`family`: `ours` | `clip` | `baseline`), `dataset` (`name`, `path`, ...),
`metrics` and `settings`. `compare` reads these fields.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import time

import numpy as np

from dualencoder.eval import metrics as M
from dualencoder.eval import plots
from dualencoder.eval import zeroshot as Z
from records.files import IMAGE_EXTENSIONS, jsonable, write_json_atomic, write_text_atomic

__all__ = ["EvaluationError", "ClassData", "class_folder_counts", "prepare_class_data",
           "prepare_caption_data",
           "run_zeroshot",
           "run_retrieval", "run_linear_probe", "run_kshot", "run_prompt_tune", "run_compare",
           "write_report", "record_labels", "check_bank"]


class EvaluationError(ValueError):
    """Bad evaluation input; the message is one line meant for the user."""


# ============================================================================ inputs




def is_records_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "manifest.json"))


def class_folder_counts(path: str) -> dict:
    """`{folder: number of image files}` of a raw class-folder directory, validated.

    Raises:
        EvaluationError: missing path, no class folders, a single class, or an empty class.
    """
    if not os.path.exists(path):
        raise EvaluationError(f"{path}: no such directory")
    if not os.path.isdir(path):
        raise EvaluationError(f"{path}: not a directory")
    exts = IMAGE_EXTENSIONS
    counts = {}
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        if entry.startswith(".") or not os.path.isdir(full):
            continue
        counts[entry] = sum(1 for f in os.listdir(full)
                            if f.lower().endswith(exts) and os.path.isfile(os.path.join(full, f)))
    if not counts:
        raise EvaluationError(f"{path}: no class folders (expected DIR/<class>/<image files>) "
                              "and no records manifest.json")
    empty = [k for k, v in counts.items() if v == 0]
    if empty:
        raise EvaluationError(f"{path}: class folder {empty[0]!r} has no images"
                              + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""))
    if len(counts) < 2:
        raise EvaluationError(f"{path}: only one class ({next(iter(counts))!r}); "
                              "classification needs at least two class folders")
    return counts


@dataclasses.dataclass
class ClassData:
    """A labelled data set ready for evaluation.

    Attributes:
        path: what the user gave (records dir or raw class folders).
        records_dir: the records directory (built into the cache for raw folders;
            None until built when `prepare_class_data(..., build=False)`).
        folder_names: class names as stored (folder names), label order.
        class_names: after the class-name map.
        counts: images per class when known before building (raw folders), else None.
        name: a display name for reports (the folder's base name).
        skipped: images skipped as unreadable when the records were built.
    """

    path: str
    records_dir: str | None
    folder_names: list
    class_names: list
    counts: dict | None
    name: str
    skipped: list = dataclasses.field(default_factory=list)
    cache_dir: str | None = None
    skip_bad: bool = False

    def info(self) -> dict:
        return {"name": self.name, "path": os.path.abspath(self.path),
                "records_dir": self.records_dir and os.path.abspath(self.records_dir),
                "num_classes": len(self.class_names), "class_names": self.class_names,
                "folder_names": self.folder_names, "skipped_images": len(self.skipped)}


def _cache_root(cache_dir):
    from dualencoder.encoders.cache import default_cache_dir
    return cache_dir or default_cache_dir()


def _folder_key(path: str, extra) -> str:
    h = hashlib.sha256(os.path.abspath(path).encode())
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:
                continue
            h.update(f"{os.path.relpath(os.path.join(root, f), path)}|{st.st_size}|"
                     f"{st.st_mtime_ns}\n".encode())
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:24]


def _build_cached_records(source, key, cache_dir, skip_bad, **options):
    from records import schema
    from records.build import build_records

    out = os.path.join(_cache_root(cache_dir), "records", f"{source}-{key}")
    if is_records_dir(out):
        try:
            manifest = schema.read_manifest(out)
            return out, manifest
        except schema.RecordsError:
            pass
    try:
        manifest = build_records(source, out, skip_bad=skip_bad, **options)
    except schema.RecordsError as exc:
        hint = "" if skip_bad else " (pass --skip-bad to skip unreadable images)"
        raise EvaluationError(f"{exc}{hint}") from exc
    return out, manifest


def prepare_class_data(path: str, *, class_map=None, cache_dir=None, skip_bad=False,
                       build=True, name=None) -> ClassData:
    """Validate a class-folder data set and (optionally) build its records.

    Args:
        path: a records directory of class-folder records, or a raw directory
            `path/<class>/<images>`.
        class_map: a `zeroshot.load_class_map` spec or a dict.
        cache_dir: cache root for records built from raw folders.
        skip_bad: skip unreadable images (counted in `skipped`) instead of failing.
        build: build records for raw folders now (False: validate only).
        name: display name (default: the directory's base name).

    Raises:
        EvaluationError: any problem with the input, in one line.
    """
    from records import schema

    if not os.path.exists(path):
        raise EvaluationError(f"{path}: no such file or directory")
    mapping = class_map if isinstance(class_map, dict) else _load_map(class_map)
    name = name or os.path.basename(os.path.normpath(path))
    if is_records_dir(path):
        try:
            manifest = schema.read_manifest(path)
        except schema.RecordsError as exc:
            raise EvaluationError(str(exc)) from exc
        folders = manifest.get("class_names")
        if not folders:
            raise EvaluationError(f"{path}: records of source {manifest.get('source')!r} have "
                                  "no class names; this needs class-folder records")
        if len(folders) < 2:
            raise EvaluationError(f"{path}: only one class ({folders[0]!r}); classification "
                                  "needs at least two")
        if manifest.get("num_records", 0) == 0:
            raise EvaluationError(f"{path}: the records hold no images")
        skipped = list((manifest.get("build") or {}).get("skipped") or [])
        data = ClassData(path, path, list(folders), _map(folders, mapping), None, name,
                         skipped, cache_dir, skip_bad)
        return data
    counts = class_folder_counts(path)
    folders = list(counts)
    data = ClassData(path, None, folders, _map(folders, mapping), counts, name, [], cache_dir,
                     skip_bad)
    if build:
        ensure_records(data)
    return data


def ensure_records(data: ClassData) -> ClassData:
    """Build the records of a raw class-folder `ClassData` into the cache (once)."""
    if data.records_dir is not None:
        return data
    key = _folder_key(data.path, {"skip_bad": data.skip_bad})
    out, manifest = _build_cached_records("folders", key, data.cache_dir, data.skip_bad,
                                          root=data.path)
    built = list(manifest.get("class_names") or [])
    if built != data.folder_names:
        raise EvaluationError(f"{data.path}: records were built with classes {built}, "
                              f"expected {data.folder_names}")
    data.records_dir = out
    data.skipped = list((manifest.get("build") or {}).get("skipped") or [])
    return data


def _load_map(spec):
    try:
        return Z.load_class_map(spec)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from exc


def _map(folders, mapping):
    try:
        return Z.apply_class_map(folders, mapping)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from exc


def record_labels(records_dir: str) -> np.ndarray:
    """The label of every record in record order (parses labels only; no image decoding)."""
    from dualencoder.data import annotations as D

    return D.read_labels(records_dir)


def class_counts(data: ClassData) -> np.ndarray:
    """Images per class (from the folders when known, else from the records)."""
    if data.counts is not None:
        return np.array([data.counts[f] for f in data.folder_names])
    labels = record_labels(data.records_dir)
    return np.bincount(labels[labels >= 0], minlength=len(data.folder_names))


def prepare_caption_data(spec: str, *, cache_dir=None, skip_bad=False, build=True):
    """Resolve a retrieval data spec to a records directory.

    Specs: `flickr:DIR[:SPLITFILE]`, `coco:DIR:SPLIT`, `records:DIR`, or a bare
    records directory.

    Returns:
        `(records_dir or None when build=False, name, info dict)`.
    """
    kind, _, rest = spec.partition(":")
    if kind not in ("flickr", "coco", "records") or not rest:
        kind, rest = "records", spec
    if kind == "records":
        if not os.path.exists(rest):
            raise EvaluationError(f"{rest}: no such directory")
        if not is_records_dir(rest):
            raise EvaluationError(f"{rest}: not a records directory (no manifest.json); use "
                                  "flickr:DIR[:SPLITFILE] or coco:DIR:SPLIT for raw data")
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
        options = {"root": root, "split": split}
        name = f"coco-{split}"
    if not build:
        return None, name, {"spec": spec}
    key = _folder_key(root, {"options": options, "skip_bad": skip_bad}) if kind == "flickr" \
        else _folder_key(os.path.join(root, "annotations"), {"options": options,
                                                               "skip_bad": skip_bad})
    out, manifest = _build_cached_records(kind, key, cache_dir, skip_bad, **options)
    return out, name, {"spec": spec, "skipped": len((manifest.get("build") or {}).get(
        "skipped") or [])}


# ============================================================================ reports


def write_report(out_dir: str, report: dict, markdown: str) -> dict:
    """Write `report.json` and `report.md` into `out_dir` (atomically); returns the report."""
    os.makedirs(out_dir, exist_ok=True)
    report = jsonable({**report, "created": datetime.datetime.now().isoformat(
        timespec="seconds")})
    write_json_atomic(os.path.join(out_dir, "report.json"), report, indent=2)
    write_text_atomic(os.path.join(out_dir, "report.md"), markdown.rstrip() + "\n")
    return report


def _pct(x):
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{100 * x:.2f}"


def _summary_md(m):
    rows = [("Accuracy (top-1)", m.get("accuracy")), ("Top-5 accuracy", m.get("top5_accuracy")),
            ("Precision (macro)", m.get("precision")), ("Recall (macro)", m.get("recall")),
            ("F1 (macro)", m.get("f1")), ("Mean per-class recall", m.get("mean_per_class_recall"))]
    lines = ["| Metric | % |", "|---|---:|"]
    lines += [f"| {k} | {_pct(v)} |" for k, v in rows if k != "Top-5 accuracy" or v is not None]
    return "\n".join(lines)


def _per_class_md(per_class):
    lines = ["| Class | Support | Predicted | Precision % | Recall % | F1 % |",
             "|---|---:|---:|---:|---:|---:|"]
    for c in per_class:
        lines.append(f"| {c['name']} | {c['support']} | {c['predicted']} | "
                     f"{_pct(c['precision'])} | {_pct(c['recall'])} | {_pct(c['f1'])} |")
    return "\n".join(lines)


def _pairs_md(pairs):
    if not pairs:
        return "No two classes were confused."
    lines = ["Pair score = confusion rate `(m_ab + m_ba) / (n_a + n_b)`: the fraction of the two "
             "classes' images predicted as the other class of the pair (`m_ab`: true a "
             "predicted b; `n_a`: images of a). It is not an IoU.", "",
             "| # | Class a | Class b | a→b | b→a | n_a | n_b | Confusion rate |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for i, p in enumerate(pairs, 1):
        lines.append(f"| {i} | {p['a']} | {p['b']} | {p['a_as_b']} | {p['b_as_a']} | "
                     f"{p['n_a']} | {p['n_b']} | {p['confusion_rate']:.3f} |")
    return "\n".join(lines)


def _header(title, model_info, dataset_info, settings):
    lines = [f"# {title}", "",
             f"- Model: {model_info.get('name')} (`{model_info.get('spec')}`)",
             f"- Data: {dataset_info.get('name')} (`{dataset_info.get('path')}`)"]
    for k, v in settings.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a} {b}" for a, b in v.items())
        lines.append(f"- {k}: {v}")
    return "\n".join(lines)


def load_images(records_dir: str, indices, size: int) -> dict:
    """Decode the images with the given `image/index` values; `{index: uint8 [size, size, 3]}`."""
    import tensorflow as tf

    from records import schema

    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        return {}
    table = tf.constant(wanted, tf.int64)
    ds = tf.data.TFRecordDataset(schema.shard_paths(records_dir))

    def keep(s):
        idx = tf.io.parse_single_example(s, {"image/index": tf.io.FixedLenFeature([],
                                                                                    tf.int64)})
        return tf.reduce_any(tf.equal(table, idx["image/index"]))

    def load(s):
        f = schema.parse_example(s)
        img = tf.io.decode_image(f["image/encoded"], channels=3, expand_animations=False)
        img = tf.image.resize(img, [size, size], method="bicubic", antialias=True)
        return f["image/index"], tf.cast(tf.clip_by_value(img, 0, 255), tf.uint8)

    out = {}
    for idx, img in ds.filter(keep).map(load):
        out[int(idx)] = img.numpy()
    return out


# ============================================================================ zero-shot


def _embed_class_data(encoder, data: ClassData, *, resize, batch_size, cache_dir, progress,
                      skip_bad=False):
    from dualencoder.encoders.cache import embed_images

    ensure_records(data)
    try:
        emb = embed_images(encoder, data.records_dir, resize_method=resize,
                           batch_size=batch_size, cache_dir=cache_dir,
                           skip_bad=skip_bad or data.skip_bad, progress=progress)
    except Exception as exc:  # tf.errors.InvalidArgumentError from an undecodable record
        if type(exc).__name__ != "InvalidArgumentError":
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvaluationError(f"{data.path}: unreadable image ({first[:200]}); pass "
                              "--skip-bad to skip and count such images") from exc
    labels = emb["labels"]
    if (labels < 0).any() or (labels >= len(data.class_names)).any():
        raise EvaluationError(f"{data.path}: records have labels outside the "
                              f"{len(data.class_names)} classes")
    return emb


def run_zeroshot(encoder, data: ClassData, out_dir: str, *, model_info: dict,
                 templates="simple", resize="bicubic", batch_size=64, cache_dir=None,
                 grid=16, progress=True, seed=0) -> dict:
    """Zero-shot classification of a class-folder data set; writes the report.

    Args:
        encoder: an Encoder.
        data: from `prepare_class_data`.
        out_dir: report directory.
        model_info: from `check_model_spec` / `load_encoder`.
        templates: a `zeroshot.load_templates` spec or a list of templates.
        resize: image resize method.
        batch_size: images per encoder call.
        cache_dir: embedding/record cache root (False: no embedding cache).
        grid: number of example predictions in `predictions.png`.

    Returns:
        The report dict (also in `out_dir/report.json`).
    """
    tmpl = templates if isinstance(templates, list) else Z.load_templates(templates)
    t0 = time.perf_counter()
    emb = _embed_class_data(encoder, data, resize=resize, batch_size=batch_size,
                            cache_dir=cache_dir, progress=progress)
    t_img = time.perf_counter() - t0
    class_emb = Z.class_text_embeddings(encoder, data.class_names, tmpl, progress=progress)
    result = Z.evaluate_zero_shot(emb["embeddings"], emb["labels"], class_emb, data.class_names)
    pred = result.pop("predictions")
    result.pop("scores")
    os.makedirs(out_dir, exist_ok=True)
    plots.plot_confusion_matrix(result["confusion_matrix"], data.class_names,
                                os.path.join(out_dir, "confusion_matrix.png"),
                                title=f"Zero-shot confusion matrix — {data.name}")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(pred), size=min(grid, len(pred)), replace=False))
    images = load_images(data.records_dir, emb["image_index"][pick], min(
        int(encoder.image_size), 160))
    shown = [k for k in pick if int(emb["image_index"][k]) in images]
    plots.plot_prediction_grid([images[int(emb["image_index"][k])] for k in shown],
                               [data.class_names[pred[k]] for k in shown],
                               [data.class_names[emb["labels"][k]] for k in shown],
                               os.path.join(out_dir, "predictions.png"),
                               title=f"Zero-shot predictions — Predicted (True) — {data.name}")
    summary = {k: result[k] for k in ("accuracy", "top5_accuracy", "precision", "recall", "f1",
                                      "mean_per_class_recall", "num_examples")}
    settings = {"templates": templates if isinstance(templates, str) else "custom",
                "num_templates": len(tmpl), "resize": resize,
                "image_size": int(encoder.image_size)}
    report = {
        "kind": "zeroshot", "model": model_info, "dataset": data.info(), "settings": settings,
        "metrics": summary, "per_class": result["per_class"],
        "confusion_matrix": result["confusion_matrix"], "most_confused": result["most_confused"],
        "timing": {"encode_images_s": t_img, "images_per_second": emb.get("images_per_second"),
                   "embeddings_cached": bool(emb.get("cached")),
                   "tower_features": emb.get("tower_features")},
        "figures": ["confusion_matrix.png", "predictions.png"],
    }
    md = "\n\n".join([
        _header(f"Zero-shot classification — {data.name}", model_info, data.info(), settings),
        _summary_md(summary), "## Per class", _per_class_md(result["per_class"]),
        "## Most confused class pairs", _pairs_md(result["most_confused"]),
        "## Figures", "![confusion matrix](confusion_matrix.png)\n\n"
        "![predictions, captioned Predicted (True)](predictions.png)"])
    if data.skipped:
        md += f"\n\n{len(data.skipped)} unreadable images were skipped.\n"
    return write_report(out_dir, report, md)


# ============================================================================ retrieval


def run_retrieval(encoder, records_dir: str, out_dir: str, *, model_info: dict, name=None,
                  ks=(1, 5, 10), resize="bicubic", batch_size=64, cache_dir=None,
                  num_examples=4, top=5, progress=True, image_chunk=2048, text_chunk=16384,
                  seed=0, data_info=None, bank=None, bank_k=10) -> dict:
    """Image↔text retrieval over the whole gallery of a captioned records directory.

    With `bank` (a captioned records directory of *training* data, never the gallery),
    rankings use CSLS against that bank (`dualencoder.eval.hubness`): each gallery image is
    penalised by its mean cosine to its `bank_k` nearest bank captions, each gallery caption
    by its mean cosine to its `bank_k` nearest bank images. The report's `metrics` are then
    the CSLS numbers and `metrics_cosine` the plain cosine ones.
    """
    from dualencoder.data import annotations as D
    from dualencoder.eval import hubness as H
    from dualencoder.encoders.cache import embed_images, embed_texts

    if bank is not None:
        check_bank(bank, records_dir, bank_k)

    texts, owner = D.read_captions(records_dir)
    if not texts:
        raise EvaluationError(f"{records_dir}: no captions; retrieval needs captioned records")
    t0 = time.perf_counter()
    emb = embed_images(encoder, records_dir, resize_method=resize, batch_size=batch_size,
                       cache_dir=cache_dir, progress=progress)
    t_img = time.perf_counter() - t0
    # Gallery rows follow emb["image_index"]; map captions' image/index to rows.
    row_of = np.full(int(max(emb["image_index"].max(), owner.max())) + 1, -1, np.int64)
    row_of[emb["image_index"]] = np.arange(len(emb["image_index"]))
    g = row_of[owner]
    keep = g >= 0  # captions of skipped images cannot be scored
    texts_kept = [t for t, k in zip(texts, keep) if k]
    t1 = time.perf_counter()
    txt = embed_texts(encoder, texts_kept, cache_dir=cache_dir, progress=progress,
                      desc="encoding captions",
                      records_dir=records_dir if bool(keep.all()) else None)
    t_txt = time.perf_counter() - t1
    def rank(img, txt):
        try:
            return M.retrieval_metrics(img, txt, g[keep], ks=ks, image_chunk=image_chunk,
                                       text_chunk=text_chunk, progress=progress)
        except ValueError as exc:
            raise EvaluationError(str(exc)) from exc

    t2 = time.perf_counter()
    img = emb["embeddings"]
    cosine, t_bank, bank_info = None, 0.0, None
    if bank is not None:
        t_b = time.perf_counter()
        bank_img = embed_images(encoder, bank, resize_method=resize, batch_size=batch_size,
                                cache_dir=cache_dir, progress=progress)["embeddings"]
        bank_texts, _ = D.read_captions(bank)
        bank_txt = embed_texts(encoder, bank_texts, cache_dir=cache_dir, progress=progress,
                               desc="encoding bank captions", records_dir=bank)
        t_bank = time.perf_counter() - t_b
        bank_info = {"path": os.path.abspath(bank), "num_images": int(len(bank_img)),
                     "num_captions": int(len(bank_txt)), "k": int(bank_k)}
        cosine = rank(img, txt)
        img, txt = H.csls_embeddings(img, txt, H.mean_topk_similarity(img, bank_txt, bank_k),
                                     H.mean_topk_similarity(txt, bank_img, bank_k))
    result = rank(img, txt)
    t_search = time.perf_counter() - t2 - t_bank

    # Example text queries with their top images.
    rng = np.random.default_rng(seed)
    qs = np.sort(rng.choice(len(texts_kept), size=min(num_examples, len(texts_kept)),
                            replace=False))
    sims = txt[qs] @ img.T  # the scores that ranked (CSLS with a bank)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :top]
    need = emb["image_index"][np.unique(order)]
    images = load_images(records_dir, need, 128)
    os.makedirs(out_dir, exist_ok=True)
    plots.plot_retrieval_examples(
        [texts_kept[q] for q in qs],
        [[images[int(emb["image_index"][j])] for j in row] for row in order],
        [[int(j) == int(g[keep][q]) for j in row] for q, row in zip(qs, order)],
        os.path.join(out_dir, "retrieval_examples.png"),
        scores=[[float(sims[r, j]) for j in row] for r, row in enumerate(order)],
        title="Text → image: top results per query"
              + (" (CSLS scores against the bank)" if bank is not None else ""))
    dataset = {"name": name or os.path.basename(os.path.normpath(records_dir)),
               "path": os.path.abspath(records_dir), "num_images": result["num_images"],
               "num_captions": result["num_captions"],
               "captions_dropped": int((~keep).sum()), **(data_info or {})}
    settings = {"resize": resize, "image_size": int(encoder.image_size), "ks": list(ks),
                "ties": result["ties"], "similarity": "cosine (dot of L2-normalised embeddings)"}
    if bank is not None:
        settings["similarity"] = (f"CSLS, k={bank_k}: 2 cos - r(image) - r(caption), r = mean "
                                  f"cosine to the k nearest of the bank's other modality")
        settings["bank"] = bank_info
    report = {"kind": "retrieval", "model": model_info, "dataset": dataset,
              "settings": settings,
              "metrics": {"image_to_text": result["image_to_text"],
                          "text_to_image": result["text_to_image"]},
              "timing": {"encode_images_s": t_img, "encode_texts_s": t_txt,
                         "search_s": t_search, "bank_s": t_bank,
                         "embeddings_cached": bool(emb.get("cached")),
                         "tower_features": emb.get("tower_features")},
              "figures": ["retrieval_examples.png"]}
    tables = [("", result)]
    if cosine is not None:
        report["metrics_cosine"] = {"image_to_text": cosine["image_to_text"],
                                    "text_to_image": cosine["text_to_image"]}
        tables = [(f"CSLS against the bank (k={bank_k}; {bank_info['num_images']} images, "
                   f"{bank_info['num_captions']} captions of {bank}):", result),
                  ("Plain cosine, for comparison:", cosine)]
    parts = []
    for title, res in tables:
        rows = ["| Direction | " + " | ".join(f"R@{k} %" for k in ks) + " | Median rank | "
                "Mean rank | Queries |", "|---|" + "---:|" * (len(ks) + 3)]
        for label, key in (("Image → text", "image_to_text"), ("Text → image", "text_to_image")):
            r = res[key]
            rows.append(f"| {label} | " + " | ".join(_pct(r[f'R@{k}']) for k in ks)
                        + f" | {r['median_rank']:.1f} | {r['mean_rank']:.1f} | "
                        f"{r['num_queries']} |")
        parts.append((title + "\n\n" if title else "") + "\n".join(rows))
    md = "\n\n".join([
        _header(f"Retrieval — {dataset['name']}", model_info, dataset, settings),
        f"Gallery: {result['num_images']} images, {result['num_captions']} captions. "
        "Image → text is a hit when any of the image's own captions is in the top K. "
        "Ties count against the query (pessimistic).",
        *parts, "## Examples", "![text queries and their top images]"
        "(retrieval_examples.png)"])
    return write_report(out_dir, report, md)


def check_bank(bank: str, records_dir, k: int) -> None:
    """A CSLS bank must be a captioned records directory other than the evaluated one, with at
    least `k` images and `k` captions; raises EvaluationError naming what is wrong."""
    from records import schema

    if not is_records_dir(bank):
        what = "not a records directory (no manifest.json)" if os.path.isdir(bank) \
            else "no such directory"
        raise EvaluationError(f"{bank}: {what}; the CSLS bank is the training records "
                              "(`python -m records build`)")
    manifest = schema.read_manifest(bank)
    if not manifest.get("num_captions"):
        raise EvaluationError(f"{bank}: no captions; the CSLS bank needs captioned records")
    if int(k) < 1 or int(k) > min(int(manifest["num_records"]), int(manifest["num_captions"])):
        raise EvaluationError(f"--bank-k {k}: must be between 1 and the bank's "
                              f"{manifest['num_records']} images / {manifest['num_captions']} "
                              "captions")
    if records_dir is not None:
        def shards(path):
            return sorted(s.get("sha256") for s in schema.read_manifest(path)["shards"])
        if (os.path.realpath(bank) == os.path.realpath(records_dir)
                or shards(bank) == shards(records_dir)):
            raise EvaluationError(f"{bank}: the CSLS bank is the evaluated gallery itself; use "
                                  "the training records (a bank built from the queries would "
                                  "be transductive)")


# ============================================================================ probes


def _check_same_classes(train: ClassData, test: ClassData):
    if train.class_names != test.class_names:
        raise EvaluationError(f"train and test classes differ: {train.class_names} vs "
                              f"{test.class_names}")


def _classification_section(result, class_names):
    return "\n\n".join([_summary_md(result), "## Per class",
                        _per_class_md(result["per_class"]), "## Most confused class pairs",
                        _pairs_md(M.most_confused_pairs(result["confusion_matrix"],
                                                        class_names))])


def run_linear_probe(encoder, train: ClassData, test: ClassData, out_dir: str, *,
                     model_info: dict, resize="bicubic", batch_size=64, cache_dir=None,
                     progress=True, seed=0) -> dict:
    """Softmax-regression probe on frozen image embeddings (L2 chosen on held-out train)."""
    from dualencoder.eval import probe as P

    _check_same_classes(train, test)
    tr = _embed_class_data(encoder, train, resize=resize, batch_size=batch_size,
                           cache_dir=cache_dir, progress=progress)
    te = _embed_class_data(encoder, test, resize=resize, batch_size=batch_size,
                           cache_dir=cache_dir, progress=progress)
    c = len(train.class_names)
    t0 = time.perf_counter()
    clf, info = P.fit_probe(tr["embeddings"], tr["labels"], c, seed=seed)
    fit_s = time.perf_counter() - t0
    scores = clf.decision_function(te["embeddings"])
    result = M.classification_metrics(te["labels"], scores.argmax(1), c, test.class_names,
                                      scores=scores)
    result["most_confused"] = M.most_confused_pairs(result["confusion_matrix"],
                                                    test.class_names)
    plots.plot_confusion_matrix(result["confusion_matrix"], test.class_names,
                                os.path.join(out_dir, "confusion_matrix.png"),
                                title=f"Linear probe confusion matrix — {test.name}")
    summary = {k: result[k] for k in ("accuracy", "top5_accuracy", "precision", "recall", "f1",
                                      "mean_per_class_recall", "num_examples")}
    settings = {"resize": resize, "image_size": int(encoder.image_size), "l2": info["l2"],
                "train": train.name, "train_images": int(len(tr["labels"]))}
    report = {"kind": "linear-probe", "model": model_info, "dataset": test.info(),
              "train_dataset": train.info(), "settings": settings, "metrics": summary,
              "l2_search": info["search"], "per_class": result["per_class"],
              "confusion_matrix": result["confusion_matrix"],
              "most_confused": result["most_confused"], "timing": {"fit_s": fit_s},
              "figures": ["confusion_matrix.png"]}
    md = "\n\n".join([_header(f"Linear probe — {test.name}", model_info, test.info(), settings),
                      _classification_section(result, test.class_names),
                      "![confusion matrix](confusion_matrix.png)"])
    return write_report(out_dir, report, md)


def default_shots(smallest: int, limit: int = 128) -> list:
    shots, k = [], 1
    while k <= min(smallest, limit):
        shots.append(k)
        k *= 2
    return shots


def run_kshot(encoder, train: ClassData, test: ClassData, out_dir: str, *, model_info: dict,
              shots, seeds=3, templates="simple", resize="bicubic", batch_size=64,
              cache_dir=None, progress=True) -> dict:
    """k-shot linear probes (balanced, several seeds) with zero-shot as the k=0 point."""
    from dualencoder.eval import probe as P

    _check_same_classes(train, test)
    tmpl = templates if isinstance(templates, list) else Z.load_templates(templates)
    tr = _embed_class_data(encoder, train, resize=resize, batch_size=batch_size,
                           cache_dir=cache_dir, progress=progress)
    te = _embed_class_data(encoder, test, resize=resize, batch_size=batch_size,
                           cache_dir=cache_dir, progress=progress)
    c = len(train.class_names)
    counts = np.bincount(tr["labels"], minlength=c)
    if max(shots) > counts.min():
        raise EvaluationError(f"--shots {max(shots)} is more than the smallest training class "
                              f"has ({counts.min()} images)")
    class_emb = Z.class_text_embeddings(encoder, train.class_names, tmpl, progress=progress)
    zs = Z.evaluate_zero_shot(te["embeddings"], te["labels"], class_emb, test.class_names)
    rows = []
    iterator = [(k, s) for k in shots for s in range(seeds)]
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc="k-shot probes", unit="fit", leave=False)
    per = {k: [] for k in shots}
    per_f1 = {k: [] for k in shots}
    for k, s in iterator:
        idx = P.balanced_sample(tr["labels"], k, seed=s, num_classes=c)
        clf, info = P.fit_probe(tr["embeddings"][idx], tr["labels"][idx], c, seed=s)
        pred = clf.predict(te["embeddings"])
        m = M.classification_metrics(te["labels"], pred, c)
        per[k].append(m["accuracy"])
        per_f1[k].append(m["f1"])
        rows.append({"shots": k, "seed": s, "accuracy": m["accuracy"], "f1": m["f1"],
                     "l2": info["l2"]})
    curve = [{"shots": k, "accuracy_mean": float(np.mean(per[k])),
              "accuracy_std": float(np.std(per[k])), "f1_mean": float(np.mean(per_f1[k])),
              "f1_std": float(np.std(per_f1[k])), "seeds": seeds} for k in shots]
    os.makedirs(out_dir, exist_ok=True)
    plots.plot_kshot_curve(shots, [r["accuracy_mean"] for r in curve],
                           [r["accuracy_std"] for r in curve],
                           os.path.join(out_dir, "kshot_curve.png"),
                           zero_shot=zs["accuracy"], title=f"k-shot accuracy — {test.name}")
    best = max(curve, key=lambda r: r["shots"])
    settings = {"shots": list(shots), "seeds": seeds, "templates": templates if isinstance(
        templates, str) else "custom", "resize": resize, "train": train.name}
    report = {"kind": "kshot", "model": model_info, "dataset": test.info(),
              "train_dataset": train.info(), "settings": settings,
              "metrics": {"zero_shot_accuracy": zs["accuracy"],
                          "accuracy": best["accuracy_mean"], "f1": best["f1_mean"],
                          "shots": best["shots"]},
              "curve": [{"shots": 0, "accuracy_mean": zs["accuracy"], "accuracy_std": 0.0,
                         "f1_mean": zs["f1"], "f1_std": 0.0, "seeds": 1}] + curve,
              "runs": rows, "figures": ["kshot_curve.png"]}
    lines = ["| Shots per class | Accuracy % (mean ± std) | F1 % (mean ± std) |",
             "|---:|---:|---:|", f"| 0 (zero-shot) | {_pct(zs['accuracy'])} | {_pct(zs['f1'])} |"]
    for r in curve:
        lines.append(f"| {r['shots']} | {_pct(r['accuracy_mean'])} ± {_pct(r['accuracy_std'])} "
                     f"| {_pct(r['f1_mean'])} ± {_pct(r['f1_std'])} |")
    md = "\n\n".join([_header(f"k-shot linear probe — {test.name}", model_info, test.info(),
                              settings),
                      f"Balanced sampling: k training images per class, {seeds} seeds; L2 "
                      "chosen on held-out shots when k >= 4, else fixed.", "\n".join(lines),
                      "![k-shot curve](kshot_curve.png)"])
    return write_report(out_dir, report, md)


def run_prompt_tune(encoder, train: ClassData, test: ClassData, out_dir: str, *,
                    model_info: dict, shots: int, templates="clip80", resize="bicubic",
                    batch_size=64, cache_dir=None, progress=True, seed=0, steps=300) -> dict:
    """Learn per-template weights and a temperature on k shots; compare with zero-shot and a
    linear probe trained on the same shots."""
    from dualencoder.eval import probe as P

    _check_same_classes(train, test)
    tmpl = templates if isinstance(templates, list) else Z.load_templates(templates)
    tr = _embed_class_data(encoder, train, resize=resize, batch_size=batch_size,
                           cache_dir=cache_dir, progress=progress)
    te = _embed_class_data(encoder, test, resize=resize, batch_size=batch_size,
                           cache_dir=cache_dir, progress=progress)
    c = len(train.class_names)
    counts = np.bincount(tr["labels"], minlength=c)
    if shots > counts.min():
        raise EvaluationError(f"--shots {shots} is more than the smallest training class has "
                              f"({counts.min()} images)")
    per_t = Z.template_text_embeddings(encoder, train.class_names, tmpl, progress=progress)
    zs_cls = Z.class_text_embeddings(None, None, None, per_template=per_t)
    zs = Z.evaluate_zero_shot(te["embeddings"], te["labels"], zs_cls, test.class_names)
    idx = P.balanced_sample(tr["labels"], shots, seed=seed, num_classes=c)
    tuner = Z.PromptTuner(per_t, steps=steps, seed=seed).fit(tr["embeddings"][idx],
                                                             tr["labels"][idx])
    tuned = Z.evaluate_zero_shot(te["embeddings"], te["labels"], tuner.class_embeddings(),
                                 test.class_names)
    clf, info = P.fit_probe(tr["embeddings"][idx], tr["labels"][idx], c, seed=seed)
    lp = M.classification_metrics(te["labels"], clf.predict(te["embeddings"]), c,
                                  test.class_names)
    os.makedirs(out_dir, exist_ok=True)
    plots.plot_confusion_matrix(tuned["confusion_matrix"], test.class_names,
                                os.path.join(out_dir, "confusion_matrix.png"),
                                title=f"Prompt-tuned confusion matrix — {test.name}")
    weights = tuner.template_weights
    order = np.argsort(-weights)
    top = [{"template": tmpl[i], "weight": float(weights[i])} for i in order]

    def pick(m):
        return {k: m[k] for k in ("accuracy", "precision", "recall", "f1")}

    settings = {"shots": shots, "templates": templates if isinstance(templates, str)
                else "custom", "num_templates": len(tmpl), "steps": steps, "seed": seed,
                "resize": resize, "train": train.name}
    report = {"kind": "prompt-tune", "model": model_info, "dataset": test.info(),
              "train_dataset": train.info(), "settings": settings,
              "metrics": {**pick(tuned), "top5_accuracy": tuned["top5_accuracy"],
                          "zero_shot_accuracy": zs["accuracy"],
                          "linear_probe_accuracy": lp["accuracy"]},
              "comparison": {"zero_shot": pick(zs), "prompt_tuned": pick(tuned),
                             "linear_probe_same_shots": pick(lp)},
              "logit_scale": tuner.logit_scale, "template_weights": top,
              "loss_first_last": [tuner.history[0], tuner.history[-1]] if tuner.history else [],
              "per_class": tuned["per_class"], "confusion_matrix": tuned["confusion_matrix"],
              "figures": ["confusion_matrix.png"]}
    lines = ["| Method | Accuracy % | Precision % | Recall % | F1 % |", "|---|---:|---:|---:|---:|"]
    for label, m in (("Zero-shot (template mean)", zs), (f"Prompt-tuned ({shots} shots)", tuned),
                     (f"Linear probe ({shots} shots)", lp)):
        lines.append(f"| {label} | {_pct(m['accuracy'])} | {_pct(m['precision'])} | "
                     f"{_pct(m['recall'])} | {_pct(m['f1'])} |")
    tlines = ["| Template | Weight |", "|---|---:|"] + [
        f"| `{t['template']}` | {t['weight']:.4f} |" for t in top[:10]]
    md = "\n\n".join([_header(f"Prompt tuning — {test.name}", model_info, test.info(), settings),
                      "Frozen encoders; trainable: one weight per template (softmax) and the "
                      f"temperature (learned logit scale {tuner.logit_scale:.1f}).",
                      "\n".join(lines), "## Highest template weights", "\n".join(tlines),
                      "![confusion matrix](confusion_matrix.png)"])
    return write_report(out_dir, report, md)


# ============================================================================ compare

_BASELINE_ORDER = ("xception", "efficientnetb7")
_METRIC_ROWS = (("accuracy", "Test Accuracy (%)"), ("precision", "Precision (%)"),
                ("recall", "Recall (%)"), ("f1", "F1 score (%)"))


def _column_of(report) -> tuple:
    """(sort key, column label) of a report in the comparison table."""
    model = report.get("model") or {}
    fam = model.get("family")
    if fam == "baseline":
        arch = str(model.get("arch", "baseline"))
        rank = _BASELINE_ORDER.index(arch.lower()) if arch.lower() in _BASELINE_ORDER else 2
        label = model.get("display") or arch
        mode = model.get("mode")
        return (0, rank, label), label + (f" ({mode})" if mode and mode != "finetune" else "")
    if fam == "ours":
        return (1, 0, model.get("name", "")), model.get("name") or "Our model"
    return (2, 0, model.get("name", "")), model.get("name") or "Pre-trained CLIP"


def run_compare(report_dirs, out_dir: str) -> dict:
    """One table laid out like Table 2 of the seed report, plus a grouped bar chart.

    Rows: for each dataset, Test Accuracy, Precision, Recall, F1 (from zero-shot and
    baseline reports), then Linear-probe accuracy, k-shot accuracy and prompt-tuned
    accuracy where such reports exist. Columns: baselines (Xception, EfficientNetB7,
    others), our model(s), pretrained CLIP(s). Missing cells are "-".
    """
    reports = []
    for d in report_dirs:
        path = os.path.join(d, "report.json") if os.path.isdir(d) else d
        if not os.path.isfile(path):
            raise EvaluationError(f"{d}: no report.json")
        try:
            with open(path, encoding="utf-8") as fh:
                rep = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise EvaluationError(f"{path}: unreadable report ({exc})") from exc
        if rep.get("kind") not in ("zeroshot", "baseline", "linear-probe", "kshot",
                                   "prompt-tune"):
            raise EvaluationError(f"{path}: a {rep.get('kind')!r} report cannot be compared "
                                  "(zeroshot, baseline, linear-probe, kshot, prompt-tune)")
        rep["_path"] = path
        reports.append(rep)
    if not reports:
        raise EvaluationError("compare needs at least one report directory")
    columns = {}
    for rep in reports:
        key, label = _column_of(rep)
        columns.setdefault(label, key)
    col_labels = sorted(columns, key=lambda lab: columns[lab])
    datasets = []
    cells = {}  # (dataset, row label, column) -> value
    for rep in reports:
        ds = (rep.get("dataset") or {}).get("name", "?")
        if ds not in datasets:
            datasets.append(ds)
        _, col = _column_of(rep)
        m = rep.get("metrics", {})
        kind = rep["kind"]
        if kind in ("zeroshot", "baseline"):
            for key, label in _METRIC_ROWS:
                cells[(ds, label, col)] = m.get(key)
        elif kind == "linear-probe":
            cells[(ds, "Linear-probe accuracy (%)", col)] = m.get("accuracy")
            cells[(ds, "Linear-probe F1 (%)", col)] = m.get("f1")
        elif kind == "kshot":
            cells[(ds, f"{m.get('shots')}-shot accuracy (%)", col)] = m.get("accuracy")
        elif kind == "prompt-tune":
            cells[(ds, f"Prompt-tuned {rep['settings'].get('shots')}-shot accuracy (%)",
                   col)] = m.get("accuracy")
    base_rows = [label for _, label in _METRIC_ROWS]
    lines = ["| Target Dataset | Statistics | " + " | ".join(col_labels) + " |",
             "|---|---|" + "---:|" * len(col_labels)]
    table = []
    for ds in datasets:
        extra = sorted({r for (d, r, _) in cells if d == ds and r not in base_rows})
        first = True
        for row in base_rows + extra:
            vals = [cells.get((ds, row, c)) for c in col_labels]
            if row in extra and all(v is None for v in vals):
                continue
            lines.append(f"| {ds if first else ''} | {row} | "
                         + " | ".join(_pct(v) for v in vals) + " |")
            table.append({"dataset": ds, "statistic": row,
                          "values": dict(zip(col_labels, vals))})
            first = False
    os.makedirs(out_dir, exist_ok=True)
    groups, series = [], {c: [] for c in col_labels}
    for ds in datasets:
        for key, label in _METRIC_ROWS:
            groups.append(f"{ds} {key}")
            for c in col_labels:
                v = cells.get((ds, label, c))
                series[c].append(None if v is None else 100 * v)
    plots.plot_grouped_bars(groups, series, os.path.join(out_dir, "comparison.png"),
                            ylabel="%", title="Experimental results", ylim=(0, 105))
    report = {"kind": "compare", "columns": col_labels, "datasets": datasets, "table": table,
              "sources": [r["_path"] for r in reports], "figures": ["comparison.png"]}
    md = "\n\n".join(["# Experimental results", "\n".join(lines),
                      "Precision, recall and F1 are macro averages over classes. Zero-shot "
                      "rows for our model and CLIP; baseline rows from supervised classifiers.",
                      "![grouped bar chart](comparison.png)"])
    return write_report(out_dir, report, md)
