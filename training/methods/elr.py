"""ELR, Early-Learning Regularization (Liu, Niles-Weed, Razavian, Fernandez-Granda, NeurIPS 2020).
State: elr_target[N, K] float32, initialised to 0 (as in the authors' code).

Per batch, with p_i the softmax prediction clamped to [1e-4, 1 - 1e-4]:
    t_i <- beta t_i + (1 - beta) stopgrad(p_i / sum_k p_ik)          (paper Eq. 9, temporal ensembling)
    loss = CE(logits, y) + lam * mean_i log(1 - <t_i, p_i>)           (Eq. 6)
The regulariser is not detached in p: its gradient pulls p_i towards t_i, the running average of
the early-learning predictions, so the model keeps predicting what it learnt before memorising the
wrong labels. The clamp keeps 1 - <t, p> away from 0.

The targets are soft labels: each epoch reports how many wrong given labels their argmax corrects
(corrected / broken, when the clean labels are known). A row stays 0 (argmax: class 0) until its sample's first batch; after one full epoch every row
has been updated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from pipeline.load.batch import Batch
from state.spec import ArraySpec
from training.methods.base import EpochReport, Method, Run
from training.methods.common.diagnostics import soft_label_report

TARGET = "elr_target"
CLAMP = 1e-4  # the authors' bound on the predicted probabilities


class ELRConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lam: float = Field(3.0, ge=0)  # lambda, weight of the regulariser; CIFAR-10 3, CIFAR-100 7
    beta: float = Field(0.7, ge=0, lt=1)  # EMA momentum of the targets; CIFAR-10 0.7, CIFAR-100 0.9


def clamped_softmax(logits: torch.Tensor) -> torch.Tensor:
    """(B, K) -> softmax clamped to [CLAMP, 1 - CLAMP] (rows no longer sum to exactly 1)."""
    return F.softmax(logits, dim=1).clamp(CLAMP, 1.0 - CLAMP)


def elr_regulariser(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_i log(1 - <t_i, p_i>): p (B, K) clamped prediction (in the graph), target (B, K) -> scalar."""
    return torch.log(1.0 - (target * p).sum(dim=1)).mean()


class ELR(Method):
    name = "elr"
    Config = ELRConfig

    def state_arrays(self) -> list[ArraySpec]:
        return [ArraySpec(TARGET, (self.ctx.num_classes,), "float32", 0.0)]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, batch: Batch, run: Run) -> dict[str, torch.Tensor]:
        logits = logits.float()  # (B, K); targets and regulariser in float32 under mixed precision
        p = clamped_softmax(logits)  # (B, K)
        q = p.detach()
        run.store.ema(TARGET, batch.idx, q / q.sum(dim=1, keepdim=True), self.config.beta)
        target = torch.as_tensor(run.store.gather(TARGET, batch.idx), device=logits.device)  # (B, K)
        ce = F.cross_entropy(logits, labels)
        reg = elr_regulariser(p, target)
        return {"loss": ce + self.config.lam * reg, "ce": ce.detach(), "elr_reg": reg.detach()}

    def on_epoch_end(self, run: Run) -> EpochReport:
        return EpochReport(metrics=soft_label_report(run.store[TARGET], self.ctx.noisy_labels, self.ctx.clean_labels))
