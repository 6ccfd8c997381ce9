"""JoCoR (Wei, Feng, Chen, An, CVPR 2020): two networks trained jointly toward agreement.
State: selected[N] float32, 1 if the sample was among the small-loss samples at its latest batch,
0 if not (-1 before its first batch), for diagnostics only.

Per batch, with p1, p2 the two networks' softmax outputs:
  1. the joint loss of every sample (Eq. 4-6):
        l = (1 - lambda) * (CE(p1, y) + CE(p2, y)) + lambda * (KL(p1 || p2) + KL(p2 || p1)),
     the co-regularisation term pulling the two networks toward the same prediction (gradients flow
     into both sides of both KL terms, as in the authors' code);
  2. the R(T) fraction of the batch with the smallest joint loss is kept (small-loss samples are
     likely clean) and BOTH networks are updated on the mean joint loss of those samples: one
     selection, unlike Co-teaching's exchange of two;
  3. R(T) = 1 - min(T / T_k, 1) * tau, T the epoch (0-based), T_k = 10, tau the noise rate (the
     authors' code: tau = noise rate, half of it for asymmetric noise). Co-teaching's schedule and
     small-loss count (training/methods/coteaching.py): Eq. 1 where the code ramps with linspace, and
     round(R * B) where the code floors; both differ from the code by at most one epoch / one sample.

lambda (co_lambda): the authors' README gives 0.9 for CIFAR-10 (symmetric 20 / 50 %, asymmetric
40 %), 0.65 for symmetric 80 %, 0.85 for CIFAR-100. "model" (network 1) is the one evaluated.

Several processes: each process selects within its own batch, as Co-teaching here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pipeline.load.batch import Batch
from state.spec import ArraySpec
from training.methods.base import EpochReport, Method, Run, StepOutput
from training.methods.coteaching import NETS, CoteachingConfig, keep_ratio, selection_auroc, smallest

SELECTED = "selected"


class JoCoRConfig(CoteachingConfig):
    co_lambda: float = Field(0.9, ge=0, le=1)  # lambda: weight of the co-regularisation (the KL terms)


def joint_loss(logits: torch.Tensor, peer_logits: torch.Tensor, labels: torch.Tensor,
               co_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K) logits of both networks, (B,) labels -> ((B,) joint loss, (B,) symmetric KL)."""
    log_p, log_q = F.log_softmax(logits, dim=1), F.log_softmax(peer_logits, dim=1)  # (B, K)
    kl = ((log_p.exp() * (log_p - log_q)).sum(dim=1)  # KL(p1 || p2)
          + (log_q.exp() * (log_q - log_p)).sum(dim=1))  # KL(p2 || p1)
    ce = F.cross_entropy(logits, labels, reduction="none") + F.cross_entropy(peer_logits, labels, reduction="none")
    return (1 - co_lambda) * ce + co_lambda * kl, kl


class JoCoR(Method):
    name = "jocor"
    Config = JoCoRConfig

    def state_arrays(self) -> list[ArraySpec]:
        return [ArraySpec(SELECTED, (), "float32", -1.0)]

    def build_models(self) -> dict[str, nn.Module]:
        return {name: self.ctx.build_model() for name in NETS}

    def _keep(self, epoch: int) -> float:
        return keep_ratio(epoch, self.config.forget_rate, self.config.ramp_epochs)

    def train_step(self, batch: Batch, labels: torch.Tensor, run: Run) -> StepOutput:
        with run.accelerator.autocast():
            logits = run.models["model"](batch.images)  # (B, K)
            peer_logits = run.models["peer"](batch.images)  # (B, K)
        joint, kl = joint_loss(logits.float(), peer_logits.float(), labels, self.config.co_lambda)  # (B,)
        kept = smallest(joint.detach(), self._keep(run.epoch))  # (n,) indices into the batch
        loss = joint[kept].mean()
        run.update(loss, NETS)  # no shared parameters: one backward gives each network its gradient
        selected = torch.zeros_like(joint)
        selected[kept] = 1
        run.store.set(SELECTED, batch.idx, selected)
        return StepOutput(terms={"loss": loss.detach(), "co_reg": kl[kept].mean().detach()}, logits=logits.detach())

    def on_epoch_end(self, run: Run) -> EpochReport:
        """keep_ratio of the epoch; with clean labels, selection_auroc (Co-teaching's: the AUROC of
        "not kept" for the wrong labels, over the samples seen so far)."""
        metrics = {"keep_ratio": self._keep(run.epoch)}
        if self.ctx.clean_labels is not None:
            metrics["selection_auroc"] = selection_auroc(run.store[SELECTED], self.ctx)
        return EpochReport(metrics=metrics)
