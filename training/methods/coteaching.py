"""Co-teaching (Han, Yao, Yu, Niu, Xu, Hu, Tsang, Sugiyama, NeurIPS 2018): two networks teach each other.
State: selected[N] float32, how many of the two networks kept the sample at its latest batch
(0, 1 or 2; -1 before its first batch), for diagnostics only.

Per batch (Algorithm 1), with both networks' per-sample CE on the noisy labels:
  1. each network keeps the R(T) fraction of the batch with its smallest losses (small-loss samples
     are likely clean: networks fit clean labels before they memorise wrong ones);
  2. the exchange: the model is updated on the samples the PEER kept and the peer on those the model
     kept, so one network's selection errors are not fed back into itself;
  3. R(T) = 1 - min(T / T_k, 1) * tau (Eq. 1), T the epoch (0-based), T_k = 10: every sample is
     kept at first, while the networks are still in their early-learning phase, then the dropped
     fraction ramps up to tau, which the paper sets to the noise rate.
The authors' code ramps with linspace(0, tau, T_k), reaching tau one epoch earlier; we follow Eq. 1.

tau has no default: the method does not see the label set's noise rate, so the recipe states it
(for sym-r noise here, labels redrawn from all K classes, the wrong fraction is r (K - 1) / K).

Several processes: each process selects within its own batch, as the authors' single-GPU code does
per batch (no gather of losses across processes); DDP then averages the two networks' gradients as
usual. With B per process that is the small-loss fraction of each B, not of the global batch.

"model" (network 1) is the one evaluated, as in the paper's reported test accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from pipeline.load.batch import Batch
from state.spec import ArraySpec
from training.evaluation import auroc
from training.methods.base import EpochReport, Method, Run, StepOutput

SELECTED = "selected"
NETS = ("model", "peer")


class CoteachingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    forget_rate: float = Field(ge=0, lt=1)  # tau: fraction of each batch dropped after the ramp; the noise rate
    ramp_epochs: int = Field(10, ge=1)  # T_k: epochs over which the dropped fraction grows from 0 to tau


def keep_ratio(epoch: int, forget_rate: float, ramp_epochs: int) -> float:
    """R(T) of Eq. 1: the fraction of each batch a network keeps in (0-based) epoch `epoch`."""
    return 1.0 - min(epoch / ramp_epochs, 1.0) * forget_rate


def smallest(loss: torch.Tensor, keep: float) -> torch.Tensor:
    """(n,) indices of the n smallest of the (B,) per-sample losses, n = round(keep * B) (at least 1)."""
    n = max(1, int(round(keep * loss.shape[0])))
    return torch.topk(loss, n, largest=False).indices


def small_loss_exchange(loss: torch.Tensor, peer_loss: torch.Tensor,
                        keep: float) -> tuple[torch.Tensor, torch.Tensor]:
    """loss, peer_loss (B,) per-sample losses of the two networks -> (for_model, for_peer), index
    tensors (n,) into the batch: the model trains on the peer's small-loss samples and the peer on
    the model's."""
    return smallest(peer_loss, keep), smallest(loss, keep)


class Coteaching(Method):
    name = "coteaching"
    Config = CoteachingConfig

    def state_arrays(self) -> list[ArraySpec]:
        return [ArraySpec(SELECTED, (), "float32", -1.0)]

    def build_models(self) -> dict[str, nn.Module]:
        # two independent initialisations: their disagreement is what lets them filter each other's errors
        return {name: self.ctx.build_model() for name in NETS}

    def _keep(self, epoch: int) -> float:
        return keep_ratio(epoch, self.config.forget_rate, self.config.ramp_epochs)

    @staticmethod
    def _both_logits(batch: Batch, run: Run) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) float32 logits of the model and of the peer on the batch."""
        with run.accelerator.autocast():
            return run.models["model"](batch.images).float(), run.models["peer"](batch.images).float()

    def train_step(self, batch: Batch, labels: torch.Tensor, run: Run) -> StepOutput:
        logits, peer_logits = self._both_logits(batch, run)  # (B, K) each
        ce = F.cross_entropy(logits, labels, reduction="none")  # (B,)
        peer_ce = F.cross_entropy(peer_logits, labels, reduction="none")  # (B,)
        for_model, for_peer = small_loss_exchange(ce.detach(), peer_ce.detach(), self._keep(run.epoch))
        loss = ce[for_model].mean()
        peer_loss = peer_ce[for_peer].mean()
        # The two networks share no parameters, so one backward of the sum gives each its own gradient.
        run.update(loss + peer_loss, NETS)
        selected = torch.zeros_like(ce)  # (B,) how many networks kept each sample
        selected[for_model] += 1  # kept by the peer
        selected[for_peer] += 1  # kept by the model
        run.store.set(SELECTED, batch.idx, selected)
        return StepOutput(terms={"loss": loss.detach(), "peer_loss": peer_loss.detach()}, logits=logits.detach())

    def on_epoch_end(self, run: Run) -> EpochReport:
        """keep_ratio of the epoch; with clean labels (diagnostics only) selection_auroc: the AUROC of
        "kept by fewer networks" as a detector of wrong labels (1 = every wrong label was kept by fewer
        networks than every right one, 0.5 = no better than chance), over samples seen so far."""
        metrics = {"keep_ratio": self._keep(run.epoch)}
        if self.ctx.clean_labels is not None:
            selected = run.store[SELECTED]
            seen = selected >= 0
            wrong = (self.ctx.noisy_labels != self.ctx.clean_labels).cpu().numpy()
            metrics["selection_auroc"] = auroc(-selected[seen], wrong[seen])
        return EpochReport(metrics=metrics)
