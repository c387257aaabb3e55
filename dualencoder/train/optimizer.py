"""The optimizer: AdamW, and AdamW with its own learning rate and weight decay for the
towers' trained layers.

Tuning a pretrained tower wants a smaller step and a lighter decay than heads trained from
scratch (LiT tunes the text tower at a fraction of the heads' rate): `optim.tower_lr_mult`
scales the scheduled learning rate of every tower variable, `optim.tower_weight_decay`
replaces the weight decay for them (decoupled, at the tower's rate).
"""

from __future__ import annotations

import keras


class TowerAdamW(keras.optimizers.AdamW):
    """AdamW whose tower variables (`set_tower_variables`) step at `tower_lr_mult` times the
    learning rate and decay with `tower_weight_decay` (None: the common weight decay)."""

    def __init__(self, *, tower_lr_mult: float = 1.0, tower_weight_decay=None, **kwargs):
        super().__init__(**kwargs)
        self.tower_lr_mult = float(tower_lr_mult)
        self.tower_weight_decay = (self.weight_decay if tower_weight_decay is None
                                   else float(tower_weight_decay))
        self._tower_keys = set()

    def set_tower_variables(self, variables) -> None:
        self._tower_keys = {self._var_key(v) for v in variables}

    def _is_tower(self, variable) -> bool:
        return self._var_key(variable) in self._tower_keys

    def _use_weight_decay(self, variable):
        # tower variables decay in update_step, at their own rate
        return not self._is_tower(variable) and super()._use_weight_decay(variable)

    def update_step(self, gradient, variable, learning_rate):
        if not self._is_tower(variable):
            return super().update_step(gradient, variable, learning_rate)
        lr = keras.ops.cast(learning_rate, variable.dtype) * self.tower_lr_mult
        if self.tower_weight_decay and super()._use_weight_decay(variable):
            self.assign_sub(variable, variable * keras.ops.cast(self.tower_weight_decay,
                                                                variable.dtype) * lr)
        return super().update_step(gradient, variable, lr)

    def get_config(self):
        return {**super().get_config(), "tower_lr_mult": self.tower_lr_mult,
                "tower_weight_decay": self.tower_weight_decay}
