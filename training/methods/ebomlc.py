"""EBOMLC, Efficient Bilevel Optimization for Meta Label Correction (Nguyen and Ta 2026, Algorithm 2),
as the authors' `step_ebomlc` runs it. State: none per sample; meta model g_a (meta_label.py).

Per step, on a noisy batch (x', y~') and a clean batch (x_c, y_c), all in meta_label.barrier_direction:
  1. one inner step w1 = w - lr SGD-direction(grad_w G(w, a)) (the main optimiser's step, momentum
     buffer read), Q = G(w, a) - G(w1, a) on the same noisy batch and the same g output (Eq. 8);
  2. upper loss F(w, a) = mean CE(rho f_w(x_c) + (1 - rho) softmax(g_a(h(x_c), y_c)), y_c), rho = 0.2
     (`upper_mix: logits`, the authors' form; "probs": -log(rho p_f[y] + (1 - rho) p_g[y]), the
     first reading, where g copying the label is a deep permanent minimum);
  3. grad Q = grad G(w, a) - grad G(w1, a) over (w, a), both terms (`w1_grad: full`; "bome": grad_w Q
     = grad_w G(w, a) only);
  4. beta = max(delta - <grad_w F, grad_w Q> / (||grad Q||^2 + 1e-8), 0) (Eq. 10-11, delta 0.25),
     direction grad F + xi beta grad Q over (w, a) (Eq. 12-14, xi = 0.5): SGD on w, Adam on a;
  5. `main_lower_step: true` (the authors' code): the main model first moves to w1, i.e. keeps the
     full SGD step on the lower loss, and takes the step of 4 from there, so it learns from the
     noisy batch (through g's labels) at the full learning rate every step. false: Algorithm 2 as
     written, w stays put and the noisy data reaches it only through xi beta grad_w Q.
  `clean_in_lower` (default off; whether the authors' runs pass a clean half to `step_ebomlc` is not
  confirmed) mixes half of the clean batch into G, as MLC does.

The F part of the main update is grad_w F (Eq. 12). The authors' code instead uses its `deltaonly`
vector -lr (mu buf + grad_w F + wd w), in the barrier's inner product and in the gradient handed to
SGD. Not copied: fed to SGD it makes the F part an ascent on F of size lr^2 (0.01 at lr 0.1) that
also cancels part of the momentum, and it flips the sign of <grad_w F, grad_w Q> in beta, so the
barrier grows when F and Q agree, the opposite of Eq. 11 and of the paper's stated rationale. With
main_lower_step the main model's learning is carried by the w1 step either way; the paper's
equations are what we can defend. (For datasets other than CIFAR-10 the authors' code passes
grad_w Q through the same transform; also not copied.)
Main-model passes per step: 3 forwards (noisy at w, noisy at w1, clean at w), 3 backwards (2 with
w1_grad=bome); clean_in_lower adds 2 forwards of the clean half (at w and w1).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from training.methods.meta_label import BarrierConfig, BarrierForm, BarrierMethod


class EBOMLCConfig(BarrierConfig):
    rho: float = Field(0.2, gt=0, le=1)  # weight of the main model in the mixture upper loss
    xi: float = Field(0.5, gt=0)  # scale of the barrier term (paper: 1 diverges after epoch 80)
    upper_mix: Literal["logits", "probs"] = "logits"  # mix f's logits with g's probabilities, or "probs"
    main_lower_step: bool = True  # the main model keeps the SGD step to w1 (authors' code); false: Alg. 2


class EBOMLC(BarrierMethod):
    name = "ebomlc"
    Config = EBOMLCConfig

    def _form(self) -> BarrierForm:
        cfg = self.config
        return BarrierForm(rho=cfg.rho, xi=cfg.xi, upper_mix=cfg.upper_mix, main_lower_step=cfg.main_lower_step)
