"""MLC-D: MLC with the dynamic barrier of BOME (Nguyen and Ta 2026, Algorithm 1; Liu et al. 2022),
as the authors' `step_mlcbome` runs it. State: none per sample; meta model g_a (common/meta_label.py).

Value-function form: min_w F(w) s.t. Q(w, a) = G(w, a) - G(w_k, a) <= 0. Per step, in
`mlc_d_direction` (common/meta_label.barrier_direction with plain CE as F and xi = 1):
  1. from w run k = 5 steps of the main optimiser on G(., a) over the noisy batch -> w_k;
     w itself is left where it was (the authors restore it);
  2. grad Q = grad G(w, a) - grad G(w_k, a) over (w, a), both terms (`w1_grad: full`; "bome"
     keeps only grad G(w, a));
  3. beta = max(delta - <grad_w F, grad_w Q> / (||grad Q||^2 + 1e-8), 0), delta = 0.5 (Eq. 7;
     grad_a F = 0 since F is plain CE on the clean batch);
  4. w <- SGD step along grad_w F + beta grad_w Q;  a <- Adam step along beta grad_a Q.
The trainer hands one noisy batch per step, so the k inner steps all use it. `clean_in_lower` (off
by default, as for EBOMLC) mixes half of the clean batch into G; step_mlcbome accepts one. The main
model learns from the noisy data only through beta grad_w Q, and g only through beta grad_a Q: the
paper reports a collapse to about 67 % on CIFAR-10 at every noise level, so a correct MLC-D is poor.
Main-model passes per step: k + 2 forwards, k + 2 backwards (k + 1 with w1_grad=bome).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from training.methods.common.meta_label import BarrierConfig, BarrierMethod, Direction, barrier_direction


class MLCDConfig(BarrierConfig):
    inner_steps: int = Field(5, ge=1)  # k (paper and authors' code: 5)
    delta: float = Field(0.5, gt=0)  # authors' step_mlcbome


def mlc_d_direction(model: nn.Module, meta: nn.Module, x: torch.Tensor, y: torch.Tensor, x_clean: torch.Tensor,
                    y_clean: torch.Tensor, *, config: MLCDConfig, **step) -> Direction:
    """Steps 1-3 above: barrier_direction with CE on the clean batch as F (grad_a F = 0) and xi = 1
    (step: inner, and optionally mix, autocast, reduce, scale)."""
    return barrier_direction(model, meta, x, y, x_clean, y_clean, config=config, xi=1.0, **step)


class MLCD(BarrierMethod):
    name = "mlc_d"
    Config = MLCDConfig

    def _direction(self, model: nn.Module, meta: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   x_clean: torch.Tensor, y_clean: torch.Tensor, **step) -> Direction:
        return mlc_d_direction(model, meta, x, y, x_clean, y_clean, config=self.config, **step)
