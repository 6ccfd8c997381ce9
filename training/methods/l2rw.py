"""L2RW, Learning to Reweight Examples (Ren, Zeng, Yang, Urtasun, ICML 2018): the meta-reweighting
reference the surrogate replaces. State: weight[N] float32 (last weight, x B so that 1 = the uniform
weight; -1 = never weighted), d[N] float32 (last meta gradient g_i, before clipping).

Per training batch (Algorithm 1 of the paper, one meta step):
  1. one forward on the noisy batch, ce_i = CE(f(x_i; w), y_i);
  2. eps = 0; w_hat = w - lr * (grad_w sum_i eps_i ce_i + wd * w), kept in the graph
     (training/methods/common/lookahead.py, the optimiser's current lr and weight decay, no momentum);
  3. one clean batch (the clean meta subset's stream), L_clean(w_hat); g_i = -dL_clean/d eps_i;
  4. weights = max(g, 0) / sum max(g, 0); if all are zero the step is SKIPPED: no optimiser step,
     the trainer sees loss 0 for that batch (the batch still counts in its accuracy tally), and
     `l2rw_skipped_steps` counts such batches in the epoch's log row;
  5. optimiser step on sum_i weights_i ce_i (the same forward as step 1, weights detached).
Cost: about 3x a CE step (a double backward through the look-ahead and one clean forward).

Reusing one forward for the meta step and the update (instead of the paper code's two) gives the
same gradients and updates BatchNorm running statistics once per batch, like every other method.

Processes: single-process only. Under DDP the look-ahead would differentiate the local replica's
unreduced gradients (each process would reweight against its own clean batch with its own look-ahead),
which is not the single-process algorithm; rather than train on something else silently the method
refuses at the start of its first epoch with several processes (a ConfigError naming the limitation,
from `on_epoch_start`; run.py prints it and exits with status 2).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from pipeline.load.batch import Batch
from state.spec import ArraySpec
from training.methods.base import DataNeeds, EpochReport, Method, Run, StepOutput
from training.methods.common.lookahead import current_lr_wd
from training.methods.common.reweighting import (check_lookahead_setup, l2rw_meta_gradient, l2rw_weights,
                                                 weight_diagnostics)

log = logging.getLogger(__name__)

WEIGHT = "weight"
SCORE = "d"


class L2RWConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # No parameters: the look-ahead uses the optimiser's current lr and weight decay, the clean batch
    # size is data.clean_batch_size (default data.batch_size), the subset is data.clean_subset.


class L2RW(Method):
    name = "l2rw"
    Config = L2RWConfig
    needs = DataNeeds(clean_subset=True)

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self._skipped = 0  # batches of this epoch whose weights were all zero

    def state_arrays(self) -> list[ArraySpec]:
        return [ArraySpec(WEIGHT, (), "float32", -1.0), ArraySpec(SCORE, (), "float32", 0.0)]

    def on_epoch_start(self, run: Run) -> None:
        check_lookahead_setup(self.name, run.accelerator)
        self._skipped = 0

    def train_step(self, batch: Batch, labels: torch.Tensor, run: Run) -> StepOutput:
        clean = run.clean.next_batch()
        clean_labels = run.clean.labels[clean.idx]  # (Bv,) int64 clean labels
        lr, wd = current_lr_wd(run.optimizers["model"])
        with run.accelerator.autocast():
            logits = run.models["model"](batch.images)  # (B, K)
            ce = F.cross_entropy(logits.float(), labels, reduction="none")  # (B,)
            g = l2rw_meta_gradient(run.unwrap(), ce, clean.images, clean_labels, lr, wd)  # (B,)
        weights = l2rw_weights(g)
        n = ce.shape[0]
        if weights is None:
            self._skipped += 1
            log.debug("l2rw: every weight of a batch is zero (epoch %d); step skipped", run.epoch + 1)
            weights = torch.zeros_like(g)
            loss = torch.zeros((), device=ce.device)
        else:
            loss = (weights * ce).sum()
            run.update(loss)
        relative = weights * n  # (B,) 1 = uniform weight
        run.store.set(WEIGHT, batch.idx, relative)
        run.store.set(SCORE, batch.idx, g)
        terms = {"loss": loss.detach(), "ce": ce.mean().detach()}
        return StepOutput(terms=terms, logits=logits.detach())

    def on_epoch_end(self, run: Run) -> EpochReport:
        metrics = {"l2rw_skipped_steps": float(self._skipped)}
        metrics.update(weight_diagnostics(run.store[WEIGHT], self.ctx.noisy_labels.cpu().numpy(),
                                          run.clean.labels.cpu().numpy()))
        return EpochReport(metrics=metrics)
