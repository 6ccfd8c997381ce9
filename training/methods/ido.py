"""IDO, instance-level difficulty modelling and dynamic optimisation (Zhang et al., NeurIPS 2025).
State: wrong_event[N] int32 (never reset), prev_pred[N] and cur_pred[N] int32 (stage-1 training
predictions, -1 = not seen yet). Spec: ../shared/methods/IDO.md; the mixture is beta_mixture.py.

Stage 1 (epochs [0, stage1_epochs)): plain CE on the weak view (= batch.images). Every step adds
1 to wrong_event[i] when argmax of the training forward pass (train mode, augmented input, before
the optimiser step) differs from the given label; each sample is in one batch per epoch (loader
contract, and the store drops duplicate idx within a step), so stage 1 adds at most 1 per epoch.
Label wave: at the end of epoch e >= 1, PC_e = #samples whose training prediction changed since
epoch e - 1; at the first e >= 2 with PC_e >= PC_{e-1}, the weights at the end of epoch e - 1
are the base model. A real copy (CPU tensors, `.to("cpu", copy=True)`) of each epoch's weights is
kept until then (the authors' code aliases the live weights and saves the current ones instead).
If PC keeps decreasing to the end of stage 1, the weights at the end of stage 1 are the base.

With `stage1_frozen` (the authors' CIFAR-10 pretrained setting, a linear probe) stage 1 updates only
the head `fc`: the backbone's gradients are dropped before each optimiser step (so no weight decay or
Adam moments touch it either; BatchNorm statistics still follow the data, as with requires_grad
off). Dropping gradients rather than switching requires_grad keeps DDP's reducer consistent.

At the end of the last stage-1 epoch the class-wise Beta mixture is fitted with 20 EM iterations
on the normalised counts; after every stage-2 epoch it is refitted warm-started (2 iterations, the
authors' class-wise script). The parameters (per class a, b, pi of both components, and the count min/max) of
every fit so far are reported as ido_mixture.jsonl (one row per fit) and summarised in the epoch's
metrics; when clean labels are known, each epoch's count histograms (per class, right vs wrong
labels) are reported as ido_counts/epoch-NNNN.png (the trainer writes both under <run>/method/).

Stage 2: at its start (on_epoch_start of epoch stage1_epochs, or of the first epoch after a resume
past it) the base weights are loaded into the model and the optimiser state (momentum / Adam
moments, which belong to the later stage-1 trajectory) is cleared; the learning rate keeps
following the schedule (trainer's, or `stage2_schedule: cosine`). Per batch, with weak logits u and
strong logits v:

  1. the batch's wrong events are added to the counts (once per view, +0..2), FIRST;
  2. p_i, q_i and eps_i come from the live counts of the batch, normalised with the last fit's
     per-class min/max (dynamic posteriors, IDO.md step 5: a count above that max gives x > 1 and
     p = q = eps = 0, so a sample both views now get wrong can lose its CE weight in this step);
  3. P_i = clamp((softmax u_i + softmax v_i) / 2, 1e-4, 1 - 1e-4),  c_i = max_k P_ik,  H_i = -sum_k P_ik log P_ik

     loss = mean_i [ p_i (CE(u_i, y_i) + CE(v_i, y_i)) + eps_i mean_k (u_ik - v_ik)^2 ] + entropy term

     `entropy: batch` (default, the form the published numbers come from: the authors' code broadcasts
     c into a B x B product) = mean_i(c_i) * mean_j((1 - p_j) H_j); `entropy: per_sample` =
     mean_i (1 - p_i) c_i H_i. No stop-gradient anywhere, as the spec writes it.

The per-epoch p and eps over all samples (metrics, AUROC, `_p` / `_eps`) come from each fit.

The two views go through the model as two forward passes of B images (`view_forward: separate`,
the default: BatchNorm normalises each view with its own batch statistics, as LNL codebases that
call the network once per view do) or as one pass over the 2B concatenated images (`concat`:
one larger batch, usually faster on a GPU). On the CPU, separate passes cost 2.1x a CE step and a
concatenated one 2.9x (tiny_cnn, batch 128: the 2B activations fall out of cache; BENCHMARKS.md).

q_i, the posterior of the noisy component, is 1 - p_i for two components inside (0, 1) (both are 0
for x > 1), and eps_i = p_i F0(x_i) + (1 - q_i)(1 - F1(x_i)) is computed as written.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import ConfigError
from pipeline.load.batch import Batch
from pipeline.load.epochs import part_bounds
from state.spec import ArraySpec
from state.store import SampleStore
from training.evaluation import auroc
from training.methods.base import DataNeeds, EpochReport, Method, MethodContext, Run, StepOutput
from training.methods.common.beta_mixture import BetaMixture, count_ranges, normalise_counts, scale_counts
from training.plots import count_histograms

log = logging.getLogger(__name__)

WRONG_EVENT = "wrong_event"
PREV_PRED = "prev_pred"
CUR_PRED = "cur_pred"
MIXTURE_FILE = "ido_mixture.jsonl"
COUNTS_PLOT_DIR = "ido_counts"  # per-epoch histograms of the counts, right vs wrong labels, per class
PROB_CLAMP = 1e-4  # P_i is clamped to [1e-4, 1 - 1e-4] before the entropy (spec step 4)


class IDOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage1_epochs: int = Field(ge=1)  # E1: epochs of plain CE + counting; stage 2 = the remaining epochs
    em_iterations_first: int = Field(20, ge=1)  # EM iterations of the first fit (end of stage 1)
    em_iterations_refit: int = Field(2, ge=1)  # warm-started EM iterations after each stage-2 epoch (authors: 2)
    classwise: bool = True  # one mixture per noisy class (the ablation's better variant) or one for all
    reset_optimizer: bool = True  # clear momentum / Adam moments when stage 2 loads the base weights
    stage2_schedule: Literal["trainer", "cosine"] = "trainer"  # cosine: per epoch from the scheduled lr
    stage2_min_lr: float = Field(1e-4, ge=0)  # cosine: the lr it decays to at the end of stage 2
    view_forward: Literal["separate", "concat"] = "separate"  # two forward passes of B, or one of 2B
    entropy: Literal["batch", "per_sample"] = "batch"  # mean(c) * mean((1 - p) H) as the authors, or per sample
    stage1_frozen: bool = False  # stage 1 trains only the head `fc` (linear probe; authors' CIFAR-10 pretrained)


# ----------------------------------------------------------------------------------------------
# Pure parts (tested on their own)


def ido_loss(u: torch.Tensor, v: torch.Tensor, labels: torch.Tensor, p: torch.Tensor, eps: torch.Tensor,
             entropy: Literal["batch", "per_sample"] = "batch",
             global_mean: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The stage-2 loss (module docstring). u, v (B, K) float32 logits of the weak / strong view,
    labels (B,) int64 given labels, p and eps (B,) float32 per-sample weights -> {"loss", terms}.

    global_mean(x) -> the mean of x (B,) over the global batch of all processes, detached. With it the
    batch entropy term is the product of global-batch means, written so that the process-averaged
    gradient is that product's (mean_l(c) G_q + G_c mean_l(q) - G_c G_q, G = global means): several
    processes then train as one process with their joint batch does; the other terms are means of
    per-sample terms, which process averaging already gets right."""
    ce = F.cross_entropy(u, labels, reduction="none") + F.cross_entropy(v, labels, reduction="none")  # (B,)
    mse = (u - v).pow(2).mean(dim=1)  # (B,)
    probs = ((u.softmax(dim=1) + v.softmax(dim=1)) / 2).clamp(PROB_CLAMP, 1 - PROB_CLAMP)  # (B, K)
    confidence = probs.max(dim=1).values  # (B,)
    entropy_i = -(probs * probs.log()).sum(dim=1)  # (B,)
    ce_term, mse_term = (p * ce).mean(), (eps * mse).mean()
    if entropy == "batch":
        weighted = (1 - p) * entropy_i  # (B,)
        if global_mean is None:
            ent_term = confidence.mean() * weighted.mean()
        else:
            c_all, q_all = global_mean(confidence.detach()), global_mean(weighted.detach())
            ent_term = confidence.mean() * q_all + c_all * weighted.mean() - c_all * q_all
    else:
        ent_term = ((1 - p) * confidence * entropy_i).mean()
    return {"loss": ce_term + mse_term + ent_term, "ce": ce_term.detach(), "consistency": mse_term.detach(),
            "entropy": ent_term.detach()}


