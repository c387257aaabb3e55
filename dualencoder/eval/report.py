"""Evaluation reports: `write_report` (report.json + report.md) and the Markdown pieces the
evaluators share (header, metric summary, per-class table, most confused pairs)."""

from __future__ import annotations

import datetime
import os

import numpy as np

from dualencoder.eval import metrics as M
from records.files import jsonable, write_json_atomic, write_text_atomic

__all__ = ["write_report", "pct", "summary_md", "per_class_md", "pairs_md", "header",
           "classification_section", "chance", "SUMMARY_KEYS"]

# The metrics a classification report's `metrics` holds.
SUMMARY_KEYS = ("accuracy", "top5_accuracy", "precision", "recall", "f1",
                "mean_per_class_recall", "num_examples")


def write_report(out_dir: str, report: dict, markdown: str) -> dict:
    """Write `report.json` and `report.md` into `out_dir` (atomically); returns the report."""
    os.makedirs(out_dir, exist_ok=True)
    report = jsonable({**report, "created": datetime.datetime.now().isoformat(
        timespec="seconds")})
    write_json_atomic(os.path.join(out_dir, "report.json"), report, indent=2)
    write_text_atomic(os.path.join(out_dir, "report.md"), markdown.rstrip() + "\n")
    return report


def pct(x):
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{100 * x:.2f}"


def chance(num_classes: int) -> dict:
    """`{"chance_accuracy": 1 / num_classes, "num_classes"}`: the accuracy of guessing."""
    return {"chance_accuracy": 1.0 / num_classes, "num_classes": int(num_classes)}


def summary_md(m):
    rows = [("Accuracy (top-1)", m.get("accuracy")), ("Top-5 accuracy", m.get("top5_accuracy")),
            ("Precision (macro)", m.get("precision")), ("Recall (macro)", m.get("recall")),
            ("F1 (macro)", m.get("f1")), ("Mean per-class recall", m.get("mean_per_class_recall"))]
    lines = ["| Metric | % |", "|---|---:|"]
    lines += [f"| {k} | {pct(v)} |" for k, v in rows if k != "Top-5 accuracy" or v is not None]
    if m.get("chance_accuracy") is not None:
        lines.append(f"| Chance level (1/{m['num_classes']} classes) | "
                     f"{pct(m['chance_accuracy'])} |")
    return "\n".join(lines)


def per_class_md(per_class):
    lines = ["| Class | Support | Predicted | Precision % | Recall % | F1 % |",
             "|---|---:|---:|---:|---:|---:|"]
    for c in per_class:
        lines.append(f"| {c['name']} | {c['support']} | {c['predicted']} | "
                     f"{pct(c['precision'])} | {pct(c['recall'])} | {pct(c['f1'])} |")
    return "\n".join(lines)


def pairs_md(pairs):
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


def header(title, model_info, dataset_info, settings):
    lines = [f"# {title}", "",
             f"- Model: {model_info.get('name')} (`{model_info.get('spec')}`)"
             + (f", towers in {model_info['tower_precision']}"
                if model_info.get("tower_precision", "float32") != "float32" else ""),
             f"- Data: {dataset_info.get('name')} (`{dataset_info.get('path')}`)"]
    for k, v in settings.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a} {b}" for a, b in v.items())
        lines.append(f"- {k}: {v}")
    return "\n".join(lines)


def classification_section(result, class_names):
    """Summary, per-class table and most confused pairs of a classification result."""
    return "\n\n".join([summary_md(result), "## Per class",
                        per_class_md(result["per_class"]), "## Most confused class pairs",
                        pairs_md(M.most_confused_pairs(result["confusion_matrix"],
                                                       class_names))])
