"""Training configuration: typed sections with documented defaults, JSON files and `--set` overrides.

A configuration is four sections (`model`, `data`, `optim`, `run`). Every key has a default
and a one-line description here (`_key`); a JSON file and `--set section.key=value` overrides
replace defaults, an unknown key is an error. Configs are data: nothing is ever executed.

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
import math
from typing import Any

from dualencoder.config_values import ConfigError, check_trainable as _check_trainable
from dualencoder.config_values import coerce as _coerce, outside as _outside
from dualencoder.config_values import parse_value as _parse_value
from dualencoder.losses import EXTRA_LOSSES, MAIN_LOSSES

# The settings of run.tower_precision (dualencoder.model.tower_precision reads them here).
TOWER_PRECISIONS = ("auto", "float32", "bfloat16")

# Keys whose change makes a workdir's checkpoints unusable (resume refuses them).
# Everything else (epochs, patience, eval settings, ...) may change between runs.
ARCHITECTURE_KEYS = ("model",)


def _key(default, help):
    """A config key: its default and its one-line description (`describe`, --help-config)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class ModelConfig:
    """The dual encoder; the one table of model defaults (`model_defaults()`, used by
    `dualencoder.model.dual_encoder.build_model`)."""

    image_tower: str = _key("xception", "a keras.applications CNN name (xception, "
                            "efficientnetb0..b7, resnet50, ...) or \"tiny\" (tests)")
    image_weights: str = _key("imagenet", "\"imagenet\" (Keras download), \"none\" (random "
                              "init) or a local weights file")
    image_size: int = _key(299, "square input size in pixels (at least what the image tower "
                           "accepts: xception 71, inception 75, other CNNs 32, tiny 8)")
    image_trainable: Any = _key("all", "\"all\", \"none\" or an int N: train the top-N blocks "
                                "of the image tower")
    text_tower: str = _key("all-minilm-l6-v2", "\"all-minilm-l6-v2\" (the installed MiniLM "
                           "package, also \"\"), a keras-hub preset name, a local Hugging Face "
                           "/ keras-hub folder, \"tiny\", or (in saved models) a dict of "
                           "TextTower arguments")
    text_pooling: str = _key("mean", "\"mean\" or \"cls\" token pooling (ignored with "
                             "head=attention)")
    text_trainable: Any = _key("all", "like image_trainable, in transformer layers")
    sequence_length: int = _key(64, "tokens per caption")
    embed_dim: int = _key(256, "size of the shared embedding space")
    head: str = _key("mlp", "\"mlp\", \"linear\" or \"attention\" (learned query pooling over "
                     "spatial/token outputs, then a linear projection)")
    head_layers: int = _key(1, "hidden layers of the mlp head")
    head_dropout: float = _key(0.1, "dropout in the heads, 0 <= p < 1")
    attention_heads: int = _key(8, "heads of the attention head's query pooling")
    loss: str = _key("clip", "contrastive loss: " + " | ".join(MAIN_LOSSES))
    extra_loss: Any = _key(None, "null or " + " | ".join(EXTRA_LOSSES) + " (added to loss, "
                           "weighted by extra_loss_weight)")
    extra_loss_weight: float = _key(0.0, "weight of extra_loss")
    init_logit_scale: float = _key(1 / 0.07, "initial logit scale (1 / temperature)")
    max_logit_scale: float = _key(100.0, "the logit scale is clamped to this")
    logit_scale_lr_mult: float = _key(1.0, "learning-rate multiplier of the temperature (the "
                                      "variable is log_logit_scale / mult, so a step moves the "
                                      "log scale mult times further; 1 = plain; short runs: "
                                      "10-50)")
    init_logit_bias: float = _key(-10.0, "SigLIP's initial logit bias (the paper uses -10)")


