"""The held-out report printed after `python train.py` on the synthetic default.

Retrieval over the whole synthetic validation split and zero-shot classification on the
zero-shot split (shape/colour classes, some colour-shape combinations never seen in training),
both with chance levels beside them, written to `WORKDIR/eval/synthetic_report.json`.
"""

from __future__ import annotations

import json
import os

import numpy as np

from records.files import write_json_atomic


def synthetic_report(workdir: str, cfg) -> dict:
    """Evaluate `workdir/model` on the held-out synthetic splits; returns {"text", ...}."""
    from dualencoder.data import pipeline as data
    from dualencoder.data.annotations import class_names
    from dualencoder.eval import metrics, zeroshot
    from dualencoder.model.saving import load
    from dualencoder.train import setup, validation

    model = load(os.path.join(workdir, "model"))
    dirs = setup.synthetic_default(cfg.data.cache_dir, cfg.data.synthetic_images,
                                   seed=cfg.run.seed)
    image_emb, text_emb, rows = validation.embed_records(
        model, dirs["val"], image_size=cfg.model.image_size, resize_method=cfg.data.resize_method)
    recall = metrics.retrieval_metrics(image_emb, text_emb, rows, ks=(1, 5, 10))
    n_images = len(image_emb)

    names = class_names(dirs["zeroshot"])
    embs, labels = [], []
    for batch in data.image_dataset(dirs["zeroshot"], image_size=cfg.model.image_size,
                                    batch_size=64, resize_method=cfg.data.resize_method):
        embs.append(np.asarray(model.encode_images(batch["images"])))
        labels.append(batch["label"].numpy())
    templates = zeroshot.load_templates("simple")
    classes = zeroshot.class_text_embeddings(model, names, templates)
    zs = zeroshot.evaluate_zero_shot(np.concatenate(embs), np.concatenate(labels), classes, names)
    held_out = _held_out_accuracy(dirs["zeroshot"], names, zs)

    result = {
        "validation_images": n_images,
        "retrieval": {"image_to_text": recall["image_to_text"],
                      "text_to_image": recall["text_to_image"],
                      "chance_R@1": 1.0 / n_images, "chance_R@10": 10.0 / n_images},
        "zeroshot": {"classes": len(names), "top1": zs["accuracy"],
                     "chance_top1": 1.0 / len(names), "held_out_combinations": held_out},
    }
    lines = [
        f"held-out synthetic retrieval over {n_images} validation images "
        f"(chance R@1 {100 / n_images:.1f}%, R@10 {1000 / n_images:.1f}%):",
        "  image->text R@1/5/10: " + "/".join(
            f"{100 * recall['image_to_text'][f'R@{k}']:.1f}" for k in (1, 5, 10)),
        "  text->image R@1/5/10: " + "/".join(
            f"{100 * recall['text_to_image'][f'R@{k}']:.1f}" for k in (1, 5, 10)),
        f"zero-shot on {len(names)} shape/colour classes: top-1 {100 * zs['accuracy']:.1f}% "
        f"(chance {100 / len(names):.1f}%)",
    ]
    if held_out is not None:
        lines.append(f"  on colour-shape combinations never seen in training: "
                     f"{100 * held_out['top1']:.1f}% over {held_out['images']} images")
    result["text"] = "\n".join(lines)
    out = os.path.join(workdir, "eval")
    os.makedirs(out, exist_ok=True)
    write_json_atomic(os.path.join(out, "synthetic_report.json"), result)
    return result


def _held_out_accuracy(zeroshot_dir: str, names, zs) -> dict | None:
    """Top-1 accuracy restricted to the classes the generator held out of training."""
    from records.schema import read_manifest

    manifest = read_manifest(zeroshot_dir)
    info = manifest.get("source_info") or manifest.get("build", {}).get("source_info") or {}
    held = set(info.get("held_out") or [])
    if not held:
        return None
    ids = [i for i, n in enumerate(names) if n in held]
    truth = np.asarray(zs["confusion_matrix"])
    total = truth[ids].sum()
    if total == 0:
        return None
    correct = sum(truth[i, i] for i in ids)
    return {"top1": float(correct / total), "images": int(total), "classes": sorted(held)}


def load_report(workdir: str) -> dict:
    with open(os.path.join(workdir, "eval", "synthetic_report.json"), encoding="utf-8") as fh:
        return json.load(fh)
