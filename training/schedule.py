"""Learning-rate schedules as a per-step multiplier (used with torch's LambdaLR, stepped every batch)."""

from __future__ import annotations

import math

from training.config import OptimConfig


def lr_factor(step: int, steps_per_epoch: int, epochs: int, optim: OptimConfig) -> float:
    """Multiplier of optim.lr after `step` optimiser steps.

    Warm-up rises linearly from 0.1 to 1 over `warmup_epochs`; multistep multiplies by gamma at
    each milestone epoch; cosine decays from 1 to 0 over the whole run (after warm-up)."""
    epoch = step / steps_per_epoch  # fractional epochs done
    if epoch < optim.warmup_epochs:
        return 0.1 + 0.9 * epoch / optim.warmup_epochs
    if optim.schedule == "multistep":
        return optim.gamma ** sum(epoch >= m for m in optim.milestones)
    if optim.schedule == "cosine":
        span = max(epochs - optim.warmup_epochs, 1e-9)
        return 0.5 * (1.0 + math.cos(math.pi * min((epoch - optim.warmup_epochs) / span, 1.0)))
    return 1.0