@dataclasses.dataclass
class DataConfig:
    """Input records and pipeline."""

    records: str = _key("", "training records dir (\"\" = the synthetic default, built into "
                        "cache_dir)")
    val_records: str = _key("", "validation records dir (\"\" = none; with the synthetic "
                            "default, its val split)")
    batch_size: int = _key(64, "global batch in image-caption pairs (at most the training "
                           "pairs per epoch)")
    augment: bool = _key(False, "random resized crop + flip of training images")
    all_captions: bool = _key(False, "every caption its own pair per epoch (else one random "
                              "caption per image)")
    resize_method: str = _key("bicubic", "bicubic, bilinear, nearest or area")
    skip_bad: bool = _key(False, "drop corrupt records instead of stopping")
    verify: bool = _key(True, "check shard checksums before training")
    cache_dir: str = _key(".cache/dualencoder", "where the synthetic default records are built")
    synthetic_images: int = _key(4000, "training-set size of the synthetic default")
    cached_views: int = _key(1, "with both towers locked (cached features), image views cached "
                             "per training image: view 0 the plain image, views 1.. fixed "
                             "random resized crops + flips; epoch e uses view (index + e + "
                             "seed) mod N (1: no augmentation)")
    lowres_size: int = _key(0, "with cached_views >= 2, views 1.. are the image shrunk to this "
                            "many px and enlarged back (as small images are at evaluation); "
                            "0: full-resolution crops + flips")


@dataclasses.dataclass
class OptimConfig:
    """Optimiser and schedule."""

    lr: float = _key(1e-3, "AdamW peak learning rate, 0 < lr <= 1")
    weight_decay: float = _key(0.1, "AdamW decoupled weight decay, 0 <= wd <= 1")
    schedule: str = _key("cosine", "\"cosine\" (linear warmup over warmup_steps, then cosine "
                         "to 0 over the run) or \"plateau\" (ReduceLROnPlateau on val loss)")
    warmup_steps: int = _key(100, "linear warmup steps of the cosine schedule")
    plateau_factor: float = _key(0.2, "plateau schedule: multiply the lr by this, 0 < f < 1")
    plateau_patience: int = _key(3, "plateau schedule: epochs without improvement before a cut")
    epochs: int = _key(10, "passes over the training records")
    max_steps: int = _key(0, "stop after this many steps (0 = run all epochs)")
    early_stopping: int = _key(5, "epochs without val improvement before stopping (0 = off)")
    micro_batch: int = _key(0, "gradient caching (0 = off): the loss stays over the whole "
                            "batch, the towers run M pairs at a time (the exact gradient at "
                            "the memory of batch M, ~1 extra forward pass); M divides the "
                            "per-replica batch")
    split_loss_accum: int = _key(1, "N micro-batches per step, each with its own loss, "
                                 "gradients summed (trains like batch B/N; 1 = off)")
    clipnorm: float = _key(0.0, "global gradient-norm clip (0 = off)")
    tower_lr_mult: float = _key(1.0, "learning-rate multiplier of the towers' trained layers "
                                "(LiT tunes a pretrained text tower at e.g. 0.05 of the heads' "
                                "rate)")
    tower_weight_decay: Any = _key(None, "weight decay of the towers' trained layers (null: "
                                   "optim.weight_decay)")


