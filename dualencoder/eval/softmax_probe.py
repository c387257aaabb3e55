"""Linear probes on frozen embeddings: L2-regularised softmax regression in NumPy.

`SoftmaxProbe` is multinomial logistic regression on standardised features
(z-scored with the training mean and standard deviation), trained full-batch
with Adam on `mean cross-entropy + l2 * ||W||^2` (the bias is not penalised).
`fit_probe` picks `l2` from a grid by accuracy on a stratified held-out part
of the training set, then refits on all of it. `balanced_sample` draws the
k-shot training sets.

This is meant for evaluation-sized problems (up to tens of thousands of
examples and a few thousand features), where full-batch steps are cheap.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SoftmaxProbe", "fit_probe", "balanced_sample", "stratified_split", "L2_GRID"]

L2_GRID = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
DEFAULT_L2 = 1e-3


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class SoftmaxProbe:
    """Multinomial logistic regression with an L2 penalty, trained with full-batch Adam.

    Args:
        num_classes: int.
        l2: float, weight of `||W||^2` in the loss.
        steps: int, Adam steps.
        learning_rate: float.
        seed: int (initialisation is zeros, so the fit is deterministic anyway).

    Example:
    >>> probe = SoftmaxProbe(10, l2=1e-3).fit(train_x, train_y)
    >>> accuracy = np.mean(probe.predict(test_x) == test_y)
    """

    def __init__(self, num_classes: int, *, l2: float = DEFAULT_L2, steps: int = 300,
                 learning_rate: float = 0.05, seed: int = 0):
        self.num_classes = int(num_classes)
        self.l2 = float(l2)
        self.steps = int(steps)
        self.learning_rate = float(learning_rate)
        self.seed = int(seed)
        self.mean_ = None
        self.scale_ = None
        self.W = None
        self.b = None
        self.loss_ = None

    def _standardize(self, x):
        return (np.asarray(x, np.float64) - self.mean_) / self.scale_

    def fit(self, x, y, *, init=None):
        """Fit on features `[N, D]` and labels `[N]`; `init=(W, b)` warm-starts."""
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.int64)
        if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
            raise ValueError(f"bad probe inputs: x {x.shape}, y {y.shape}")
        self.mean_ = x.mean(axis=0)
        self.scale_ = x.std(axis=0) + 1e-6
        z = self._standardize(x)
        n, d = z.shape
        onehot = np.zeros((n, self.num_classes))
        onehot[np.arange(n), y] = 1.0
        W = np.zeros((d, self.num_classes)) if init is None else init[0].copy()
        b = np.zeros(self.num_classes) if init is None else init[1].copy()
        mW, vW, mb, vb = (np.zeros_like(W), np.zeros_like(W), np.zeros_like(b),
                          np.zeros_like(b))
        b1, b2, eps, lr = 0.9, 0.999, 1e-8, self.learning_rate
        for t in range(1, self.steps + 1):
            p = _softmax(z @ W + b)
            g = (p - onehot) / n
            gW = z.T @ g + 2 * self.l2 * W
            gb = g.sum(axis=0)
            mW = b1 * mW + (1 - b1) * gW
            vW = b2 * vW + (1 - b2) * gW * gW
            mb = b1 * mb + (1 - b1) * gb
            vb = b2 * vb + (1 - b2) * gb * gb
            c1, c2 = 1 - b1 ** t, 1 - b2 ** t
            W -= lr * (mW / c1) / (np.sqrt(vW / c2) + eps)
            b -= lr * (mb / c1) / (np.sqrt(vb / c2) + eps)
        p = _softmax(z @ W + b)
        self.loss_ = float(-np.mean(np.log(p[np.arange(n), y] + 1e-12))
                           + self.l2 * np.sum(W * W))
        self.W, self.b = W, b
        return self

    def decision_function(self, x):
        return self._standardize(x) @ self.W + self.b

    def predict_proba(self, x):
        return _softmax(self.decision_function(x))

    def predict(self, x):
        return self.decision_function(x).argmax(axis=1)


def stratified_split(labels, holdout_fraction: float = 0.2, seed: int = 0):
    """Split indices into (train, holdout), holding out a fraction of each class.

    Classes with fewer than 2 examples stay entirely in train.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, hold = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * holdout_fraction))
        k = min(max(k, 1), len(idx) - 1) if len(idx) >= 2 else 0
        hold.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.array(train, np.int64)), np.sort(np.array(hold, np.int64))


def fit_probe(x, y, num_classes: int, *, l2_grid=L2_GRID, holdout_fraction: float = 0.2,
              min_per_class_for_search: int = 4, seed: int = 0, steps: int = 300):
    """Fit a `SoftmaxProbe`, choosing `l2` on a held-out part of the training data.

    When the smallest class has fewer than `min_per_class_for_search` examples
    (e.g. 1- or 2-shot), there is nothing sensible to hold out and `DEFAULT_L2` is used.

    Returns:
        `(probe, info)` where info has `l2`, `search` (list of `{l2, holdout_accuracy}`).
    """
    y = np.asarray(y, np.int64)
    counts = np.bincount(y, minlength=num_classes)
    smallest = counts[counts > 0].min()
    search = []
    best_l2 = DEFAULT_L2
    if smallest >= min_per_class_for_search and len(l2_grid) > 1:
        tr, ho = stratified_split(y, holdout_fraction, seed)
        init = None
        best = -1.0
        for l2 in sorted(l2_grid, reverse=True):  # strong to weak, warm-started
            probe = SoftmaxProbe(num_classes, l2=l2, steps=steps, seed=seed)
            probe.fit(x[tr], y[tr], init=init)
            init = (probe.W, probe.b)
            acc = float(np.mean(probe.predict(x[ho]) == y[ho]))
            search.append({"l2": l2, "holdout_accuracy": acc})
            if acc > best + 1e-12:
                best, best_l2 = acc, l2
    probe = SoftmaxProbe(num_classes, l2=best_l2, steps=steps, seed=seed).fit(x, y)
    return probe, {"l2": best_l2, "search": search}


def balanced_sample(labels, shots: int, seed: int, num_classes: int | None = None):
    """Indices of `shots` examples per class, drawn without replacement.

    Raises:
        ValueError: a class has fewer than `shots` examples.
    """
    labels = np.asarray(labels)
    classes = range(num_classes) if num_classes is not None else np.unique(labels)
    rng = np.random.default_rng(seed)
    out = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if len(idx) < shots:
            raise ValueError(f"class {c} has {len(idx)} examples, fewer than {shots} shots")
        out.extend(rng.choice(idx, size=shots, replace=False))
    return np.sort(np.array(out, np.int64))
