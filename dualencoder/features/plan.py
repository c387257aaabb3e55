"""Which tower outputs a training run reads from the cache instead of running the tower.

Per tower, one of:

- "pooled": the tower is locked (`*_trainable=none`): its pooled output, computed once.
- "boundary": the top N layers/blocks train (`*_trainable=N`): the frozen part's output at
  the boundary (token states entering the first trained layer; the feature map entering the
  first trained block), computed once; every step runs only the trained part.
- None: the tower runs on every batch (`all`, augmented images, the attention head, or
  `run.cache_features=off`).

`run.cache_features=auto` caches wherever it applies; `on` also caches wherever it applies
and fails, naming the setting, where a tower it could have cached cannot be.
"""

from __future__ import annotations

import dataclasses

from dualencoder.config import Config, ConfigError


@dataclasses.dataclass(frozen=True)
class CachePlan:
    image: str | None = None
    text: str | None = None

    def __bool__(self) -> bool:
        return bool(self.image or self.text)

    @property
    def host_batches(self) -> bool:
        """Batches come from the caches alone (no image decoding)."""
        return self.image is not None

    def describe(self) -> str:
        parts = [f"{tower} {kind}" for tower, kind in (("image", self.image),
                                                       ("text", self.text)) if kind]
        return ", ".join(parts) or "none"


def _kind(trainable) -> str | None:
    if trainable == "none" or trainable == 0:
        return "pooled"
    return None if trainable == "all" else "boundary"


def plan_cache(cfg: Config) -> CachePlan:
    """The `CachePlan` of `cfg`; `ConfigError` for settings that cannot be served."""
    mode = cfg.run.cache_features
    image, text = _kind(cfg.model.image_trainable), _kind(cfg.model.text_trainable)
    plan = CachePlan()
    if mode == "off":
        plan = CachePlan()
    elif cfg.model.head == "attention":
        if mode == "on":
            raise ConfigError("run.cache_features=on with model.head=attention: the attention "
                              "head reads whole spatial/token maps, which are not cached; set "
                              "run.cache_features=off")
    else:
        if mode == "on" and image and cfg.data.augment:
            raise ConfigError("run.cache_features=on with data.augment=true: cached image "
                              "features are of the un-augmented images; set data.augment=false")
        if mode == "on" and not (image or text):
            raise ConfigError("run.cache_features=on with model.image_trainable=all and "
                              "model.text_trainable=all: nothing is frozen, so there is "
                              "nothing to cache; lock a tower (none) or its lower part (N)")
        plan = CachePlan(image=None if cfg.data.augment else image, text=text)
    if cfg.data.cached_views > 1 and (plan.image, plan.text) != ("pooled", "pooled"):
        raise ConfigError(f"data.cached_views={cfg.data.cached_views} caches augmented image "
                          "features: it needs both towers locked (model.image_trainable=none, "
                          "model.text_trainable=none), a pooled head (not attention), "
                          "data.augment=false and run.cache_features auto or on")
    return plan


def check_boundaries(plan: CachePlan, model, cfg: Config, *, log=print) -> CachePlan:
    """`plan` for a built model: an image tower that no single feature map cuts (a residual
    branch crosses the boundary) runs every step (`auto`, logged) or fails (`on`)."""
    if plan.image == "boundary" and model.image_tower.boundary is None:
        message = (f"model.image_trainable={cfg.model.image_trainable}: no single feature map "
                   f"of {cfg.model.image_tower} separates the trained blocks from the frozen "
                   "ones")
        if cfg.run.cache_features == "on":
            raise ConfigError(message + "; choose another N or set run.cache_features=auto")
        log(message + ": the image tower runs on every batch")
        return dataclasses.replace(plan, image=None)
    return plan