@dataclasses.dataclass
class RunConfig:
    """How the run executes."""

    seed: int = _key(0, "seed of data order, augmentation and initialisation")
    precision: str = _key("float32", "training precision: float32, mixed_float16, "
                          "mixed_bfloat16, or auto (mixed_bfloat16 where the device computes "
                          "bfloat16 natively, else float32)")
    tower_precision: str = _key("float32", "precision of frozen-tower passes (feature caches, "
                                "boundary states): auto (bfloat16 where the device computes "
                                "it natively), float32 or bfloat16")
    jit_compile: bool = _key(False, "compile the step with XLA")
    strategy: str = _key("auto", "auto, one_device, mirrored or multi_worker (reads TF_CONFIG)")
    checkpoint_every: int = _key(200, "steps between mid-epoch checkpoints (0 = epoch ends "
                                 "only)")
    keep_checkpoints: int = _key(2, "how many checkpoints to keep")
    cache_features: str = _key("auto", "cache tower features: \"auto\" (when both towers are "
                               "locked and there is no augmentation), \"on\" or \"off\"")
    val_subset: int = _key(1000, "validation images used per epoch (0 = all)")
    eval_after: bool = _key(True, "run the held-out evaluation after training (synthetic "
                            "default)")
    ledger: bool = _key(False, "append each step's image ids and loss to WORKDIR/ledger.jsonl "
                        "(audits resume)")
    features_dir: str = _key("", "where cached tower features live (\"\" = WORKDIR/features); "
                             "runs of an ablation may share one")


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}

# The projection heads model/heads.py builds (it reads this tuple).
HEAD_KINDS = ("mlp", "linear", "attention")

_CHOICES = {
    ("model", "text_pooling"): ("mean", "cls"),
    ("model", "head"): HEAD_KINDS,
    ("model", "loss"): MAIN_LOSSES,
    ("model", "extra_loss"): (None, *EXTRA_LOSSES),
    ("data", "resize_method"): ("bicubic", "bilinear", "nearest", "area"),
    ("optim", "schedule"): ("cosine", "plateau"),
    ("run", "precision"): ("float32", "mixed_float16", "mixed_bfloat16", "auto"),
    ("run", "tower_precision"): TOWER_PRECISIONS,
    ("run", "strategy"): ("auto", "one_device", "mirrored", "multi_worker"),
    ("run", "cache_features"): ("auto", "on", "off"),
}

_POSITIVE = {("data", "batch_size"), ("model", "image_size"), ("model", "sequence_length"),
             ("model", "embed_dim"), ("optim", "split_loss_accum"), ("model", "head_layers"),
             ("run", "keep_checkpoints"), ("data", "synthetic_images"), ("data", "cached_views")}
_NON_NEGATIVE = {("optim", "epochs"), ("optim", "max_steps"), ("optim", "warmup_steps"),
                 ("optim", "early_stopping"), ("run", "checkpoint_every"), ("run", "val_subset"),
                 ("data", "lowres_size"), ("optim", "micro_batch")}

# Numeric ranges beyond the signs above, as intervals ("(0, 1]": 0 < x <= 1). Every float
# must also be finite, and every integer at most _MAX_INT.
_BOUNDS = {
    ("optim", "lr"): "(0, 1]", ("optim", "weight_decay"): "[0, 1]",
    ("optim", "plateau_factor"): "(0, 1)", ("optim", "clipnorm"): "[0, 1e6]",
    ("model", "head_dropout"): "[0, 1)", ("model", "extra_loss_weight"): "[0, 1000]",
    ("model", "init_logit_scale"): "(0, 1e4]", ("model", "max_logit_scale"): "(0, 1e4]",
    ("model", "logit_scale_lr_mult"): "(0, 1000]", ("optim", "tower_lr_mult"): "(0, 1000]",
    ("optim", "tower_weight_decay"): "[0, 1]", ("model", "init_logit_bias"): "[-1000, 1000]",
    ("model", "image_size"): "[1, 4096]", ("model", "sequence_length"): "[1, 4096]",
    ("model", "embed_dim"): "[1, 65536]",
}
_MAX_INT = 2**31 - 1


def min_image_size(image_tower: str) -> int:
    """The smallest `model.image_size` the image tower `image_tower` accepts: its row in the
    one table of image towers (`dualencoder.image_towers`, registered towers included;
    pure Python, no TensorFlow), 32 for a name without a row."""
    from dualencoder.image_towers import min_image_size as table_minimum

    return table_minimum(image_tower)