def global_batch_mean(accelerator, x: torch.Tensor) -> torch.Tensor:
    """mean of x (B,) over every process's batch (sums and counts all-reduced on the device)."""
    totals = accelerator.reduce(torch.stack([x.sum(), torch.tensor(float(x.numel()), device=x.device)]), "sum")
    return totals[0] / totals[1]


def prediction_changes(prev: np.ndarray, cur: np.ndarray) -> int:
    """PC: samples predicted in both epochs (>= 0) whose prediction differs."""
    seen = (prev >= 0) & (cur >= 0)
    return int(np.count_nonzero(prev[seen] != cur[seen]))


@dataclass
class LabelWave:
    """Base-model selection from prediction-change counts (IDO.md stage 1)."""

    changes: list[tuple[int, int]] = field(default_factory=list)  # (epoch, PC), 0-based epochs
    base_epoch: int | None = None  # 0-based epoch whose end-of-epoch weights are the base model

    def observe(self, epoch: int, pc: int) -> bool:
        """Records PC of `epoch`; True when it stopped decreasing here, so the base is epoch - 1."""
        previous = self.changes[-1][1] if self.changes else None
        self.changes.append((epoch, pc))
        if self.base_epoch is None and previous is not None and pc >= previous:
            self.base_epoch = epoch - 1
            return True
        return False


