"""MLC-D: MLC with the dynamic barrier of BOME (Nguyen and Ta 2026, Algorithm 1; Liu et al. 2022).
State: none per sample; meta model g_a (training/methods/meta_label.py).

Value-function form: min_w F(w) s.t. Q(w, a) = G(w, a) - G(w_hat, a) <= 0, where w_hat comes from
k = 5 SGD steps on G(., a) from w. Per step (meta_label.barrier_direction with rho = None, xi = 1):
    beta = max(delta - <grad_w F, grad_w Q> / ||grad Q||^2, 0)          (Eq. 7; grad_a F = 0)
    w <- w - lr_w (grad_w F + beta grad_w Q),   a <- a - lr_a beta grad_a Q    (Adam on a)
The trainer hands one noisy batch per step, so the k inner steps all use it (Q then measures how
far G on that batch sits above its k-step value). The paper reports that this collapses to about
67 % on CIFAR-10 at every noise level: a correct MLC-D is expected to be poor.
Main-model passes per step: k + 2 forwards, k + 1 backwards.
"""

from __future__ import annotations

from pydantic import Field

from training.methods.meta_label import BarrierConfig, BarrierMethod


class MLCDConfig(BarrierConfig):
    inner_steps: int = Field(5, ge=1)  # k (paper: 5)
    barrier_eps: float = Field(1e-12, ge=0)  # guard against 0/0 only; Algorithm 1 has none


class MLCD(BarrierMethod):
    name = "mlc_d"
    Config = MLCDConfig

    def _rho_xi(self) -> tuple[float | None, float]:
        return None, 1.0
