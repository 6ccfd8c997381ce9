"""EBOMLC, Efficient Bilevel Optimization for Meta Label Correction (Nguyen and Ta 2026, Algorithm 2).
State: none per sample; meta model g_a (training/methods/meta_label.py).

Three changes to MLC-D (training/methods/mlc_d.py), all in meta_label.barrier_direction:
  1. one inner step: w1 = w - lr_w grad_w G(w, a), Q = G(w, a) - G(w1, a) on the same noisy batch
     and the same g output (Eq. 8);
  2. mixture upper loss F(w, a) = mean -log(rho softmax(f_w(x_c))[y_c] + (1 - rho) g_a(h(x_c), y_c)[y_c])
     (Eq. 9, rho = 0.2), so the clean batch also trains g;
  3. alignment-aware barrier phi = delta ||grad Q||^2 + <grad_a F, grad_a Q> (Eq. 10), giving
     beta = max(delta - <grad_w F, grad_w Q> / (||grad Q||^2 + 1e-4), 0) (Eq. 11) and the direction
     grad F + xi beta grad Q over (w, a) (Eq. 12-14, xi = 0.5), written into the main model's .grad
     (SGD step) and the meta model's .grad (Adam step).
The paper does not say how the gradient passes through w1; `w1_grad` picks the reading ("bome",
default: w1 detached; "full": grad_w Q also subtracts grad_w G at w1). Results record it in config.
Main-model passes per step: 3 forwards (noisy at w, noisy at w1, clean at w), 2 backwards.
"""

from __future__ import annotations

from pydantic import Field

from training.methods.meta_label import BarrierConfig, BarrierMethod


class EBOMLCConfig(BarrierConfig):
    rho: float = Field(0.2, gt=0, le=1)  # weight of the main model in the mixture upper loss
    xi: float = Field(0.5, gt=0)  # scale of the barrier term (paper: 1 diverges after epoch 80)


class EBOMLC(BarrierMethod):
    name = "ebomlc"
    Config = EBOMLCConfig

    def _rho_xi(self) -> tuple[float | None, float]:
        return self.config.rho, self.config.xi
