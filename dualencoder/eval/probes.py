"""The probe evaluators on frozen image embeddings: a linear probe on all training images,
k-shot probes (several seeds, zero-shot as k=0), and prompt tuning on k shots (learned
template weights and temperature, compared with zero-shot and a probe on the same shots).
The probe itself is `dualencoder.eval.softmax_probe`."""

from __future__ import annotations

import os
import time

import numpy as np

from dualencoder.eval import metrics as M
from dualencoder.eval import plots
from dualencoder.eval import zeroshot as Z
from dualencoder.eval.inputs import ClassData, check_same_classes, check_shots, embed_class_data
from dualencoder.eval.report import (SUMMARY_KEYS, classification_section, header, pct,
                                     write_report)

__all__ = ["run_linear_probe", "run_kshot", "run_prompt_tune", "default_shots"]


def _embed_train_test(encoder, train: ClassData, test: ClassData, *, shots=None, resize,
                      batch_size, cache_dir, progress):
    """Embeddings of `train` and `test` (same classes); with `shots`, checks that the smallest
    training class has that many images."""
    check_same_classes(train, test)
    embed = dict(resize=resize, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    tr = embed_class_data(encoder, train, **embed)
    te = embed_class_data(encoder, test, **embed)
    if shots is not None:
        counts = np.bincount(tr["labels"], minlength=len(train.class_names))
        check_shots(shots, counts.min())
    return tr, te


def _templates(templates):
    """`(template list, name for the report)` of a template spec or list."""
    if isinstance(templates, list):
        return templates, "custom"
    return Z.load_templates(templates), templates


def run_linear_probe(encoder, train: ClassData, test: ClassData, out_dir: str, *,
                     model_info: dict, resize="bicubic", batch_size=64, cache_dir=None,
                     progress=True, seed=0) -> dict:
    """Softmax-regression probe on frozen image embeddings (L2 chosen on held-out train)."""
    from dualencoder.eval import softmax_probe as P

    tr, te = _embed_train_test(encoder, train, test, resize=resize, batch_size=batch_size,
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
    summary = {k: result[k] for k in SUMMARY_KEYS}
    settings = {"resize": resize, "image_size": int(encoder.image_size), "l2": info["l2"],
                "train": train.name, "train_images": int(len(tr["labels"]))}
    report = {"kind": "linear-probe", "model": model_info, "dataset": test.info(),
              "train_dataset": train.info(), "settings": settings, "metrics": summary,
              "l2_search": info["search"], "per_class": result["per_class"],
              "confusion_matrix": result["confusion_matrix"],
              "most_confused": result["most_confused"], "timing": {"fit_s": fit_s},
              "figures": ["confusion_matrix.png"]}
    md = "\n\n".join([header(f"Linear probe — {test.name}", model_info, test.info(), settings),
                      classification_section(result, test.class_names),
                      "![confusion matrix](confusion_matrix.png)"])
    return write_report(out_dir, report, md)


def default_shots(smallest: int, limit: int = 128) -> list:
    """Powers of two up to `min(limit, smallest)`: the k-shot default."""
    shots, k = [], 1
    while k <= min(smallest, limit):
        shots.append(k)
        k *= 2
    return shots


def _kshot_curve(tr, te, shots, seeds, num_classes, progress):
    """`(curve, runs)`: mean/std accuracy and F1 per k over seeds, and every single fit."""
    from dualencoder.eval import softmax_probe as P

    rows = []
    from records.progress import track

    iterator = track([(k, s) for k in shots for s in range(seeds)], desc="k-shot probes",
                     unit="fit", enabled=progress)
    per = {k: [] for k in shots}
    per_f1 = {k: [] for k in shots}
    for k, s in iterator:
        idx = P.balanced_sample(tr["labels"], k, seed=s, num_classes=num_classes)
        clf, info = P.fit_probe(tr["embeddings"][idx], tr["labels"][idx], num_classes, seed=s)
        pred = clf.predict(te["embeddings"])
        m = M.classification_metrics(te["labels"], pred, num_classes)
        per[k].append(m["accuracy"])
        per_f1[k].append(m["f1"])
        rows.append({"shots": k, "seed": s, "accuracy": m["accuracy"], "f1": m["f1"],
                     "l2": info["l2"]})
    curve = [{"shots": k, "accuracy_mean": float(np.mean(per[k])),
              "accuracy_std": float(np.std(per[k])), "f1_mean": float(np.mean(per_f1[k])),
              "f1_std": float(np.std(per_f1[k])), "seeds": seeds} for k in shots]
    return curve, rows


def run_kshot(encoder, train: ClassData, test: ClassData, out_dir: str, *, model_info: dict,
              shots, seeds=3, templates="simple", resize="bicubic", batch_size=64,
              cache_dir=None, progress=True) -> dict:
    """k-shot linear probes (balanced, several seeds) with zero-shot as the k=0 point."""
    tmpl, templates_name = _templates(templates)
    tr, te = _embed_train_test(encoder, train, test, shots=max(shots), resize=resize,
                               batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    class_emb = Z.class_text_embeddings(encoder, train.class_names, tmpl, progress=progress)
    zs = Z.evaluate_zero_shot(te["embeddings"], te["labels"], class_emb, test.class_names)
    curve, rows = _kshot_curve(tr, te, shots, seeds, len(train.class_names), progress)
    os.makedirs(out_dir, exist_ok=True)
    plots.plot_kshot_curve(shots, [r["accuracy_mean"] for r in curve],
                           [r["accuracy_std"] for r in curve],
                           os.path.join(out_dir, "kshot_curve.png"),
                           zero_shot=zs["accuracy"], title=f"k-shot accuracy — {test.name}")
    best = max(curve, key=lambda r: r["shots"])
    settings = {"shots": list(shots), "seeds": seeds, "templates": templates_name,
                "resize": resize, "train": train.name}
    report = {"kind": "kshot", "model": model_info, "dataset": test.info(),
              "train_dataset": train.info(), "settings": settings,
              "metrics": {"zero_shot_accuracy": zs["accuracy"],
                          "accuracy": best["accuracy_mean"], "f1": best["f1_mean"],
                          "shots": best["shots"]},
              "curve": [{"shots": 0, "accuracy_mean": zs["accuracy"], "accuracy_std": 0.0,
                         "f1_mean": zs["f1"], "f1_std": 0.0, "seeds": 1}] + curve,
              "runs": rows, "figures": ["kshot_curve.png"]}
    lines = ["| Shots per class | Accuracy % (mean ± std) | F1 % (mean ± std) |",
             "|---:|---:|---:|", f"| 0 (zero-shot) | {pct(zs['accuracy'])} | {pct(zs['f1'])} |"]
    for r in curve:
        lines.append(f"| {r['shots']} | {pct(r['accuracy_mean'])} ± {pct(r['accuracy_std'])} "
                     f"| {pct(r['f1_mean'])} ± {pct(r['f1_std'])} |")
    md = "\n\n".join([header(f"k-shot linear probe — {test.name}", model_info, test.info(),
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
    from dualencoder.eval import softmax_probe as P

    tmpl, templates_name = _templates(templates)
    tr, te = _embed_train_test(encoder, train, test, shots=shots, resize=resize,
                               batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    c = len(train.class_names)
    per_t = Z.template_text_embeddings(encoder, train.class_names, tmpl, progress=progress)
    zs_cls = Z.class_text_embeddings(None, None, None, per_template=per_t)
    zs = Z.evaluate_zero_shot(te["embeddings"], te["labels"], zs_cls, test.class_names)
    idx = P.balanced_sample(tr["labels"], shots, seed=seed, num_classes=c)
    tuner = Z.PromptTuner(per_t, steps=steps, seed=seed).fit(
        tr["embeddings"][idx], tr["labels"][idx], progress=progress)
    tuned = Z.evaluate_zero_shot(te["embeddings"], te["labels"], tuner.class_embeddings(),
                                 test.class_names)
    clf, _ = P.fit_probe(tr["embeddings"][idx], tr["labels"][idx], c, seed=seed)
    lp = M.classification_metrics(te["labels"], clf.predict(te["embeddings"]), c,
                                  test.class_names)
    os.makedirs(out_dir, exist_ok=True)
    plots.plot_confusion_matrix(tuned["confusion_matrix"], test.class_names,
                                os.path.join(out_dir, "confusion_matrix.png"),
                                title=f"Prompt-tuned confusion matrix — {test.name}")
    weights = tuner.template_weights
    top = [{"template": tmpl[i], "weight": float(weights[i])} for i in np.argsort(-weights)]

    def pick(m):
        return {k: m[k] for k in ("accuracy", "precision", "recall", "f1")}

    settings = {"shots": shots, "templates": templates_name, "num_templates": len(tmpl),
                "steps": steps, "seed": seed, "resize": resize, "train": train.name}
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
        lines.append(f"| {label} | {pct(m['accuracy'])} | {pct(m['precision'])} | "
                     f"{pct(m['recall'])} | {pct(m['f1'])} |")
    tlines = ["| Template | Weight |", "|---|---:|"] + [
        f"| `{t['template']}` | {t['weight']:.4f} |" for t in top[:10]]
    md = "\n\n".join([header(f"Prompt tuning — {test.name}", model_info, test.info(), settings),
                      "Frozen encoders; trainable: one weight per template (softmax) and the "
                      f"temperature (learned logit scale {tuner.logit_scale:.1f}).",
                      "\n".join(lines), "## Highest template weights", "\n".join(tlines),
                      "![confusion matrix](confusion_matrix.png)"])
    return write_report(out_dir, report, md)
