"""ELR+ (Liu, Niles-Weed, Razavian, Fernandez-Granda, NeurIPS 2020, Sec. 4 and the authors' ELR_plus
code): ELR with two networks, weight averaging and mixup.
State: elr_target[N, K] and peer_elr_target[N, K] float32, each network's target history, from 0.

Networks: "model" and "peer", each with a weight-averaged copy ("model_ema", "peer_ema", no
optimiser: w_ema <- a w_ema + (1 - a) w after every step of its network, a = 0.997 ramped up by
exp(-5 (1 - s / ema_step)^2) over the first ema_step steps). Per batch, for each network in turn:
  1. its target history is updated from the PEER's averaged copy on the un-mixed images:
        t_i <- beta t_i + (1 - beta) p_i / sum_k p_ik,   p = clamp(softmax(peer_ema(x)), 1e-4, 1 - 1e-4)
     (the peer's averaged network estimates the targets: one network's memorisation is not fed back
     into its own targets);
  2. mixup of the batch (l ~ Beta(alpha, alpha), l' = max(l, 1 - l), one permutation) mixes the
     images, the one-hot labels and the targets alike;
  3. loss = CE(mixed one-hot, f(mixed x)) + lam * r(s) * mean_i log(1 - <t_mixed_i, clamp(softmax)_i>),
     r(s) = exp(-5 (1 - s / coef_step)^2) ramped over coef_step steps (1 throughout when 0).
The averaged copies run in train mode, as in the authors' code: their BatchNorm statistics follow
their own forward passes (only the weights are averaged). Test predictions: the mean of the two
networks' logits (not of the averaged copies), as the authors evaluate.

Differences from the authors' code, by the interface's one-batch step: their two networks run whole
epochs one after the other on separate shuffles; here both step on each batch (network 1, then 2),
each with its own mixup draw, so network 2's targets come from network 1's averaged copy as it is
during the epoch rather than at its end. `weight_labels_by_target` is their CIFAR-100 branch (the
mixed one-hot label multiplied by the target and renormalised), switched on in the CIFAR-100 recipe.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from pipeline.load.batch import Batch
from state.spec import ArraySpec
from training.methods.base import EpochReport, Method, Run, StepOutput
from training.methods.common.diagnostics import soft_label_report
from training.methods.dividemix import mixmatch
from training.methods.elr import clamped_softmax, elr_regulariser

NETS = ("model", "peer")
EMA = {"model": "model_ema", "peer": "peer_ema"}
PEER = {"model": "peer", "peer": "model"}
TARGETS = {"model": "elr_target", "peer": "peer_elr_target"}


class ELRPlusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lam: float = Field(3.0, ge=0)  # lambda, weight of the regulariser; CIFAR-10 3, CIFAR-100 7
    beta: float = Field(0.7, ge=0, lt=1)  # EMA momentum of the targets; CIFAR-10 0.7, CIFAR-100 0.9
    mixup_alpha: float = Field(1.0, gt=0)  # Beta(alpha, alpha) of mixup
    ema_decay: float = Field(0.997, ge=0, lt=1)  # weight averaging of each network
    ema_step: int = Field(40000, ge=0)  # steps over which the averaging ramps up to ema_decay (0: none)
    coef_step: int = Field(0, ge=0)  # steps over which the regulariser's weight ramps up (0: none; CIFAR-100 40000)
    weight_labels_by_target: bool = False  # the authors' CIFAR-100 branch: CE target = label * target, renormalised


def sigmoid_rampup(step: float, length: int) -> float:
    """exp(-5 (1 - min(step, length) / length)^2), 1 when length is 0 (Laine and Aila's ramp)."""
    if length == 0:
        return 1.0
    phase = 1.0 - min(max(step, 0.0), length) / length
    return math.exp(-5.0 * phase * phase)


@torch.no_grad()
def average_weights(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema's parameters <- decay * ema + (1 - decay) * model's (buffers untouched)."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1.0 - decay)


class ELRPlus(Method):
    name = "elr_plus"
    Config = ELRPlusConfig

    def __init__(self, config: ELRPlusConfig, ctx):
        super().__init__(config, ctx)
        self.step_count = 0  # steps of each network so far (the ramps' clock), checkpointed

    def state_arrays(self) -> list[ArraySpec]:
        return [ArraySpec(TARGETS[n], (self.ctx.num_classes,), "float32", 0.0) for n in NETS]

    def build_models(self) -> dict[str, nn.Module]:
        models = {n: self.ctx.build_model() for n in NETS}  # two initialisations
        for n in NETS:
            ema = self.ctx.build_model()
            ema.load_state_dict(models[n].state_dict())
            models[EMA[n]] = ema
        return models

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {n: self.ctx.build_optimizer(models[n].parameters()) for n in NETS}  # the copies are averaged

    def predict(self, models: dict[str, nn.Module], images: torch.Tensor) -> torch.Tensor:
        return (models["model"](images) + models["peer"](images)) / 2

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])

    def train_step(self, batch: Batch, labels: torch.Tensor, run: Run) -> StepOutput:
        self.step_count += 1
        terms = {}
        for n in NETS:
            loss, reg = self._net_step(n, batch, labels, run)
            terms["loss" if n == "model" else "peer_loss"] = loss
            terms["elr_reg" if n == "model" else "peer_elr_reg"] = reg
        # the trainer's training metrics (accuracy, memorisation) need network 1 on the un-mixed batch:
        # an extra forward in eval mode, so its BatchNorm statistics stay those of the training passes
        model = run.models["model"]
        with torch.no_grad(), run.accelerator.autocast():
            model.eval()
            logits = model(batch.images).float()  # (B, K)
            model.train()
        return StepOutput(terms=terms, logits=logits)

    def _net_step(self, n: str, batch: Batch, labels: torch.Tensor, run: Run) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, acc = self.config, run.accelerator
        with torch.no_grad(), acc.autocast():
            p = clamped_softmax(run.models[EMA[PEER[n]]](batch.images).float())  # (B, K)
        run.store.ema(TARGETS[n], batch.idx, p / p.sum(dim=1, keepdim=True), cfg.beta)
        target = torch.as_tensor(run.store.gather(TARGETS[n], batch.idx), device=p.device)  # (B, K)
        k = p.shape[1]
        lam = float(np.random.beta(cfg.mixup_alpha, cfg.mixup_alpha))  # numpy's global stream: seeded, checkpointed
        perm = torch.randperm(labels.shape[0], device=labels.device)
        both = torch.cat([F.one_hot(labels, k).float(), target], dim=1)  # mixed with one permutation
        mixed_x, mixed = mixmatch(batch.images, both, lam, perm)
        mixed_y, mixed_t = mixed[:, :k], mixed[:, k:]  # (B, K) each
        if cfg.weight_labels_by_target:
            mixed_y = mixed_y * mixed_t
            mixed_y = mixed_y / mixed_y.sum(dim=1, keepdim=True)
        with acc.autocast():
            logits = run.models[n](mixed_x).float()  # (B, K)
        ce = -(mixed_y * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        reg = elr_regulariser(clamped_softmax(logits), mixed_t)
        loss = ce + cfg.lam * sigmoid_rampup(self.step_count, cfg.coef_step) * reg
        run.update(loss, (n,))
        average_weights(run.unwrap(EMA[n]), run.unwrap(n), self._ema_decay())
        return loss.detach(), reg.detach()

    def _ema_decay(self) -> float:
        """The weight-averaging decay at the current step: ema_decay ramped up over ema_step steps."""
        return sigmoid_rampup(self.step_count + 1, self.config.ema_step) * self.config.ema_decay

    def on_epoch_end(self, run: Run) -> EpochReport:
        """ELR's soft-label diagnostics of network 1's targets (corrected / broken, when the clean labels
        are known) and the averaging decay reached."""
        metrics = soft_label_report(run.store[TARGETS["model"]], self.ctx.noisy_labels, self.ctx.clean_labels)
        metrics["ema_decay"] = self._ema_decay()
        return EpochReport(metrics=metrics)
