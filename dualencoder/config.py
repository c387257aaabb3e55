"""Training configuration: typed sections with documented defaults, JSON files and `--set` overrides.

A configuration is four sections (`model`, `data`, `optim`, `run`). Every key has a default
here; a JSON file and `--set section.key=value` overrides replace defaults, and an unknown
key is an error (never silently ignored). Configs are data: nothing is ever executed.

Example:
```python
cfg = Config.from_sources("configs/flickr8k_lit.json", ["optim.lr=1e-3"])
cfg.optim.lr          # 0.001
cfg.to_dict()         # plain JSON-able dict, written to WORKDIR/config.json
```
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

# Keys whose change makes a workdir's checkpoints unusable (resume refuses them).
# Everything else (epochs, patience, eval settings, ...) may change between runs.
ARCHITECTURE_KEYS = ("model",)


class ConfigError(ValueError):
    """A bad configuration value or key; the message names it."""


@dataclasses.dataclass
class ModelConfig:
    """The dual encoder; the one table of model defaults (`model_defaults()`, used by build_model).

    See `dualencoder.model.dual_encoder.build_model`.

    image_tower: a `keras.applications` name (xception, efficientnetb0..b7, resnet50, ...) or
        "tiny" (tests). image_weights: "imagenet" (Keras download), "none" or a local weights
        file. image_size: square input size in pixels. image_trainable: "all", "none" or an int
        N (top-N blocks). text_tower: "all-minilm-l6-v2" (the installed MiniLM package, also
        ""), a keras-hub preset name, a local Hugging Face / keras-hub folder, "tiny", or (in
        saved models) a dict of TextTower arguments. text_pooling: "mean" or "cls" (ignored
        with head="attention"). text_trainable: like image_trainable, in transformer layers.
        sequence_length: tokens per caption.
    embed_dim: shared space size. head: "mlp" (seed design), "linear" or "attention" (learned
        query pooling over spatial/token outputs, then a linear projection); head_layers,
        head_dropout, attention_heads. loss: "clip", "soft" or "siglip"; extra_loss: None or
        "max_violation" with extra_loss_weight. init_logit_scale / max_logit_scale: temperature
        init and clamp; logit_scale_lr_mult: the temperature's learning-rate multiplier (the
        variable is log_logit_scale / mult, so an optimizer step moves the log scale `mult`
        times further; 1 = plain; short runs: 10-50); init_logit_bias: SigLIP's bias init (the
        paper uses -10).
    """

    image_tower: str = "xception"
    image_weights: str = "imagenet"
    image_size: int = 299
    image_trainable: Any = "all"
    text_tower: str = "all-minilm-l6-v2"
    text_pooling: str = "mean"
    text_trainable: Any = "all"
    sequence_length: int = 64
    embed_dim: int = 256
    head: str = "mlp"
    head_layers: int = 1
    head_dropout: float = 0.1
    attention_heads: int = 8
    loss: str = "clip"
    extra_loss: Any = None
    extra_loss_weight: float = 0.0
    init_logit_scale: float = 1 / 0.07
    max_logit_scale: float = 100.0
    logit_scale_lr_mult: float = 1.0
    init_logit_bias: float = -10.0


@dataclasses.dataclass
class DataConfig:
    """Input records and pipeline.

    records: training records dir ("" = the synthetic default, built into `cache_dir`).
    val_records: validation records dir ("" = none; with the synthetic default, its val split).
    batch_size: global batch (pairs). augment: random resized crop + flip.
    all_captions: every caption its own pair per epoch (else one random caption per image).
    resize_method: bicubic, bilinear, nearest or area. skip_bad: drop corrupt records.
    verify: check shard checksums before training. cache_dir: where the synthetic default
    records are built. synthetic_images: its training-set size. cached_views: with both towers
    locked (cached features), image views cached per training image: view 0 is the plain image,
    views 1.. are fixed random resized crops + flips (the same for every run, so runs share the
    cache); epoch e uses view (index + e + seed) mod N of each image (N=1: no augmentation).
    lowres_size: with cached_views >= 2, views 1.. are low-resolution renderings instead: the
    image shrunk to lowres_size px (8-bit, antialiased), then enlarged back to image_size, as
    small images (CIFAR's 32 px) are at evaluation; view 1 the whole image, views 2.. after
    their crop + flip. 0 (default): views 1.. are the crops + flips at full resolution.
    """

    records: str = ""
    val_records: str = ""
    batch_size: int = 64
    augment: bool = False
    all_captions: bool = False
    resize_method: str = "bicubic"
    skip_bad: bool = False
    verify: bool = True
    cache_dir: str = ".cache/dualencoder"
    synthetic_images: int = 4000
    cached_views: int = 1
    lowres_size: int = 0


@dataclasses.dataclass
class OptimConfig:
    """Optimiser and schedule.

    lr, weight_decay: AdamW. schedule: "cosine" (linear warmup over warmup_steps then cosine
    to 0 over the run) or "plateau" (ReduceLROnPlateau on val loss: factor, patience).
    epochs: passes over the training records; max_steps > 0 stops earlier.
    early_stopping: epochs without val improvement before stopping (0 = off).
    micro_batch: gradient caching (0 = off): the batch stays data.batch_size and its loss is
    computed over the whole batch, but the towers run M pairs at a time (embed all
    micro-batches without gradients, take the loss's gradient with respect to the embeddings,
    re-embed each micro-batch and back-propagate its rows): the exact full-batch gradient at
    the activation memory of batch M, for about one extra forward pass. M must divide the
    per-replica batch. BatchNorm (trained CNN towers) normalises per micro-batch.
    split_loss_accum: the older, different thing: N micro-batches per optimizer step, each
    with its own loss, gradients summed: every caption sees B/N-1 negatives, so it trains like
    batch B/N (1 = off). clipnorm: global gradient clip (0 = off).
    """

    lr: float = 1e-3
    weight_decay: float = 0.1
    schedule: str = "cosine"
    warmup_steps: int = 100
    plateau_factor: float = 0.2
    plateau_patience: int = 3
    epochs: int = 10
    max_steps: int = 0
    early_stopping: int = 5
    micro_batch: int = 0
    split_loss_accum: int = 1
    clipnorm: float = 0.0


@dataclasses.dataclass
class RunConfig:
    """How the run executes.

    seed: data order, augmentation, initialisation. precision: float32, mixed_float16 or
    mixed_bfloat16. jit_compile: XLA. strategy: auto, one_device, mirrored, multi_worker.
    checkpoint_every: steps between mid-epoch checkpoints (0 = epoch ends only).
    keep_checkpoints: how many to keep. cache_features: "auto" (when both towers are locked
    and there is no augmentation), "on" or "off". val_subset: images of val used per epoch
    (0 = all). eval_after: run the held-out evaluation after training (synthetic default).
    ledger: append each step's image ids and loss to WORKDIR/ledger.jsonl (audits resume).
    features_dir: where cached tower features live ("" = WORKDIR/features); share one folder
    between runs of an ablation (keys hash data, towers, size, resize, sequence length).
    """

    seed: int = 0
    precision: str = "float32"
    jit_compile: bool = False
    strategy: str = "auto"
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    cache_features: str = "auto"
    val_subset: int = 1000
    eval_after: bool = True
    ledger: bool = False
    features_dir: str = ""


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}

_CHOICES = {
    ("model", "text_pooling"): ("mean", "cls"),
    ("model", "head"): ("mlp", "linear", "attention"),
    ("model", "loss"): ("clip", "soft", "siglip"),
    ("model", "extra_loss"): (None, "max_violation"),
    ("data", "resize_method"): ("bicubic", "bilinear", "nearest", "area"),
    ("optim", "schedule"): ("cosine", "plateau"),
    ("run", "precision"): ("float32", "mixed_float16", "mixed_bfloat16"),
    ("run", "strategy"): ("auto", "one_device", "mirrored", "multi_worker"),
    ("run", "cache_features"): ("auto", "on", "off"),
}

_POSITIVE = {("data", "batch_size"), ("model", "image_size"), ("model", "sequence_length"),
             ("model", "embed_dim"), ("optim", "split_loss_accum"), ("model", "head_layers"),
             ("run", "keep_checkpoints"), ("data", "synthetic_images"),
             ("data", "cached_views")}
_NON_NEGATIVE = {("optim", "epochs"), ("optim", "max_steps"), ("optim", "warmup_steps"),
                 ("optim", "early_stopping"), ("run", "checkpoint_every"), ("run", "val_subset"),
                 ("optim", "weight_decay"), ("optim", "clipnorm"), ("model", "extra_loss_weight"),
                 ("data", "lowres_size"), ("optim", "micro_batch")}

# Keys that were removed, with what to use instead.
_RETIRED = {"optim.grad_accum": (
    "optim.grad_accum is gone: use optim.micro_batch=M (gradient caching: the exact gradient "
    "of the full-batch loss, B/M micro-batches) or optim.split_loss_accum=N (the old "
    "behaviour: a loss per micro-batch of B/N, trains like batch B/N)")}


def model_defaults() -> dict:
    """Every model key with its default (a fresh dict): what `build_model` fills in."""
    return dataclasses.asdict(ModelConfig())


def _parse_value(text: str) -> Any:
    """`--set` values are JSON when they parse as JSON (numbers, true, null), else strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _check_trainable(where: str, value: Any) -> None:
    if value in ("all", "none"):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}={value!r}: use \"all\", \"none\" or a number of top "
                          "blocks/layers to train (an integer >= 0)")


