"""EBOMLC, Efficient Bilevel Optimization for Meta Label Correction (Nguyen and Ta 2026, Algorithm 2),
as the authors' `step_ebomlc` runs it. State: none per sample; meta model g_a (common/meta_label.py).

Per step, on a noisy batch (x', y~') and a clean batch (x_c, y_c), all in `ebomlc_direction`
(common/meta_label.barrier_direction with the upper loss below):
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

from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from training.methods.common.meta_label import (BarrierConfig, BarrierMethod, Direction, at_least_float32,
                                                barrier_direction)


class EBOMLCConfig(BarrierConfig):
    rho: float = Field(0.2, gt=0, le=1)  # weight of the main model in the mixture upper loss
    xi: float = Field(0.5, gt=0)  # scale of the barrier term (paper: 1 diverges after epoch 80)
    upper_mix: Literal["logits", "probs"] = "logits"  # mix f's logits with g's probabilities, or "probs"
    main_lower_step: bool = True  # the main model keeps the SGD step to w1 (authors' code); false: Alg. 2


def mixture_ce(main_logits: torch.Tensor, meta_logits: torch.Tensor, labels: torch.Tensor, rho: float) -> torch.Tensor:
    """EBOMLC's upper loss as the authors compute it: mean CE(rho f + (1 - rho) softmax(g), y), float32.

    The main model's logits are mixed with g's probabilities, so g adds at most 1 - rho to one
    logit: grad_w F is rho times the CE gradient at rho f (the paper's "proportional to rho"), and
    g copying the input label is a shallow gain that fades once f fits the clean batch. rho = 1
    gives plain cross-entropy (g in the graph with zero gradient)."""
    mixed = rho * at_least_float32(main_logits) + (1.0 - rho) * F.softmax(at_least_float32(meta_logits), dim=1)
    return F.cross_entropy(mixed, labels)


def mixture_nll(main_logits: torch.Tensor, meta_logits: torch.Tensor, labels: torch.Tensor, rho: float) -> torch.Tensor:
    """`upper_mix: probs`, the first reading of Eq. 9: mean -log(rho softmax(f)[y] + (1 - rho) softmax(g)[y]).
    Probabilities are mixed, then logged; done as a logsumexp of log-probabilities so it stays finite
    when either probability underflows. Here g copying the label is a deep, permanent minimum.
    rho = 1 gives plain cross-entropy exactly (log 0 = -inf adds nothing). rho in (0, 1]."""
    log_pf = F.log_softmax(at_least_float32(main_logits), dim=1).gather(1, labels[:, None]).squeeze(1)  # (B,)
    log_pg = F.log_softmax(at_least_float32(meta_logits), dim=1).gather(1, labels[:, None]).squeeze(1)  # (B,)
    weights = torch.log(torch.tensor([rho, 1.0 - rho], device=log_pf.device))
    return -torch.logsumexp(torch.stack([log_pf, log_pg], dim=1) + weights, dim=1).mean()


UPPER_MIX = {"logits": mixture_ce, "probs": mixture_nll}


def ebomlc_direction(model: nn.Module, meta: nn.Module, x: torch.Tensor, y: torch.Tensor, x_clean: torch.Tensor,
                     y_clean: torch.Tensor, *, config: EBOMLCConfig, **step) -> Direction:
    """Steps 1-4 above: barrier_direction with the mixture `config.upper_mix` at config.rho as F and the
    barrier scaled by config.xi (step: inner, and optionally mix, autocast, reduce, scale)."""
    return barrier_direction(model, meta, x, y, x_clean, y_clean, config=config, xi=config.xi,
                             upper_loss=partial(UPPER_MIX[config.upper_mix], rho=config.rho), **step)


class EBOMLC(BarrierMethod):
    name = "ebomlc"
    Config = EBOMLCConfig

    def _direction(self, model: nn.Module, meta: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   x_clean: torch.Tensor, y_clean: torch.Tensor, **step) -> Direction:
        return ebomlc_direction(model, meta, x, y, x_clean, y_clean, config=self.config, **step)

    def _start(self, d: Direction) -> dict[str, torch.Tensor] | None:
        """Step 5: with main_lower_step the main model first moves to w1."""
        return d.w_hat if self.config.main_lower_step else None
