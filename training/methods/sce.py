"""SCE, Symmetric Cross Entropy (Wang, Ma, Chen, Luo, Yi, Bailey, ICCV 2019). State: none.

    loss = alpha * CE(p, q) + beta * RCE(p, q)                      (paper Eq. 5)
    RCE  = -sum_k p_k log q_k                                        (Eq. 4)

with p the softmax prediction and q the one-hot given label. log q_k = log 0 for k != y is clamped
to a constant A < 0 (the paper's A = -4), and log q_y = log 1 = 0, so

    RCE = -A * sum_{k != y} p_k = -A * (1 - p_y),

a bounded, MAE-like term that is robust to label noise; CE keeps the hard classes learning.
(The authors' Keras code clips the one-hot label at 1e-4 instead, i.e. A = log 1e-4 = -9.2; set
`log_zero` to reproduce that.) alpha and beta are per dataset: CIFAR-10 0.1 / 1.0, CIFAR-100 6.0 / 0.1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from pipeline.load.batch import Batch
from training.methods.base import Method, Run


class SCEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.1, ge=0)  # weight of CE; CIFAR-10 0.1, CIFAR-100 6.0
    beta: float = Field(1.0, ge=0)  # weight of RCE; CIFAR-10 1.0, CIFAR-100 0.1
    log_zero: float = Field(-4.0, lt=0)  # A: the value log 0 is clamped to inside RCE


def reverse_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, log_zero: float) -> torch.Tensor:
    """Mean RCE over the batch: logits (B, K), labels (B,) int64 -> scalar, -A (1 - p_y) per sample."""
    p_y = F.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)  # (B,)
    return (-log_zero * (1.0 - p_y)).mean()


class SCE(Method):
    name = "sce"
    Config = SCEConfig

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, batch: Batch, run: Run) -> dict[str, torch.Tensor]:
        logits = logits.float()  # (B, K)
        ce = F.cross_entropy(logits, labels)
        rce = reverse_cross_entropy(logits, labels, self.config.log_zero)
        return {"loss": self.config.alpha * ce + self.config.beta * rce, "ce": ce.detach(), "rce": rce.detach()}