@dataclasses.dataclass
class Config:
    """The whole training configuration. Build with `from_sources`; `to_dict` for JSON."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, *, origin: str = "config") -> "Config":
        """Defaults updated by a nested dict; unknown sections or keys raise `ConfigError`."""
        cfg = cls()
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: expected a JSON object with sections "
                              f"{sorted(_SECTIONS)}")
        for section, body in values.items():
            if section not in _SECTIONS:
                raise ConfigError(f"{origin}: unknown section {section!r}; sections are "
                                  f"{sorted(_SECTIONS)}")
            if not isinstance(body, dict):
                raise ConfigError(f"{origin}: section {section!r} must be a JSON object")
            for key, value in body.items():
                cfg.set(f"{section}.{key}", value, origin=origin)
        cfg.validate()
        return cfg

    @classmethod
    def from_sources(cls, config_file: str | None = None, overrides=()) -> "Config":
        """Defaults, then a JSON file, then `section.key=value` overrides, validated."""
        values: dict = {}
        if config_file:
            try:
                with open(config_file, encoding="utf-8") as fh:
                    values = json.load(fh)
            except OSError as exc:
                raise ConfigError(f"--config {config_file}: cannot read ({exc.strerror})") from exc
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--config {config_file}: not valid JSON ({exc})") from exc
        cfg = cls.from_dict(values, origin=config_file or "config")
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected section.key=value, "
                                  "e.g. --set optim.lr=1e-4")
            key, text = item.split("=", 1)
            cfg.set(key.strip(), _parse_value(text), origin="--set")
        cfg.validate()
        return cfg

    def set(self, dotted: str, value: Any, *, origin: str = "--set") -> None:
        """Set `section.key`; the value is converted to the default's type where sensible."""
        section, _, key = dotted.partition(".")
        if dotted in _RETIRED:
            raise ConfigError(f"{origin}: {_RETIRED[dotted]}")
        if section not in _SECTIONS or not key:
            raise ConfigError(f"{origin}: unknown key {dotted!r}; keys look like "
                              f"section.key with section in {sorted(_SECTIONS)}")
        body = getattr(self, section)
        fields = {f.name: f for f in dataclasses.fields(body)}
        if key not in fields:
            raise ConfigError(f"{origin}: unknown key {dotted!r}; {section} keys are "
                              f"{sorted(fields)}")
        default = getattr(type(body)(), key)
        setattr(body, key, _coerce(dotted, value, default, origin))

    def validate(self) -> None:
        """Range and choice checks; raises `ConfigError` naming the key and the bad value."""
        for (section, key), choices in _CHOICES.items():
            value = getattr(getattr(self, section), key)
            if value not in choices:
                raise ConfigError(f"{section}.{key}={value!r}: choose one of "
                                  f"{[c for c in choices]}")
        for section, key in _POSITIVE:
            value = getattr(getattr(self, section), key)
            if value <= 0:
                raise ConfigError(f"{section}.{key}={value!r}: must be > 0")
        for section, key in _NON_NEGATIVE:
            value = getattr(getattr(self, section), key)
            if value < 0:
                raise ConfigError(f"{section}.{key}={value!r}: must be >= 0")
        if not self.optim.lr > 0:
            raise ConfigError(f"optim.lr={self.optim.lr!r}: must be > 0")
        if self.optim.epochs == 0 and self.optim.max_steps == 0:
            raise ConfigError("optim.epochs=0 and optim.max_steps=0: nothing to train")
        _check_trainable("model.image_trainable", self.model.image_trainable)
        _check_trainable("model.text_trainable", self.model.text_trainable)
        if self.data.lowres_size and not 8 <= self.data.lowres_size < self.model.image_size:
            raise ConfigError(f"data.lowres_size={self.data.lowres_size}: use 0 (off) or a size "
                              f"from 8 to model.image_size-1 ({self.model.image_size - 1})")
        if self.data.lowres_size and self.data.cached_views < 2:
            raise ConfigError(f"data.lowres_size={self.data.lowres_size} renders cached views "
                              f"1..; it needs data.cached_views >= 2 (got "
                              f"{self.data.cached_views})")
        if self.data.batch_size % self.optim.split_loss_accum:
            raise ConfigError(f"data.batch_size={self.data.batch_size} is not divisible by "
                              f"optim.split_loss_accum={self.optim.split_loss_accum}")
        if self.optim.micro_batch and self.data.batch_size % self.optim.micro_batch:
            raise ConfigError(f"optim.micro_batch={self.optim.micro_batch} does not divide "
                              f"data.batch_size={self.data.batch_size}")
        if self.optim.micro_batch and self.optim.split_loss_accum > 1:
            raise ConfigError("optim.micro_batch and optim.split_loss_accum > 1 exclude each "
                              "other: micro_batch keeps the full-batch loss, split_loss_accum "
                              "splits it; set one")


def _coerce(dotted: str, value: Any, default: Any, origin: str) -> Any:
    if default is None or dotted.endswith("_trainable"):
        return value
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{origin}: {dotted}={value!r} is not a boolean (true/false)")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{origin}: {dotted}={value!r} is not an integer")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{origin}: {dotted}={value!r} is not a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            value = json.dumps(value) if not isinstance(value, (int, float)) else str(value)
        return value
    return value
