"""JoCoR (Wei, Feng, Chen, An, CVPR 2020): two networks trained jointly toward agreement.
State: Co-teaching's selected[N] float32, here 1 if the sample was among the small-loss samples at
its latest batch, 0 if not (-1 before its first batch), for diagnostics only (selection_auroc).

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

from pipeline.load.batch import Batch
from training.methods.base import Run, StepOutput
from training.methods.coteaching import NETS, SELECTED, Coteaching, CoteachingConfig, smallest


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


class JoCoR(Coteaching):
    """Co-teaching's networks, schedule, state and diagnostics; its own step."""

    name = "jocor"
    Config = JoCoRConfig

    def train_step(self, batch: Batch, labels: torch.Tensor, run: Run) -> StepOutput:
        logits, peer_logits = self._both_logits(batch, run)  # (B, K) each
        joint, kl = joint_loss(logits, peer_logits, labels, self.config.co_lambda)  # (B,)
        kept = smallest(joint.detach(), self._keep(run.epoch))  # (n,) indices into the batch
        loss = joint[kept].mean()
        run.update(loss, NETS)  # no shared parameters: one backward gives each network its gradient
        selected = torch.zeros_like(joint)
        selected[kept] = 1
        run.store.set(SELECTED, batch.idx, selected)
        return StepOutput(terms={"loss": loss.detach(), "co_reg": kl[kept].mean().detach()}, logits=logits.detach())
