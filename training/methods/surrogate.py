"""Surrogate meta-reweighting (Zhang, Holtz, Mishne, Cloninger, "Revisiting Meta-Learning with Noisy
Labels: Reweighting Dynamics and Theoretical Guarantees", arXiv 2510.12209): L2RW's weights without
the bi-level step, from a feature kernel against the clean meta subset.
State: weight[N] float32 (last weight given; -1 = never weighted, e.g. the clean subset's rows),
d[N] float32 (last label-signed score d_i; 0 before skip_epochs).

Each epoch, in on_epoch_start (also the first epoch after a resume: the statistics are transient):
  1. `val_steps` optimiser steps of plain CE on augmented clean-subset batches (data.clean_batch_size),
     with the main optimiser at its current learning rate: part of the method's cost, inside the
     epoch's time, reported as surrogate_clean_seconds;
  2. from skip_epochs on: clean features F_v = f(X_v) of the whole subset (eval mode, no grad,
     evaluation transforms), gathered from all processes, reduced to the class-balanced mean mu and
     the centred class means (C, D) (training/methods/common/reweighting.py).
Each training batch: before skip_epochs every weight is 0.5; afterwards eval-mode features of the
batch (no grad) give d_i by mean-centring, kernel class means, row shift and label-signed modulation
with alpha0 = 1/(C-1) while epoch < alpha0_epochs, then 0; the weight rule maps d to w, and the loss is
(1/B) sum_i w_i CE_i with w detached and not renormalised.

Processes: the clean CE steps go through the prepared (DDP) model like any step, every process taking
one clean batch of its own part per step; clean features are gathered with their idx (de-duplicated),
so every process scores its batch against the whole subset and the replicas stay identical.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import ConfigError
from pipeline.load.batch import Batch
from state.spec import ArraySpec
from training.evaluation import gather_by_idx
from training.methods.base import DataNeeds, EpochReport, Method, Run, StepOutput
from training.methods.common.reweighting import (
    alpha0_at, clean_centres, surrogate_scores, surrogate_weights, weight_diagnostics,
)

log = logging.getLogger(__name__)

WEIGHT = "weight"
SCORE = "d"
WARMUP_WEIGHT = 0.5  # every sample's weight before skip_epochs


class SurrogateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    val_steps: int = Field(30, ge=0)  # CE steps on clean-subset batches at the start of every epoch
    skip_epochs: int = Field(0, ge=0)  # epochs with fixed weights 0.5 (no features, no scores)
    alpha0_epochs: int = Field(40, ge=0)  # epochs (from 0) with alpha0 > 0; afterwards alpha0 = 0
    alpha0: float | None = Field(None, ge=0)  # alpha0 while epoch < alpha0_epochs; None = 1/(C-1)


class Surrogate(Method):
    name = "surrogate"
    Config = SurrogateConfig
    needs = DataNeeds(clean_subset=True)

    def __init__(self, config: SurrogateConfig, ctx):
        super().__init__(config, ctx)
        if ctx.num_classes < 2:
            raise ConfigError(f"method 'surrogate' needs at least 2 classes, the dataset has {ctx.num_classes}")
        self._mu: torch.Tensor | None = None  # (D,) class-balanced clean mean
        self._centres: torch.Tensor | None = None  # (C, D) clean class means - mu
        self._stats: dict[str, float] = {}

    def state_arrays(self) -> list[ArraySpec]:
        return [ArraySpec(WEIGHT, (), "float32", -1.0), ArraySpec(SCORE, (), "float32", 0.0)]

    # ------------------------------------------------------------------ once per epoch

    def on_epoch_start(self, run: Run) -> None:
        """Clean CE steps, then (after skip_epochs) the clean feature statistics."""
        accelerator, clean = run.accelerator, run.clean
        model = run.models["model"]
        start = time.perf_counter()
        clean_loss = torch.zeros((), device=accelerator.device)
        model.train()
        for _ in range(self.config.val_steps):
            batch = clean.next_batch()
            with accelerator.autocast():
                loss = F.cross_entropy(model(batch.images).float(), clean.labels[batch.idx])
            run.update(loss)
            clean_loss += loss.detach()
        trained = time.perf_counter()
        if run.epoch >= self.config.skip_epochs:
            features, labels = self._clean_features(run)
            self._mu, self._centres = clean_centres(features, labels, self.ctx.num_classes)
        self._stats = {
            "surrogate_clean_ce": float(accelerator.reduce(clean_loss, "mean")) / max(self.config.val_steps, 1),
            "surrogate_clean_seconds": trained - start,
            "surrogate_feature_seconds": time.perf_counter() - trained,
        }
        log.debug("surrogate epoch %d start: %s", run.epoch + 1, self._stats)

    @torch.no_grad()
    def _clean_features(self, run: Run) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, D) float32 features and (m,) clean labels of the whole subset, the same on every process."""
        accelerator, clean = run.accelerator, run.clean
        net = run.unwrap()
        net.eval()
        idx_parts, feature_parts = [], []
        for batch in clean.eval_batches():
            with accelerator.autocast():
                feature_parts.append(net.features(batch.images).float())  # (b, D)
            idx_parts.append(batch.idx)
        net.train()
        idx = torch.cat(idx_parts)
        features = torch.cat(feature_parts)
        if accelerator.num_processes > 1:
            idx, features = gather_by_idx(accelerator, idx, features)
        if idx.numel() != clean.num_samples:
            raise RuntimeError(f"surrogate: the clean feature pass saw {idx.numel()} distinct clean samples, "
                               f"expected {clean.num_samples} (data.clean_subset); the loader lost or padded "
                               f"samples")
        return features, clean.labels[idx]

    # ------------------------------------------------------------------ per batch

    @torch.no_grad()
    def _weights(self, batch: Batch, labels: torch.Tensor, run: Run) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (w (B,), d (B,)) detached float32."""
        if run.epoch < self.config.skip_epochs:
            w = torch.full(labels.shape, WARMUP_WEIGHT, dtype=torch.float32, device=labels.device)
            return w, torch.zeros_like(w)
        net = run.unwrap()
        net.eval()
        with run.accelerator.autocast():
            features = net.features(batch.images).float()  # (B, D) eval-mode features
        net.train()
        alpha0 = alpha0_at(run.epoch, self.ctx.num_classes, self.config.alpha0_epochs, self.config.alpha0)
        d = surrogate_scores(features, labels, self._mu, self._centres, alpha0)  # (B,)
        return surrogate_weights(d), d

    def train_step(self, batch: Batch, labels: torch.Tensor, run: Run) -> StepOutput:
        w, d = self._weights(batch, labels, run)
        with run.accelerator.autocast():
            logits = run.models["model"](batch.images)  # (B, K)
        ce = F.cross_entropy(logits.float(), labels, reduction="none")  # (B,)
        loss = (w * ce).mean()  # weights detached, not renormalised
        run.update(loss)
        run.store.set(WEIGHT, batch.idx, w)
        run.store.set(SCORE, batch.idx, d)
        return StepOutput(terms={"loss": loss.detach(), "ce": ce.mean().detach()}, logits=logits.detach())

    def on_epoch_end(self, run: Run) -> EpochReport:
        row = dict(self._stats)
        row["surrogate_alpha0"] = alpha0_at(run.epoch, self.ctx.num_classes, self.config.alpha0_epochs,
                                            self.config.alpha0)
        row.update(weight_diagnostics(run.store[WEIGHT], self.ctx.noisy_labels.cpu().numpy(),
                                      run.clean.labels.cpu().numpy()))
        return EpochReport(metrics=row)
