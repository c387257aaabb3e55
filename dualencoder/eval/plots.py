"""Figures for evaluation reports (matplotlib, non-interactive `Agg` backend).

Every function writes one PNG to `path` and returns `path`. Matplotlib is
imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import os
import textwrap

import numpy as np
from records.files import atomic_write

__all__ = ["pyplot", "save_png", "plot_confusion_matrix", "plot_prediction_grid", "plot_kshot_curve",
           "plot_retrieval_examples", "plot_grouped_bars", "plot_history"]


def pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def save_png(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path


def plot_confusion_matrix(cm, class_names, path, *, title="Confusion matrix (row-normalised)",
                          normalize=True):
    """Heat map of a confusion matrix; rows true class, columns predicted class.

    Args:
        cm: `[C, C]` counts (normalised per row when `normalize`) or rates.
        class_names: list of C names.
        path: output PNG path.
    """
    plt = pyplot()
    cm = np.asarray(cm, dtype=np.float64)
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    c = len(class_names)
    side = min(4 + 0.45 * c, 40)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    im = ax.imshow(cm, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    fs = max(4, min(10, int(200 / max(c, 1))))
    ax.set_xticklabels(class_names, rotation=90, fontsize=fs)
    ax.set_yticklabels(class_names, fontsize=fs)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if cm[i, j] > 0:
                    ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=fs - 1,
                            color="white" if cm[i, j] > 0.5 else "black")
    return save_png(fig, path)


def plot_prediction_grid(images, predicted, true, path, *, cols=4, title=None):
    """A grid of images captioned "Predicted (True)", green when right, red when wrong.

    Args:
        images: `[N, H, W, 3]` uint8 or float 0..255.
        predicted: N predicted class names.
        true: N true class names.
    """
    plt = pyplot()
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k in range(n):
        ax = axes[k // cols, k % cols]
        ax.imshow(np.clip(np.asarray(images[k]), 0, 255).astype(np.uint8))
        ok = predicted[k] == true[k]
        ax.set_title(f"{predicted[k]} ({true[k]})", fontsize=9,
                     color="green" if ok else "red")
    fig.suptitle(title or "Predicted (True)")
    return save_png(fig, path)


def plot_kshot_curve(shots, mean, std, path, *, zero_shot=None, extra=None,
                     title="k-shot accuracy"):
    """Accuracy against shots per class on a log axis, mean ± std over seeds.

    The axis is symmetric-log (linear below 1), so the zero-shot point sits at k=0.

    Args:
        shots: list of k values (>= 1).
        mean, std: accuracies per k.
        zero_shot: optional zero-shot accuracy, drawn at k=0 and as a dashed line.
        extra: optional `{label: accuracy}` horizontal reference lines (e.g. the full
            linear probe).
    """
    plt = pyplot()
    shots = np.asarray(shots, dtype=float)
    mean = np.asarray(mean, dtype=float)
    std = np.asarray(std, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys, es = list(shots), list(mean), list(std)
    if zero_shot is not None:
        xs, ys, es = [0.0] + xs, [zero_shot] + ys, [0.0] + es
        ax.axhline(zero_shot, color="gray", ls="--", lw=1, label=f"zero-shot {zero_shot:.3f}")
    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label="linear probe on k shots")
    for i, (label, value) in enumerate((extra or {}).items()):
        ax.axhline(value, color=f"C{i + 2}", ls=":", lw=1, label=f"{label} {value:.3f}")
    ax.set_xscale("symlog", linthresh=1.0)
    ticks = sorted(set(xs))
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(int(t)) for t in ticks])
    ax.set_xlabel("shots per class (k, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return save_png(fig, path)


def plot_retrieval_examples(queries, images, correct, path, *, scores=None,
                            title="Text → image: top results per query"):
    """One row per text query with its top images; the query's own image is framed green.

    Args:
        queries: Q strings.
        images: Q lists of K images (`[H, W, 3]`).
        correct: Q lists of K bools (the image is the query's own image).
        scores: optional Q lists of K similarities.
    """
    plt = pyplot()
    q = len(queries)
    k = max((len(r) for r in images), default=1)
    fig, axes = plt.subplots(q, k, figsize=(2.2 * k, 2.6 * q + 0.4), squeeze=False)
    for r in range(q):
        for c in range(k):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(images[r]):
                ax.axis("off")
                continue
            ax.imshow(np.clip(np.asarray(images[r][c]), 0, 255).astype(np.uint8))
            color = "green" if correct[r][c] else "lightgray"
            for spine in ax.spines.values():
                spine.set_color(color)
                spine.set_linewidth(4 if correct[r][c] else 1)
            if scores is not None:
                ax.set_xlabel(f"#{c + 1}  {scores[r][c]:.3f}", fontsize=8)
        axes[r, 0].set_ylabel("\n".join(textwrap.wrap(queries[r], 28)[:4]), fontsize=8,
                              rotation=0, ha="right", va="center")
    fig.suptitle(title)
    return save_png(fig, path)


def plot_grouped_bars(groups, series: dict, path, *, ylabel="%", title=None, ylim=None):
    """Grouped bar chart: one group per entry of `groups`, one bar per series.

    Args:
        groups: G group labels (e.g. "animals10 accuracy").
        series: `{name: list of G values}`; None or NaN values leave a gap.
    """
    plt = pyplot()
    g = len(groups)
    s = max(len(series), 1)
    width = 0.8 / s
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * g * max(1, s / 3)), 4.5))
    x = np.arange(g)
    for i, (name, values) in enumerate(series.items()):
        vals = np.array([np.nan if v is None else float(v) for v in values])
        bars = ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(vals), width, label=name)
        for b, v in zip(bars, vals):
            if np.isnan(v):
                b.set_visible(False)
            else:
                ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{v:.1f}",
                        ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "")
    return save_png(fig, path)


def plot_history(history: dict, path, *, title="Training history"):
    """Curves of a Keras `History.history` dict (losses left, accuracies right)."""
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key, values in history.items():
        (a2 if "acc" in key else a1).plot(range(1, len(values) + 1), values, marker=".",
                                          label=key)
    for ax, name in ((a1, "loss"), (a2, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_png(fig, path)
