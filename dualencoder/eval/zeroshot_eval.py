"""The zero-shot evaluator: classify a class-folder data set by cosine to the class prompts
(`dualencoder.eval.zeroshot` holds the templates, class maps and text embeddings) and write
the report with a confusion matrix and a grid of example predictions."""

from __future__ import annotations

import os
import time

import numpy as np

from dualencoder.eval import plots
from dualencoder.eval import zeroshot as Z
from dualencoder.eval.inputs import ClassData, embed_class_data, load_images
from dualencoder.eval.report import (SUMMARY_KEYS, chance, header, pairs_md, per_class_md, summary_md,
                                     write_report)

__all__ = ["run_zeroshot"]


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
    emb = embed_class_data(encoder, data, resize=resize, batch_size=batch_size,
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
    # top-5 is left out with 5 classes or fewer (it would be 100%)
    summary = {**{k: result[k] for k in SUMMARY_KEYS if result[k] is not None},
               **chance(len(data.class_names))}
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
        header(f"Zero-shot classification — {data.name}", model_info, data.info(), settings),
        summary_md(summary), "## Per class", per_class_md(result["per_class"]),
        "## Most confused class pairs", pairs_md(result["most_confused"]),
        "## Figures", "![confusion matrix](confusion_matrix.png)\n\n"
        "![predictions, captioned Predicted (True)](predictions.png)"])
    if data.skipped:
        md += f"\n\n{len(data.skipped)} unreadable images were skipped.\n"
    return write_report(out_dir, report, md)
