"""MW-Net, Meta-Weight-Net (Shu, Xie, Yi, Zhao, Zhou, Xu, Meng, NeurIPS 2019): L2RW with a learned
weighting function. State: weight[N] float32, the weight V(l_i; Theta) a sample last trained with
(in (0, 1); -1 = never weighted, e.g. the clean subset), for diagnostics only. Beside the main model a
weighting MLP V: R -> (0, 1), 1 -> hidden (100) -> 1 with ReLU and a sigmoid, maps a sample's loss to
its weight.

Per training batch (the paper's Algorithm 1, one meta step):
  1. one forward on the noisy batch, l_i = CE(f(x_i; w), y_i);
  2. w_hat(Theta) = w - lr (grad_w mean_i V(sg(l_i); Theta) l_i + wd w), kept in the graph (the shared
     look-ahead of training/methods/common/lookahead.py, at the optimiser's current lr and weight decay, no
     momentum, as for L2RW; the authors' code leaves weight decay out of its look-ahead);
  3. one clean batch, L_clean(w_hat(Theta)); Adam step on Theta with d L_clean / d Theta;
  4. SGD step of w on mean_i V(sg(l_i); Theta_new) l_i, the weights detached (same forward as step 1).
The weights are divided by the batch size, not by their sum (the authors' MW-Net.py), so V also sets
how much of the learning rate a batch uses. The weighting MLP is trained by Adam at a constant lr 1e-3,
weight decay 1e-4, as in the authors' noisy-label script (MW-Net.py).

Processes: single-process only, for L2RW's reason (training/methods/l2rw.py): under DDP the look-ahead
would differentiate each process's unreduced gradient against its own clean batch. The method refuses
several processes and fp16 at the start of its first epoch with a ConfigError that names the alternative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from pipeline.load.batch import Batch
from state.spec import ArraySpec
from training.methods.base import DataNeeds, EpochReport, Method, Run, StepOutput
from training.methods.common.lookahead import current_lr_wd, forward_with, lookahead
from training.methods.common.reweighting import check_lookahead_setup, weight_diagnostics

WEIGHT = "weight"
WEIGHT_NET = "weight_net"  # the weighting MLP (and its optimiser) in the trainer's dicts


class MWNetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden: int = Field(100, gt=0)  # hidden width of the weighting MLP (1 -> hidden -> 1)
    meta_lr: float = Field(1e-3, gt=0)  # Adam learning rate of the weighting MLP (constant: not scheduled)
    meta_weight_decay: float = Field(1e-4, ge=0)  # Adam (L2) weight decay of the weighting MLP


class WeightNet(nn.Module):
    """V(l; Theta): per-sample losses (B,) -> weights (B,) in (0, 1)."""

    def __init__(self, hidden: int = 100):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(losses[:, None])).squeeze(1)


def mwnet_meta_gradient(model: nn.Module, weight_net: nn.Module, ce: torch.Tensor, clean_images: torch.Tensor,
                        clean_labels: torch.Tensor, lr: float, weight_decay: float = 0.0) -> list[torch.Tensor]:
    """d L_clean(w_hat(Theta)) / d Theta for each parameter of weight_net, where w_hat is one
    differentiable SGD step on mean_i V(sg(ce_i); Theta) ce_i. ce (B,) are the per-sample losses of the
    model's forward on the noisy batch (graph kept: the caller still backpropagates through ce)."""
    weights = weight_net(ce.detach())  # (B,) the loss is the MLP's input, not a path to w
    ahead = lookahead(model, (weights * ce).mean(), lr, weight_decay)
    clean_logits = forward_with(model, ahead, clean_images)  # (Bv, K)
    clean_loss = F.cross_entropy(clean_logits.float(), clean_labels)
    return list(torch.autograd.grad(clean_loss, list(weight_net.parameters()), retain_graph=True))


class MWNet(Method):
    name = "mwnet"
    Config = MWNetConfig
    needs = DataNeeds(clean_subset=True)
    unscheduled = (WEIGHT_NET,)

    def state_arrays(self) -> list[ArraySpec]:
        return [ArraySpec(WEIGHT, (), "float32", -1.0)]

    def build_models(self) -> dict[str, nn.Module]:
        return {"model": self.ctx.build_model(), WEIGHT_NET: WeightNet(self.config.hidden)}

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.ctx.build_optimizer(models["model"].parameters()),
                WEIGHT_NET: torch.optim.Adam(models[WEIGHT_NET].parameters(), lr=self.config.meta_lr,
                                             weight_decay=self.config.meta_weight_decay)}

    def on_epoch_start(self, run: Run) -> None:
        check_lookahead_setup(self.name, run.accelerator)

    def train_step(self, batch: Batch, labels: torch.Tensor, run: Run) -> StepOutput:
        weight_net = run.unwrap(WEIGHT_NET)
        clean = run.clean.next_batch()
        clean_labels = run.clean.labels[clean.idx]  # (Bv,) int64 clean labels
        lr, wd = current_lr_wd(run.optimizers["model"])
        with run.accelerator.autocast():
            logits = run.models["model"](batch.images)  # (B, K)
            ce = F.cross_entropy(logits.float(), labels, reduction="none")  # (B,)
            grads = mwnet_meta_gradient(run.unwrap(), weight_net, ce, clean.images, clean_labels, lr, wd)
        for param, grad in zip(weight_net.parameters(), grads):
            param.grad = grad
        run.step((WEIGHT_NET,))
        with torch.no_grad():
            weights = weight_net(ce.detach())  # (B,) from the updated MLP
        loss = (weights * ce).mean()
        run.update(loss)
        run.store.set(WEIGHT, batch.idx, weights)
        return StepOutput(terms={"loss": loss.detach(), "ce": ce.mean().detach()}, logits=logits.detach())

    def on_epoch_end(self, run: Run) -> EpochReport:
        return EpochReport(metrics=weight_diagnostics(run.store[WEIGHT], self.ctx.noisy_labels.cpu().numpy(),
                                                      run.clean.labels.cpu().numpy()))
