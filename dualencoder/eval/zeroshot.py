"""Zero-shot classification with prompt ensembles, and prompt tuning.

A class is described by text prompts built from templates (`"a photo of a
{}."`). Its class embedding is the prompt ensemble of Radford et al. (2021):
encode every prompt, L2-normalise each, average, L2-normalise the mean. An
image is assigned the class whose embedding has the highest cosine
similarity with the image embedding.

Templates:
    - `"simple"`: `["a photo of a {}."]`.
    - `"clip80"`: the 80 ImageNet prompt templates published with CLIP
      (`CLIP_IMAGENET_TEMPLATES`).
    - a file: one template per line containing `{}`; blank lines and lines
      starting with `#` are ignored.

Class-name maps (`load_class_map`):
    - `"animals10"`: the Italian folder names of the Animals-10 data set to English.
    - a file: JSON object `{"folder": "name"}`, or lines `folder=name`,
      `folder<TAB>name` or `folder,name` (the records builder's format). Folders that the
      map does not name keep their name.

Nothing here imports TensorFlow at import time.
"""

from __future__ import annotations

import os

import numpy as np

from dualencoder.arrays import l2_normalize

__all__ = [
    "CLIP_IMAGENET_TEMPLATES", "SIMPLE_TEMPLATES", "load_templates",
    "load_class_map", "apply_class_map", "prompt_name", "class_text_embeddings",
    "template_text_embeddings", "zero_shot_scores", "evaluate_zero_shot", "PromptTuner",
]

SIMPLE_TEMPLATES = ("a photo of a {}.",)

# The 80 prompt templates CLIP used for ImageNet (Radford et al. 2021, the
# "Prompt Engineering for ImageNet" notebook of openai/CLIP), in their order.
CLIP_IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

def load_templates(spec: str = "simple") -> list[str]:
    """Templates for `spec`: `"simple"`, `"clip80"` or a path to a template file.

    Raises:
        ValueError: unknown name, missing or empty file, or a template without `{}`.
    """
    if spec in (None, "", "simple"):
        return list(SIMPLE_TEMPLATES)
    if spec == "clip80":
        return list(CLIP_IMAGENET_TEMPLATES)
    if not os.path.isfile(spec):
        raise ValueError(f"--templates {spec!r}: not 'simple', 'clip80' or an existing file")
    with open(spec, encoding="utf-8") as fh:
        lines = [ln.strip() for ln in fh]
    templates = [ln for ln in lines if ln and not ln.startswith("#")]
    if not templates:
        raise ValueError(f"{spec}: no templates (one per line, each containing '{{}}')")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"{spec}: template {bad[0]!r} must contain '{{}}' exactly once")
    return templates


def load_class_map(spec) -> dict:
    """A folder-name → class-name map from a shipped name (`"animals10"`), a JSON file or
    `folder,name` lines (also `=` or tab); the same reader as `records build folders`.

    Raises:
        ValueError: an unknown name, a missing file or a malformed line (named).
    """
    from records.schema import RecordsError
    from records.sources.folders import load_class_map as read_map

    if not spec:
        return {}
    try:
        return read_map(spec)
    except RecordsError as exc:
        raise ValueError(f"--class-map: {exc}") from None


def apply_class_map(folder_names, mapping: dict) -> list[str]:
    """Map folder names to class names; raise if two classes end up with the same name."""
    names = [mapping.get(n, n) for n in folder_names]
    seen = {}
    for folder, name in zip(folder_names, names):
        key = name.strip().lower()
        if key in seen:
            raise ValueError(f"duplicate class name {name!r} after mapping (folders "
                             f"{seen[key]!r} and {folder!r}); zero-shot needs distinct names")
        seen[key] = folder
    return names


def prompt_name(class_name: str) -> str:
    """The class name as written in prompts: underscores and dashes read as spaces."""
    return " ".join(class_name.replace("_", " ").split())


def template_text_embeddings(encoder, class_names, templates, *, batch_size: int = 256,
                             progress: bool = False) -> np.ndarray:
    """L2-normalised embeddings of every (template, class) prompt.

    Returns:
        float32 array `[num_templates, num_classes, D]`.
    """
    prompts = [t.format(prompt_name(c)) for t in templates for c in class_names]
    from records.progress import track

    starts = range(0, len(prompts), batch_size)
    chunks = track(starts, desc="encoding prompts", unit="batch",
                   enabled=progress and len(starts) > 1)
    out = [np.asarray(encoder.encode_texts(prompts[i:i + batch_size])) for i in chunks]
    emb = l2_normalize(np.concatenate(out, axis=0))
    return emb.reshape(len(templates), len(class_names), -1)


def class_text_embeddings(encoder, class_names, templates, *, weights=None,
                          batch_size: int = 256, progress: bool = False,
                          per_template=None) -> np.ndarray:
    """Prompt-ensemble class embeddings `[num_classes, D]` (normalise, mean, renormalise).

    Args:
        encoder: anything with `encode_texts(list[str]) -> [B, D]`.
        class_names: list of class names (already mapped).
        templates: list of templates with `{}`.
        weights: optional per-template weights (default: equal weights, the plain mean).
        per_template: optional precomputed `template_text_embeddings` output.
    """
    if per_template is None:
        per_template = template_text_embeddings(encoder, class_names, templates,
                                                batch_size=batch_size, progress=progress)
    if weights is None:
        mean = per_template.mean(axis=0)
    else:
        w = np.asarray(weights, dtype=np.float32).reshape(-1, 1, 1)
        mean = (w * per_template).sum(axis=0)
    return l2_normalize(mean)


