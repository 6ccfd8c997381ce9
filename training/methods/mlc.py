"""MLC, Meta Label Correction (Zheng et al., AAAI 2021), the one-step look-ahead baseline of EBOMLC
(Nguyen and Ta 2026, Sec. III), as the official `step_hmlc_K` with `hmlc_K_mix` runs it.
State: none per sample; meta model g_a (training/methods/common/meta_label.py).

Per step, on a noisy batch (x', y~') and a clean batch split in halves (x_c, y_c) and (x_c2, y_c2):
  1. L_s(w, a) = (B soft-CE(f_w(x'), g_a(h(x'), y~')) + B_c2 CE(f_w(x_c2), y_c2)) / (B + B_c2)
     (`clean_in_lower: true`, the official default; false: the noisy term alone, the whole clean
     batch then goes to the meta loss) and gs = grad_w L_s, kept in the graph;
  2. w' = w - lr SGD-direction(gs): the main optimiser's step (momentum buffer read, not updated;
     meta_label.InnerSGD), differentiable in a through gs;
  3. meta loss F(w') = CE(f_{w'}(x_c), y_c), differentiated back to a through w' (second order);
  4. Adam step on a with that gradient; SGD step on w with gs (at the a before the update).
The official code's k-step hypergradient accumulation is off at its default (gradient_steps = 1),
which is the plain one-step unroll done here.
Without the clean half in L_s the main model learns only from a random g at first and trails CE
for many epochs.

Several processes: each process looks ahead with its own batch and the per-process meta and main
gradients are averaged (accelerator.reduce). That is the mean of per-process hypergradients, not
the hypergradient of the all-process batch (which would need a differentiable all-reduce inside the
look-ahead); a warning says so once. Main-model passes per step: 2 forwards (noisy at w, clean at
w') plus 1 of the clean half, 1 backward with graph and 1 double backward through it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.load.batch import Batch
from training.methods.base import Run, StepOutput
from training.methods.common.lookahead import forward_with
from training.methods.common.meta_label import (META, InnerSGD, MetaLabelConfig, MetaLabelMethod, at_least_float32,
                                                flat, lower_loss, named_trainable, trainable)

log = logging.getLogger(__name__)


class MLCConfig(MetaLabelConfig):
    clean_in_lower: bool = True  # official default (hmlc_K_mix)


@dataclass
class MetaGradients:
    w: torch.Tensor  # (n_w,) flat float32 grad_w L_s(w, a): the main model's SGD gradient
    a: torch.Tensor  # (n_a,) flat float32 d F(w'(a)) / d a: the meta model's gradient
    upper: torch.Tensor  # scalar F(w') on the clean batch
    lower: torch.Tensor  # scalar L_s(w, a)
    logits: torch.Tensor  # (B, C) main-model logits on the noisy batch, detached
    corrected: torch.Tensor  # (B, C) g's corrected-label distribution, detached


def mlc_gradients(model: nn.Module, meta: nn.Module, x: torch.Tensor, y: torch.Tensor, x_clean: torch.Tensor,
                  y_clean: torch.Tensor, *, inner: InnerSGD, mix: tuple[torch.Tensor, torch.Tensor] | None = None,
                  autocast=contextlib.nullcontext, scale: float = 1.0) -> MetaGradients:
    """Main and meta gradients of one MLC step (nothing is updated). x, y noisy batch and given
    labels; x_clean, y_clean the clean batch of the meta loss; mix (x_c2, y_c2) the clean half-batch
    mixed into L_s, or None; inner the main optimiser's step used for the look-ahead."""
    with autocast():
        feats = model.features(x)  # (B, F)
        logits = model.fc(feats)  # (B, C)
        meta_logits = meta(feats.detach(), y)  # (B, C)
        mix_logits = model(mix[0]) if mix is not None else None  # (Bm, C)
    corrected = F.softmax(at_least_float32(meta_logits), dim=1)
    lower = lower_loss(logits, corrected, mix_logits, mix[1] if mix is not None else None)
    params = named_trainable(model)
    # gs with graph to a; under fp16 the loss is scaled by `scale` and gs divided by it inside the graph
    grads = torch.autograd.grad(lower * scale, list(params.values()), create_graph=True)
    gs = {n: g / scale for n, g in zip(params, grads)}
    ahead = inner.step(dict(params), gs)  # w' with graph to a
    with autocast():
        logits_ahead = forward_with(model, ahead, x_clean)  # (Bc, C) f_{w'}(x_c)
    upper = F.cross_entropy(at_least_float32(logits_ahead), y_clean)
    grad_a = flat(torch.autograd.grad(upper * scale, trainable(meta))) / scale  # through w', second order
    return MetaGradients(w=flat(g.detach() for g in gs.values()), a=grad_a, upper=upper.detach(),
                         lower=lower.detach(), logits=logits.detach(), corrected=corrected.detach())


class MLC(MetaLabelMethod):
    name = "mlc"
    Config = MLCConfig

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self._warned_ddp = False

    def on_epoch_start(self, run: Run) -> None:
        if run.accelerator.num_processes > 1 and not self._warned_ddp:
            log.warning("mlc with %d processes: each process looks ahead on its own batch and the per-process "
                        "meta gradients are averaged (not the hypergradient of the joint batch)",
                        run.accelerator.num_processes)
            self._warned_ddp = True

    def train_step(self, batch: Batch, labels: torch.Tensor, run: Run) -> StepOutput:
        model, meta = run.unwrap("model"), run.unwrap(META)
        clean_images, clean_labels, mix = self._clean_batch(run)
        g = mlc_gradients(model, meta, batch.images, labels, clean_images, clean_labels,
                          inner=InnerSGD.of(run.optimizers["model"], model), mix=mix,
                          autocast=run.accelerator.autocast, scale=self._loss_scale(run))
        reduce = self._reduce_fn(run)
        self._apply(run, reduce(g.w), reduce(g.a))
        self._record(run, batch, labels, g.corrected, g.upper, g.lower)
        return StepOutput(terms={"loss": g.lower, "upper": g.upper}, logits=g.logits)
