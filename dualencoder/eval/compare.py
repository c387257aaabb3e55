"""The comparison of finished evaluations: one table (laid out like Table 2 of the seed
report) and a grouped bar chart from the `report.json` of zero-shot, baseline, linear-probe,
k-shot and prompt-tune runs."""

from __future__ import annotations

import json
import os

from dualencoder.eval import plots
from dualencoder.eval.errors import EvaluationError
from dualencoder.eval.report import pct, write_report

__all__ = ["run_compare", "column_of", "read_reports", "classification_rows", "probe_rows",
           "kshot_rows", "prompt_tune_rows"]

_BASELINE_ORDER = ("xception", "efficientnetb7")
_METRIC_ROWS = (("accuracy", "Test Accuracy (%)"), ("precision", "Precision (%)"),
                ("recall", "Recall (%)"), ("f1", "F1 score (%)"))


def column_of(report) -> tuple:
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


# How a report of each comparable kind fills the table: `(report) -> [(row label, value)]`.
# The evaluator registry (`eval.evaluators.EVALUATORS`) names the function for each kind.


def classification_rows(report) -> list:
    """Test accuracy, precision, recall and F1 (zero-shot and baseline reports)."""
    m = report.get("metrics", {})
    return [(label, m.get(key)) for key, label in _METRIC_ROWS]


def probe_rows(report) -> list:
    m = report.get("metrics", {})
    return [("Linear-probe accuracy (%)", m.get("accuracy")),
            ("Linear-probe F1 (%)", m.get("f1"))]


def kshot_rows(report) -> list:
    m = report.get("metrics", {})
    return [(f"{m.get('shots')}-shot accuracy (%)", m.get("accuracy"))]


def prompt_tune_rows(report) -> list:
    shots = (report.get("settings") or {}).get("shots")
    return [(f"Prompt-tuned {shots}-shot accuracy (%)", report.get("metrics", {}).get("accuracy"))]


def read_reports(report_dirs, table_rows) -> list:
    """The comparable reports of `report_dirs` (directories or report.json files), each with
    its path in `_path`; raises EvaluationError naming a missing, unreadable or wrong one.
    `table_rows`: {report kind: rows function} of the kinds that can be compared."""
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
        if rep.get("kind") not in table_rows:
            raise EvaluationError(f"{path}: a {rep.get('kind')!r} report cannot be compared "
                                  f"({', '.join(table_rows)})")
        rep["_path"] = path
        reports.append(rep)
    if not reports:
        raise EvaluationError("compare needs at least one report directory")
    return reports


def _cells(reports, table_rows):
    """`(datasets in order, {(dataset, row label, column): value})`."""
    datasets = []
    cells = {}
    for rep in reports:
        ds = (rep.get("dataset") or {}).get("name", "?")
        if ds not in datasets:
            datasets.append(ds)
        _, col = column_of(rep)
        for label, value in table_rows[rep["kind"]](rep):
            cells[(ds, label, col)] = value
    return datasets, cells


def run_compare(report_dirs, out_dir: str, table_rows) -> dict:
    """One table laid out like Table 2 of the seed report, plus a grouped bar chart.

    Rows: for each dataset, Test Accuracy, Precision, Recall, F1 (from zero-shot and
    baseline reports), then Linear-probe accuracy, k-shot accuracy and prompt-tuned
    accuracy where such reports exist. Columns: baselines (Xception, EfficientNetB7,
    others), our model(s), pretrained CLIP(s). Missing cells are "-". `table_rows`: {report
    kind: `(report) -> [(row label, value)]`}, from the evaluator registry.
    """
    reports = read_reports(report_dirs, table_rows)
    columns = {}
    for rep in reports:
        key, label = column_of(rep)
        columns.setdefault(label, key)
    col_labels = sorted(columns, key=lambda lab: columns[lab])
    datasets, cells = _cells(reports, table_rows)
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
                         + " | ".join(pct(v) for v in vals) + " |")
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