def zero_shot_scores(image_embeddings, class_embeddings) -> np.ndarray:
    """Cosine similarities `[N, C]` between normalised images and class embeddings."""
    return l2_normalize(image_embeddings) @ l2_normalize(class_embeddings).T


def evaluate_zero_shot(image_embeddings, labels, class_embeddings, class_names,
                       num_pairs: int = 10) -> dict:
    """Zero-shot metrics from embeddings (no model calls).

    Returns:
        `metrics.classification_metrics` output plus `most_confused` (the
        `num_pairs` pairs with the highest confusion rate), `predictions` and
        `scores` (NumPy arrays; not JSON-serialisable, pop them before dumping).
    """
    from dualencoder.eval import metrics

    scores = zero_shot_scores(image_embeddings, class_embeddings)
    pred = scores.argmax(axis=1)
    result = metrics.classification_metrics(labels, pred, len(class_names), class_names,
                                            scores=scores)
    result["most_confused"] = metrics.most_confused_pairs(result["confusion_matrix"],
                                                          class_names, k=num_pairs)
    result["predictions"] = pred
    result["scores"] = scores
    return result


class PromptTuner:
    """Per-template weights and a temperature trained on labelled image embeddings.

    Both encoders stay frozen: the inputs are precomputed normalised image
    embeddings and per-template class-text embeddings `T[t, c, :]`. The class
    embedding is `normalise(sum_t softmax(a)_t * T[t, c])` and the logits are
    `exp(s) * cos(image, class)`. With `a = 0` the class embeddings are exactly
    the zero-shot prompt ensemble, so training starts at the zero-shot
    classifier. Trained with Adam on softmax cross-entropy plus a small L2 pull
    of `a` towards 0 (uniform weights).

    Args:
        per_template: float array `[T, C, D]` (from `template_text_embeddings`).
        init_logit_scale: float, the initial `exp(s)` (CLIP uses 100).
        learning_rate: float, Adam learning rate.
        steps: int, full-batch optimisation steps.
        l2: float, weight of `mean(a ** 2)`.
    """

    def __init__(self, per_template, *, init_logit_scale: float = 100.0,
                 learning_rate: float = 0.05, steps: int = 300, l2: float = 1e-3, seed: int = 0):
        self.per_template = np.asarray(per_template, dtype=np.float32)
        self.init_logit_scale = float(init_logit_scale)
        self.learning_rate = float(learning_rate)
        self.steps = int(steps)
        self.l2 = float(l2)
        self.seed = int(seed)
        self.template_logits = np.zeros(self.per_template.shape[0], np.float32)
        self.log_scale = float(np.log(init_logit_scale))
        self.history = []

    @property
    def template_weights(self) -> np.ndarray:
        a = self.template_logits - self.template_logits.max()
        w = np.exp(a)
        return w / w.sum()

    @property
    def logit_scale(self) -> float:
        return float(np.exp(self.log_scale))

    def class_embeddings(self) -> np.ndarray:
        return class_text_embeddings(None, None, None, weights=self.template_weights,
                                     per_template=self.per_template)

    def fit(self, image_embeddings, labels, *, progress: bool = False):
        """Train on `[N, D]` normalised image embeddings with int labels `[N]`; `progress`
        shows the steps and the loss on stderr (`step_progress`)."""
        import tensorflow as tf

        x = tf.constant(l2_normalize(image_embeddings))
        y = tf.constant(np.asarray(labels, dtype=np.int64))
        per_t = tf.constant(self.per_template)
        a = tf.Variable(self.template_logits)
        s = tf.Variable(self.log_scale, dtype=tf.float32)
        variables = [a, s]
        m = [tf.Variable(tf.zeros_like(v)) for v in variables]
        v2 = [tf.Variable(tf.zeros_like(v)) for v in variables]
        t = tf.Variable(0.0)
        lr, b1, b2, eps = self.learning_rate, 0.9, 0.999, 1e-8
        l2 = self.l2
        max_log_scale = float(np.log(1000.0))

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                w = tf.nn.softmax(a)
                cls = tf.math.l2_normalize(tf.einsum("t,tcd->cd", w, per_t), axis=-1)
                logits = tf.exp(s) * tf.matmul(x, cls, transpose_b=True)
                ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
                loss = ce + l2 * tf.reduce_mean(tf.square(a))
            grads = tape.gradient(loss, variables)
            t.assign_add(1.0)
            for var, g, mv, vv in zip(variables, grads, m, v2):  # Adam
                mv.assign(b1 * mv + (1 - b1) * g)
                vv.assign(b2 * vv + (1 - b2) * tf.square(g))
                mhat = mv / (1 - tf.pow(b1, t))
                vhat = vv / (1 - tf.pow(b2, t))
                var.assign_sub(lr * mhat / (tf.sqrt(vhat) + eps))
            s.assign(tf.clip_by_value(s, 0.0, max_log_scale))
            return loss

        report = step_progress(self.steps, "prompt tuning") if progress else None
        self.history = []
        for _ in range(self.steps):
            self.history.append(float(step()))
            if report:
                report(self.history[-1])
        if report:
            report(None)
        self.template_logits = a.numpy()
        self.log_scale = float(s.numpy())
        return self

    def predict_scores(self, image_embeddings) -> np.ndarray:
        return zero_shot_scores(image_embeddings, self.class_embeddings())


def step_progress(total: int, desc: str, stream=None):
    """`report(loss)` after each of `total` steps, `report(None)` at the end: a tqdm bar on a
    terminal, else (piped logs) a plain `desc: i/total step (p%), loss x` line at each tenth
    (`records.progress`)."""
    from records.progress import progress_bar

    bar = progress_bar(total, desc=desc, unit="step", stream=stream, min_interval=0)

    def report(loss):
        if loss is None:
            bar.close()
            return
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.update(1)
    return report