# Keys that were removed, with what to use instead.
_RETIRED = {"optim.grad_accum": (
    "optim.grad_accum is gone: use optim.micro_batch=M (gradient caching: the exact gradient "
    "of the full-batch loss, B/M micro-batches) or optim.split_loss_accum=N (the old "
    "behaviour: a loss per micro-batch of B/N, trains like batch B/N)")}


def model_defaults() -> dict:
    """Every model key with its default (a fresh dict): what `build_model` fills in."""
    return dataclasses.asdict(ModelConfig())


def read_json_object(path: str, flag: str = "--config") -> dict:
    """The JSON object in file `path`, else a `ConfigError` naming `flag`, `path`, the cause."""
    try:
        with open(path, encoding="utf-8") as fh:
            values = json.load(fh)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{flag} {path}: not a JSON text file (byte {exc.start} is not "
                          "UTF-8)") from exc
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{flag} {path}: not valid JSON ({exc})") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{flag} {path}: expected a JSON object of sections "
                          f"{sorted(_SECTIONS)}, got a JSON {type(values).__name__}")
    return values


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
        cfg.update(values, origin=origin)
        cfg.validate()
        return cfg

    def update(self, values: dict, *, origin: str = "config") -> None:
        """Set every `{section: {key: value}}` of `values` (not validated)."""
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: expected a JSON object with sections "
                              f"{sorted(_SECTIONS)}, got {type(values).__name__}")
        for section, body in values.items():
            if section not in _SECTIONS:
                raise ConfigError(f"{origin}: unknown section {section!r}; sections are "
                                  f"{sorted(_SECTIONS)}")
            if not isinstance(body, dict):
                raise ConfigError(f"{origin}: section {section!r} must be a JSON object")
            for key, value in body.items():
                self.set(f"{section}.{key}", value, origin=origin)

    @classmethod
    def from_sources(cls, config_file: str | None = None, overrides=(), *,
                     base: str | None = None) -> "Config":
        """Defaults < JSON file `base` (a saved config.json) < `config_file` < overrides."""
        cfg = cls()
        for path, flag in ((base, "saved config"), (config_file, "--config")):
            if path:
                cfg.update(read_json_object(path, flag), origin=f"{flag} {path}")
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
        self._check_numbers()
        low = min_image_size(self.model.image_tower)
        if self.model.image_size < low:
            raise ConfigError(f"model.image_size={self.model.image_size}: "
                              f"{self.model.image_tower} needs at least {low} px (use "
                              f"--set model.image_size={max(low, 64)} or more)")
        if self.model.init_logit_scale > self.model.max_logit_scale:
            raise ConfigError(f"model.init_logit_scale={self.model.init_logit_scale!r} is above "
                              f"model.max_logit_scale={self.model.max_logit_scale!r}")
        if self.optim.epochs == 0 and self.optim.max_steps == 0:
            raise ConfigError("optim.epochs=0 and optim.max_steps=0: nothing to train")
        _check_trainable("model.image_trainable", self.model.image_trainable)
        _check_trainable("model.text_trainable", self.model.text_trainable)
        wd = self.optim.tower_weight_decay
        if wd is not None and (isinstance(wd, bool) or not isinstance(wd, (int, float))):
            raise ConfigError(f"optim.tower_weight_decay={wd!r}: null or a number in [0, 1]")
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

    def _check_numbers(self) -> None:
        """Finite floats, integers below _MAX_INT, and the `_BOUNDS` ranges."""
        for section in _SECTIONS:
            for key, value in vars(getattr(self, section)).items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                where = f"{section}.{key}={value!r}"
                if isinstance(value, float) and not math.isfinite(value):
                    raise ConfigError(f"{where}: must be a finite number")
                if isinstance(value, int) and abs(value) > _MAX_INT:
                    raise ConfigError(f"{section}.{key}={value:.3g}: too large (at most "
                                      f"{_MAX_INT})")
                problem = _outside(value, _BOUNDS.get((section, key), "[-inf, inf]"))
                if problem:
                    raise ConfigError(f"{where}: {problem}")
