"""MLC, Meta Label Correction (Zheng et al., AAAI 2021), the one-step look-ahead baseline of EBOMLC
(Nguyen and Ta 2026, Sec. III). State: none per sample; meta model g_a (training/methods/meta_label.py).

Per step, on a noisy batch (x', y~') and a clean batch (x_c, y_c):
  1. G(w, a) = soft-CE(f_w(x'), g_a(h(x'), y~')) and gs = grad_w G, kept in the graph;
  2. w' = w - lr (gs + wd w), the shared differentiable look-ahead (lookahead.py: plain SGD at the
     main optimiser's current lr and weight decay, no momentum);
  3. meta loss F(w') = CE(f_{w'}(x_c), y_c), differentiated back to a through w' (second order);
  4. Adam step on a with that gradient; SGD step on w with gs (at the a before the update), as the
     official code does. The Hessian-identity k-step accumulation of the official code is left out
     (the spec accepts a plain one-step unroll).

lookahead_with_grads() also returns gs, so the SGD step reuses it: no second backward.

Several processes: each process looks ahead with its own batch and the per-process meta and main
gradients are averaged (accelerator.reduce). That is the mean of per-process hypergradients, not
the hypergradient of the all-process batch (which would need a differentiable all-reduce inside the
look-ahead); a warning says so once. Main-model passes per step: 2 forwards (noisy at w, clean at
w'), 1 backward with graph and 1 double backward through it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.methods.base import StepOutput
from training.methods.lookahead import current_lr_wd, forward_with, lookahead_with_grads
from training.methods.meta_label import (MetaLabelConfig, MetaLabelMethod, at_least_float32, flat, soft_cross_entropy,
                                         trainable)

log = logging.getLogger(__name__)


class MLCConfig(MetaLabelConfig):
    pass


@dataclass
class MetaGradients:
    w: torch.Tensor  # (n_w,) flat float32 grad_w G(w, a): the main model's SGD gradient
    a: torch.Tensor  # (n_a,) flat float32 d F(w'(a)) / d a: the meta model's gradient
    upper: torch.Tensor  # scalar F(w') on the clean batch
    lower: torch.Tensor  # scalar G(w, a) on the noisy batch
    logits: torch.Tensor  # (B, C) main-model logits on the noisy batch, detached
    corrected: torch.Tensor  # (B, C) g's corrected-label distribution, detached


def mlc_gradients(model: nn.Module, meta: nn.Module, x: torch.Tensor, y: torch.Tensor, x_clean: torch.Tensor,
                  y_clean: torch.Tensor, *, lr: float, weight_decay: float, autocast=contextlib.nullcontext,
                  scale: float = 1.0) -> MetaGradients:
    """Main and meta gradients of one MLC step (nothing is updated). x, y noisy batch and given
    labels; x_clean, y_clean a clean batch; lr, weight_decay those of the look-ahead step."""
    with autocast():
        feats = model.features(x)  # (B, F)
        logits = model.fc(feats)  # (B, C)
        meta_logits = meta(feats.detach(), y)  # (B, C)
    corrected = F.softmax(at_least_float32(meta_logits), dim=1)
    lower = soft_cross_entropy(logits, corrected)
    # Under fp16 the loss is scaled by `scale`; lr / scale and wd * scale keep w' unchanged.
    ahead, grads = lookahead_with_grads(model, lower * scale, lr / scale, weight_decay * scale)  # w' with graph to a
    grad_w = flat(g.detach() / scale for g in grads)  # grad_w G(w, a): the SGD step adds weight decay itself
    with autocast():
        logits_ahead = forward_with(model, ahead, x_clean)  # (Bc, C) f_{w'}(x_c)
    upper = F.cross_entropy(at_least_float32(logits_ahead), y_clean)
    grad_a = flat(torch.autograd.grad(upper * scale, trainable(meta))) / scale  # through w', second order
    return MetaGradients(w=grad_w, a=grad_a, upper=upper.detach(), lower=lower.detach(), logits=logits.detach(),
                         corrected=corrected.detach())


class MLC(MetaLabelMethod):
    name = "mlc"
    Config = MLCConfig

    def train_step(self, batch, labels, models, optimizers, accelerator, epoch) -> StepOutput:
        model, meta, scale = self._setup(models, accelerator)
        if accelerator.num_processes > 1 and not getattr(self, "_warned_ddp", False):
            log.warning("mlc with %d processes: each process looks ahead on its own batch and the per-process "
                        "meta gradients are averaged (not the hypergradient of the joint batch)",
                        accelerator.num_processes)
            self._warned_ddp = True
        clean, clean_labels = self._clean_batch()
        lr, wd = current_lr_wd(optimizers["model"])
        g = mlc_gradients(model, meta, batch.images, labels, clean.images, clean_labels, lr=lr, weight_decay=wd,
                          autocast=accelerator.autocast, scale=scale)
        reduce = self._reduce_fn(accelerator)
        self._apply(model, meta, reduce(g.w), reduce(g.a), optimizers)
        self._record(batch, labels, g.corrected, g.upper, g.lower)
        return StepOutput(terms={"loss": g.lower, "upper": g.upper}, logits=g.logits)
