"""ALR, Adaptive Label Refinement (Zhang et al., Neural Networks); SELC is ALR with lam = 0.
State: soft_target[N, K] float32, initialised to one_hot(noisy label).

Warm-up: plain CE on the given labels while epoch < warmup_epochs (Algorithm 1's "e < m"; Eq. 3
writes e <= m). Afterwards, per batch: t_i <- alpha t_i + (1 - alpha) stopgrad(p_i) from this
batch's own (augmented-view) prediction, then
    loss = mean_i [-sum_k t_ik log p_ik] + lam * mean_i [-sum_k p_ik log p_ik]
where the entropy term is not detached: it sharpens confident predictions (ALR Eq. 5).
The paper's Sec. 5.6 swaps the Greek letters; the values used throughout are alpha = 0.9, lam = 0.2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from pipeline.load.batch import Batch
from state.spec import ArraySpec
from training.methods.base import EpochReport, Method, Run
from training.methods.common.diagnostics import soft_label_report

SOFT_TARGET = "soft_target"


class ALRConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    warmup_epochs: int = Field(30, ge=0)  # m: epochs of plain CE before refinement starts
    alpha: float = Field(0.9, ge=0, lt=1)  # EMA momentum of the soft targets
    lam: float = Field(0.2, ge=0)  # entropy weight; 0 gives SELC


class ALR(Method):
    name = "alr"
    Config = ALRConfig

    def state_arrays(self) -> list[ArraySpec]:
        return [ArraySpec(SOFT_TARGET, (self.ctx.num_classes,), "float32", "one_hot_labels")]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, batch: Batch, run: Run) -> dict[str, torch.Tensor]:
        logits = logits.float()  # (B, K); the EMA and the losses stay in float32 under mixed precision
        if run.epoch < self.config.warmup_epochs:
            return {"loss": F.cross_entropy(logits, labels)}
        log_p = F.log_softmax(logits, dim=1)  # (B, K)
        p = log_p.exp()
        run.store.ema(SOFT_TARGET, batch.idx, p.detach(), self.config.alpha)
        target = torch.as_tensor(run.store.gather(SOFT_TARGET, batch.idx), device=logits.device)  # (B, K)
        soft_ce = -(target * log_p).sum(dim=1).mean()
        entropy = -(p * log_p).sum(dim=1).mean()
        return {"loss": soft_ce + self.config.lam * entropy, "soft_ce": soft_ce.detach(), "entropy": entropy.detach()}

    def on_epoch_end(self, run: Run) -> EpochReport:
        ctx = self.ctx
        return EpochReport(metrics=soft_label_report(run.store[SOFT_TARGET], ctx.noisy_labels, ctx.clean_labels))
