"""MLC-D: MLC with the dynamic barrier of BOME (Nguyen and Ta 2026, Algorithm 1; Liu et al. 2022),
as the authors' `step_mlcbome` runs it. State: none per sample; meta model g_a (meta_label.py).

Value-function form: min_w F(w) s.t. Q(w, a) = G(w, a) - G(w_k, a) <= 0. Per step
(meta_label.barrier_direction with rho = None, xi = 1):
  1. from w run k = 5 steps of the main optimiser on G(., a) over the noisy batch -> w_k;
     w itself is left where it was (the authors restore it);
  2. grad Q = grad G(w, a) - grad G(w_k, a) over (w, a), both terms (`w1_grad: full`; "bome"
     keeps only grad G(w, a));
  3. beta = max(delta - <grad_w F, grad_w Q> / (||grad Q||^2 + 1e-8), 0), delta = 0.5 (Eq. 7;
     grad_a F = 0 since F is plain CE on the clean batch);
  4. w <- SGD step along grad_w F + beta grad_w Q;  a <- Adam step along beta grad_a Q.
The trainer hands one noisy batch per step, so the k inner steps all use it. `clean_in_lower` (off
by default, as for EBOMLC) mixes half of the clean batch into G; step_mlcbome accepts one. The main model learns
from the noisy data only through beta grad_w Q, and g only through beta grad_a Q: the paper
reports a collapse to about 67 % on CIFAR-10 at every noise level, so a correct MLC-D is poor.
Main-model passes per step: k + 2 forwards, k + 2 backwards (k + 1 with w1_grad=bome).
"""

from __future__ import annotations

from pydantic import Field

from training.methods.meta_label import BarrierConfig, BarrierForm, BarrierMethod


class MLCDConfig(BarrierConfig):
    inner_steps: int = Field(5, ge=1)  # k (paper and authors' code: 5)
    delta: float = Field(0.5, gt=0)  # authors' step_mlcbome


class MLCD(BarrierMethod):
    name = "mlc_d"
    Config = MLCDConfig

    def _form(self) -> BarrierForm:
        return BarrierForm(rho=None, xi=1.0)
