"""Training: the loop, the step, checkpoints, the locked-tower feature cache, validation."""
