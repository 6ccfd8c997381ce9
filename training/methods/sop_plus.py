"""SOP+ (Liu, Zhu, Qu, You, ICML 2022): SOP (training/methods/sop.py) plus two regularisers on a second
view. State: SOP's u[N] and v[N, K].

Each batch goes through the network once as [weak view; autoaugment view] (the authors' two loaders'
images concatenated; the autoaugment view is the AutoAugment CIFAR-10 policy, a crop and flip, and a
16 px cutout: the AutoAugment section of pipeline/load/transforms.py). With o1, o2 the logits of the
two views and q SOP's reconstructed prediction on o1:
    loss = SOP's ce + mse on o1
           + balance     * (-sum_k (1/K) log mean_i q_ik)                class balance (reaches u too)
           + consistency * mean_i KL(softmax(o1)_i (no gradient) || softmax(o2)_i)
as in the authors' overparametrization_loss (ratio_balance, ratio_consistency; 0.1 and 0.9 in their
CIFAR configuration, Table A.1). u and v take their SGD step as in SOP, on the gradient of this loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from pipeline.load.batch import Batch
from training.methods.base import DataNeeds, Run, StepOutput
from training.methods.sop import SOP, SOPConfig


class SOPPlusConfig(SOPConfig):
    consistency: float = Field(0.9, ge=0)  # weight of the KL between the views' predictions
    balance: float = Field(0.1, ge=0)  # weight of the class-balance term on the reconstructed prediction


def consistency_loss(weak: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
    """mean_i KL(p_i || r_i) with p = softmax(weak) as a fixed target and r = softmax(strong);
    weak, strong (B, K) logits."""
    target = F.softmax(weak.detach(), dim=1)
    return F.kl_div(F.log_softmax(strong, dim=1), target, reduction="none").sum(dim=1).mean()


class SOPPlus(SOP):
    name = "sop_plus"
    Config = SOPPlusConfig
    needs = DataNeeds(views=("weak", "autoaugment"))

    def train_step(self, batch: Batch, labels: torch.Tensor, run: Run) -> StepOutput:
        b = labels.shape[0]
        with run.accelerator.autocast():
            logits = run.models["model"](torch.cat([batch.views["weak"], batch.views["autoaugment"]])).float()
        weak, strong = logits[:b], logits[b:]  # (B, K) each
        terms = self.sop_step(weak, labels, batch, run, balance=self.config.balance)
        terms["consistency"] = consistency_loss(weak, strong)
        loss = terms["loss"] + self.config.consistency * terms["consistency"]
        run.update(loss)
        terms = {**terms, "loss": loss.detach(), "consistency": terms["consistency"].detach()}
        return StepOutput(terms=terms, logits=weak.detach())