def _cpu_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A real copy of the weights (never a view of the live tensors)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# The method


class IDO(Method):
    name = "ido"
    Config = IDOConfig
    needs = DataNeeds(views=("weak", "strong"))

    def __init__(self, config: IDOConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        if config.stage1_epochs >= ctx.epochs:
            raise ConfigError(
                f"method.params.stage1_epochs={config.stage1_epochs} leaves no stage 2 in a run of {ctx.epochs} "
                f"epochs: set method.params.stage1_epochs below epochs (stage 2 = the remaining epochs)"
            )
        self.device = ctx.noisy_labels.device
        self.labels = ctx.noisy_labels.cpu().numpy().astype(np.int64)  # (N,)
        self.wave = LabelWave()
        self.mixture: BetaMixture | None = None
        self.mixture_history: list[dict] = []  # one JSON row per fit, reported whole as ido_mixture.jsonl
        self.base_weights: dict[str, torch.Tensor] | None = None
        self._last_weights: dict[str, torch.Tensor] | None = None  # previous epoch's copy, until the base is chosen
        self.stage2_started = False
        self.ranges: tuple[np.ndarray, np.ndarray] | None = None  # last fit's per-group count (min, max)
        self._p: torch.Tensor | None = None  # (N,) float32 clean posterior of the last fit, for diagnostics
        self._eps: torch.Tensor | None = None  # (N,) float32

    def state_arrays(self) -> list[ArraySpec]:
        return [ArraySpec(WRONG_EVENT, (), "int32", 0), ArraySpec(PREV_PRED, (), "int32", -1),
                ArraySpec(CUR_PRED, (), "int32", -1)]

    @property
    def stage1_epochs(self) -> int:
        return self.config.stage1_epochs

    # ------------------------------------------------------------------ steps

    def on_epoch_start(self, run: Run) -> None:
        if run.epoch >= self.stage1_epochs and not self.stage2_started:
            self._begin_stage2(run)

    def train_step(self, batch: Batch, labels: torch.Tensor, run: Run) -> StepOutput:
        if run.epoch < self.stage1_epochs:
            return self._stage1_step(batch, labels, run)
        return self._stage2_step(batch, labels, run)

    def _stage1_step(self, batch: Batch, labels: torch.Tensor, run: Run) -> StepOutput:
        model = run.models["model"]
        with run.accelerator.autocast():
            logits = model(batch.images)  # (B, K), the weak view
            loss = F.cross_entropy(logits.float(), labels)
        pred = logits.detach().argmax(dim=1)  # (B,)
        run.store.add(WRONG_EVENT, batch.idx, (pred != labels).to(torch.int32))
        run.store.set(CUR_PRED, batch.idx, pred.to(torch.int32))
        run.accelerator.backward(loss)
        if self.config.stage1_frozen:
            head = {id(q) for q in run.unwrap().fc.parameters()}
            for param in model.parameters():
                if id(param) not in head:
                    param.grad = None  # the optimiser skips it: no step, no weight decay, no moments
        run.step()
        return StepOutput(terms={"loss": loss}, logits=logits.detach())

    def _stage2_step(self, batch: Batch, labels: torch.Tensor, run: Run) -> StepOutput:
        model, accelerator = run.models["model"], run.accelerator
        views = batch.views
        if "weak" not in views or "strong" not in views:
            raise RuntimeError(
                f"IDO stage 2 needs batch.views['weak'] and ['strong'] (got {sorted(views)}): the trainer must build "
                f"the training loader with make_loader(..., views=method.needs.views)"
            )
        with accelerator.autocast():
            if self.config.view_forward == "concat":
                u, v = model(torch.cat([views["weak"], views["strong"]])).split(len(batch))  # (B, K) each
            else:
                u, v = model(views["weak"]), model(views["strong"])  # (B, K) each
        u, v = u.float(), v.float()
        wrong = (u.detach().argmax(dim=1) != labels).to(torch.int32) + (v.detach().argmax(dim=1) != labels).to(torch.int32)
        run.store.add(WRONG_EVENT, batch.idx, wrong)  # (B,) in {0, 1, 2}: once per view, before the weights
        p, eps = self.live_posteriors(run.store, batch.idx)
        terms = ido_loss(u, v, labels, p, eps, self.config.entropy,
                         global_mean=partial(global_batch_mean, accelerator) if accelerator.num_processes > 1 else None)
        run.update(terms["loss"])
        return StepOutput(terms=terms, logits=u.detach())

    def _begin_stage2(self, run: Run) -> None:
        if self.base_weights is not None:
            run.unwrap().load_state_dict(self.base_weights)
            log.info("IDO stage 2 starts from the base model (label wave: epoch %s)",
                     None if self.wave.base_epoch is None else self.wave.base_epoch + 1)
        else:
            log.info("IDO stage 2 starts from the weights at the end of stage 1 (the label wave did not turn)")
        if self.config.reset_optimizer:
            optimizer = run.optimizers["model"]
            getattr(optimizer, "optimizer", optimizer).state.clear()  # AcceleratedOptimizer wraps the torch one
        if self.mixture is None:  # e.g. stage1_epochs changed on resume: fit now
            self._fit(run.store, self.stage1_epochs - 1)
        self.stage2_started = True

    def lr_factor(self, epoch: float, factor: float) -> float:
        """With stage2_schedule=cosine: a per-epoch cosine over stage 2 from the configured lr down to
        stage2_min_lr; stage 1 follows the configured schedule."""
        if self.config.stage2_schedule != "cosine" or epoch < self.stage1_epochs:
            return factor
        t = (math.floor(epoch) - self.stage1_epochs) / (self.ctx.epochs - self.stage1_epochs)
        low = self.config.stage2_min_lr / self.ctx.base_lr
        return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * t))

    # ------------------------------------------------------------------ epoch end

    def on_epoch_end(self, run: Run) -> EpochReport:
        report = EpochReport()
        if run.epoch < self.stage1_epochs:
            report.metrics.update(self._label_wave(run))
        if run.epoch >= self.stage1_epochs - 1:
            report.metrics.update(self._fit(run.store, run.epoch))
            report.texts[MIXTURE_FILE] = "".join(json.dumps(r) + "\n" for r in self.mixture_history)
        self._diagnostics(run, report)
        return report

    def _label_wave(self, run: Run) -> dict[str, float]:
        epoch, store = run.epoch, run.store
        cur, prev = store[CUR_PRED], store[PREV_PRED]
        out: dict[str, float] = {}
        if epoch >= 1:
            pc = prediction_changes(prev, cur)
            out["prediction_changes"] = pc
            if self.wave.observe(epoch, pc):
                self.base_weights = self._last_weights
                log.info("label wave: PC %d at epoch %d did not decrease; base model = weights of epoch %d",
                         pc, epoch + 1, epoch)
        if self.wave.base_epoch is None and epoch < self.stage1_epochs - 1:
            self._last_weights = _cpu_copy(run.unwrap())  # a later epoch may still choose these
        else:
            self._last_weights = None
        if epoch == self.stage1_epochs - 1 and self.wave.base_epoch is None:
            log.warning("label wave: PC decreased through all %d stage-1 epochs; the base model is the last one",
                        self.stage1_epochs)
        if self.wave.base_epoch is not None:
            out["base_epoch"] = self.wave.base_epoch + 1  # 1-based, like the metrics' "epoch"
        self._copy_predictions(store, cur)
        return out

    def _copy_predictions(self, store: SampleStore, cur: np.ndarray) -> None:
        """prev_pred := cur_pred; collective: each process sets its own block of idx."""
        comm = store.comm
        start, stop = part_bounds(store.num_samples, comm.num_processes, comm.process_index)
        idx = torch.arange(start, stop, dtype=torch.int64, device=self.device)
        store.set(PREV_PRED, idx, torch.from_numpy(np.array(cur[start:stop])).to(self.device))

    @staticmethod
    def _active(store: SampleStore) -> np.ndarray:
        """Samples trained on (predicted at least once in stage 1): the held-out clean subset is not."""
        return store[CUR_PRED] >= 0

    def _fit(self, store: SampleStore, epoch: int) -> dict[str, float]:
        counts, active = store[WRONG_EVENT], self._active(store)
        k = self.ctx.num_classes
        x = normalise_counts(counts, self.labels, k, classwise=self.config.classwise, active=active)
        first = self.mixture is None
        if first:
            self.mixture = BetaMixture.initial(k if self.config.classwise else 1)
        groups = self._groups(self.labels)
        iterations = self.config.em_iterations_first if first else self.config.em_iterations_refit
        self.mixture.fit(x, groups, iterations, active=active)
        self._set_posteriors(x, groups)
        lo, hi = self.ranges = count_ranges(counts, self.labels, k, classwise=self.config.classwise, active=active)
        self.mixture_history.append({
            "epoch": epoch + 1, "iterations": iterations, "classwise": self.config.classwise,
            "count_min": np.where(np.isfinite(lo), lo, np.nan).tolist(),
            "count_max": np.where(np.isfinite(hi), hi, np.nan).tolist(), **self.mixture.to_dict(),
        })
        p = self._p.cpu().numpy()[active]
        return {"ido_p_mean": float(p.mean()), "ido_clean_fraction": float((p > 0.5).mean()),
                "ido_eps_mean": float(self._eps.cpu().numpy()[active].mean())}

    def _groups(self, labels: np.ndarray) -> np.ndarray:
        return labels if self.config.classwise else np.zeros_like(labels)

    def live_posteriors(self, store: SampleStore, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p and eps (B,) float32 on the device for the batch idx, from the live counts scaled by the last
        fit's min/max (dynamic posteriors, module docstring)."""
        if self.mixture is None or self.ranges is None:
            raise RuntimeError("IDO stage 2 has no fitted mixture: the first fit runs at the end of stage 1")
        groups = self._groups(self.labels[idx.cpu().numpy()])
        counts = torch.as_tensor(store.gather(WRONG_EVENT, idx)).cpu().numpy()  # (B,) host: the mixture is numpy
        x = scale_counts(counts, groups, *self.ranges)
        post = self.mixture.posteriors(x, groups)
        return (torch.from_numpy(post.p.astype(np.float32)).to(self.device),
                torch.from_numpy(post.eps.astype(np.float32)).to(self.device))

    def _set_posteriors(self, x: np.ndarray, groups: np.ndarray) -> None:
        post = self.mixture.posteriors(x, groups)
        self._p = torch.from_numpy(post.p.astype(np.float32)).to(self.device)  # (N,)
        self._eps = torch.from_numpy(post.eps.astype(np.float32)).to(self.device)  # (N,)

    def _diagnostics(self, run: Run, report: EpochReport) -> None:
        """Adds to `report` (clean labels known) the AUROC of the wrong-event count and of 1 - p for
        finding the mislabelled samples, and the per-class count histograms of right and wrong labels as
        ido_counts/epoch-NNNN.png."""
        if self.ctx.clean_labels is None:
            return
        active = self._active(run.store)
        wrong = (self.labels != self.ctx.clean_labels.cpu().numpy())[active]
        counts = run.store[WRONG_EVENT][active]
        report.metrics["we_auroc"] = auroc(counts, wrong)
        if self._p is not None:
            report.metrics["p_auroc"] = auroc(1.0 - self._p.cpu().numpy()[active], wrong)
        epoch = run.epoch + 1
        report.figures[f"{COUNTS_PLOT_DIR}/epoch-{epoch:04d}.png"] = count_histograms(
            counts, self.labels[active], wrong, self.ctx.num_classes, self.ctx.class_names,
            f"IDO wrong-event counts per given class, epoch {epoch}")

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """What --resume needs besides the sample store (trainer: register_for_checkpointing(method))."""
        return {
            "wave": {"changes": self.wave.changes, "base_epoch": self.wave.base_epoch},
            "base_weights": self.base_weights, "last_weights": self._last_weights,
            "mixture": self.mixture.to_dict() if self.mixture is not None else None,
            "mixture_history": self.mixture_history, "stage2_started": self.stage2_started,
            "ranges": None if self.ranges is None else [r.tolist() for r in self.ranges],
        }

    def load_state_dict(self, state: dict) -> None:
        self.wave = LabelWave(changes=[tuple(c) for c in state["wave"]["changes"]],
                              base_epoch=state["wave"]["base_epoch"])
        self.base_weights = state["base_weights"]
        self._last_weights = state["last_weights"]
        self.mixture = BetaMixture.from_dict(state["mixture"]) if state["mixture"] is not None else None
        self.mixture_history = list(state["mixture_history"])
        self.stage2_started = state["stage2_started"]
        self.ranges = None if state["ranges"] is None else tuple(np.asarray(r, dtype=np.float64) for r in state["ranges"])
        self._p = self._eps = None  # the next fit's diagnostics
