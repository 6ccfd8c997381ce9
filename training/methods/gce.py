"""GCE, Generalized Cross Entropy (Zhang and Sabuncu, NeurIPS 2018): the L_q loss. State: none.

    L_q(f(x), y) = (1 - p_y^q) / q            (paper Eq. 6)

q -> 0 gives cross-entropy (lim (1 - p^q)/q = -log p), q = 1 gives MAE up to a factor (1 - p_y).
Its gradient is p_y^q times CE's (Eq. 7), so samples the model finds unlikely (often the wrong
labels) weigh less than under CE. The paper uses q = 0.7 throughout; the truncated variant L_trunc
(with its per-epoch pruning) is not implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from pipeline.load.batch import Batch
from training.methods.base import Method, Run


class GCEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    q: float = Field(0.7, gt=0, le=1)  # 0 < q <= 1: towards 0 behaves like CE, 1 like MAE


def gce_loss(logits: torch.Tensor, labels: torch.Tensor, q: float) -> torch.Tensor:
    """Mean L_q over the batch: logits (B, K), labels (B,) int64 -> scalar."""
    log_p_y = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)  # (B,)
    # 1 - p_y^q as -expm1(q log p_y): finite where p_y underflows to 0, and exact for small q
    return (-torch.expm1(q * log_p_y) / q).mean()


class GCE(Method):
    name = "gce"
    Config = GCEConfig

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, batch: Batch, run: Run) -> dict[str, torch.Tensor]:
        return {"loss": gce_loss(logits.float(), labels, self.config.q)}
