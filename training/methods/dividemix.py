"""DivideMix (Li, Socher, Hoi, ICLR 2020): noisy labels as semi-supervised learning, two networks.
State: clean_prob[N, 2] float32, P(clean label) of each sample from network j's loss mixture (column 0
"model", column 1 "peer"; -1 before the first division), for the step, the diagnostics and the record;
with loss_history H > 1 also loss_history[N, H, 2] float32, each network's normalised losses of the
last H divisions, newest first (-1 where none yet).

Warm-up (epoch < warmup_epochs): both networks train with CE on the given labels (plus the negative
entropy mean_i sum_k p_ik log p_ik, a penalty on confident predictions, with warmup_penalty: the
authors' setting for asymmetric noise, whose wrong labels a network otherwise fits with small losses).

Then at every epoch start (Algorithm 1):
  co-divide  an eval pass over the training split (eval transform) gives each network's per-sample CE
             on the given labels; each loss vector is min-max normalised to [0, 1], gets a two-component
             1-D Gaussian mixture (the authors' sklearn settings: reg_covar 5e-4, tol 1e-2, max_iter 10;
             `fit_gmm` below is that EM in numpy, deterministic, so every process divides alike), and
             w_i = the posterior of the smaller-mean component. Each network trains on the division
             made by the OTHER one (labelled: w_i > p_threshold, with its w_i; unlabelled: the rest),
             so a network's own selection errors are not fed back into it.
  history    with loss_history H > 1 the mixture is fitted instead to each sample's mean of its
             normalised losses over the last H divisions (fewer while fewer exist), not normalised
             again: the authors' CIFAR script does this with H = 5 at 90 % symmetric noise ("to improve
             convergence stability"; it normalises each epoch's vector, appends it to a per-network list
             and averages the last 5), and uses one epoch otherwise. The history is per-sample state,
             so it lives in the sample store, which the trainer snapshots with every checkpoint: a
             --resume averages over the same epochs as an uninterrupted run.
Per batch, for each network in turn ("model", then "peer"), with two weak views of every sample:
  co-refinement  labelled targets  sharpen(w y + (1 - w) mean_views p_net, T)
  co-guessing    unlabelled targets sharpen(mean over both views and both networks of p, T), the other
                 network in eval mode, as the authors do
  MixMatch       l ~ Beta(alpha, alpha), l' = max(l, 1 - l) (so a mixed row stays nearest its own
                 sample), mixed with a random permutation of all 2B rows
  loss           L_x = soft CE over rows whose own sample is labelled, L_u = squared error of the
                 probabilities over the unlabelled rows (mean over rows and classes), lambda_u ramped
                 linearly from 0 over `rampup_epochs` after warm-up (the authors' linear_rampup), plus
                 the uniform-prior regulariser sum_k pi_k log(pi_k / mean_i p_ik), pi = 1/K.
Evaluation (`predict`): the mean of both networks' logits (the authors add them: the same argmax).

Batches: the authors draw 64 labelled and 64 unlabelled samples per step from two loaders rebuilt every
epoch. Here the trainer's own stream is divided inside each batch: a batch of B holds the labelled and
unlabelled samples in the division's proportion, and an epoch visits every sample once (the authors'
epoch is |labelled| / 64 steps, cycling the unlabelled set). The division's masks act as weights, so a
step never reads a data-dependent size from the device.

Several processes: the eval pass is gathered by idx (every sample's loss once), every process fits the
same mixture and stores the same clean_prob; each process mixes within its own batch and DDP averages
the gradients. B is per process.
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
from training.evaluation import auroc
from training.methods.base import DataNeeds, EpochReport, Method, Run, StepOutput

CLEAN_PROB = "clean_prob"
LOSS_HISTORY = "loss_history"
NETS = ("model", "peer")  # column j of clean_prob belongs to NETS[j]
GMM_REG_COVAR, GMM_TOL, GMM_MAX_ITER = 5e-4, 1e-2, 10  # the authors' GaussianMixture settings


class DivideMixConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lambda_u: float = Field(ge=0)  # weight of L_u after the ramp; per noise level (the recipes' table)
    warmup_epochs: int = Field(10, ge=0)  # CE-only epochs (the authors: 10 on CIFAR-10, 30 on CIFAR-100)
    p_threshold: float = Field(0.5, gt=0, lt=1)  # clean probability above which a sample is labelled
    temperature: float = Field(0.5, gt=0)  # T of the sharpening
    alpha: float = Field(4.0, gt=0)  # Beta(alpha, alpha) of MixMatch
    rampup_epochs: float = Field(16, gt=0)  # epochs over which lambda_u grows linearly after warm-up
    warmup_penalty: bool = False  # negative-entropy penalty during warm-up (the authors: asymmetric noise)
    uniform_prior: bool = True  # the regulariser towards a uniform mean prediction
    # divisions whose normalised losses are averaged per sample before the mixture is fitted (the authors:
    # 5 at 90 % symmetric noise, 1 otherwise); above 1 the sample store keeps them (loss_history[N, H, 2])
    loss_history: int = Field(1, ge=1)


# ----------------------------------------------------------------------------------------------
# Co-divide: a two-component Gaussian mixture on the per-sample losses


def fit_gmm(x: np.ndarray, *, max_iter: int = GMM_MAX_ITER, tol: float = GMM_TOL,
            reg_covar: float = GMM_REG_COVAR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for a two-component 1-D Gaussian mixture on x (n,), as sklearn's GaussianMixture with its default
    k-means initialisation (here 1-D Lloyd iterations from the minimum and the maximum, deterministic):
    stops when the mean log-likelihood changes by less than tol, or after max_iter iterations; reg_covar
    is added to each variance. Returns (means, variances, weights), each (2,)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    centres = np.array([x.min(), x.max()])
    upper = np.abs(x - centres[1]) < np.abs(x - centres[0])
    for _ in range(100):
        moved = np.array([x[~upper].mean() if (~upper).any() else centres[0],
                          x[upper].mean() if upper.any() else centres[1]])
        upper_next = np.abs(x - moved[1]) < np.abs(x - moved[0])
        centres = moved
        if np.array_equal(upper_next, upper):
            break
        upper = upper_next
    resp = np.stack([~upper, upper], axis=1).astype(np.float64)  # (n, 2)
    params = _m_step(x, resp, reg_covar)
    previous = -np.inf
    for _ in range(max_iter):
        log_joint = _log_joint(x, *params)  # (n, 2)
        log_norm = np.logaddexp(log_joint[:, 0], log_joint[:, 1])  # (n,)
        params = _m_step(x, np.exp(log_joint - log_norm[:, None]), reg_covar)
        current = log_norm.mean()
        if abs(current - previous) < tol:
            break
        previous = current
    return params


def _m_step(x: np.ndarray, resp: np.ndarray, reg_covar: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps  # (2,); sklearn's guard against an empty component
    means = resp.T @ x / counts
    variances = (resp * (x[:, None] - means) ** 2).sum(axis=0) / counts + reg_covar
    return means, variances, counts / x.shape[0]


def _log_joint(x: np.ndarray, means, variances, weights) -> np.ndarray:
    """log(weight_c N(x | mean_c, variance_c)), (n, 2)."""
    return np.log(weights) - 0.5 * (np.log(2 * np.pi * variances) + (x[:, None] - means) ** 2 / variances)


def gmm_posterior(x: np.ndarray, means, variances, weights) -> np.ndarray:
    """Posterior of each component for x (n,) -> (n, 2)."""
    log_joint = _log_joint(np.asarray(x, dtype=np.float64).reshape(-1), means, variances, weights)
    return np.exp(log_joint - np.logaddexp(log_joint[:, 0], log_joint[:, 1])[:, None])


def min_max(losses: np.ndarray) -> np.ndarray:
    """Per-sample losses (n,) -> (n,) float64 in [0, 1]: (l - min) / (max - min)."""
    losses = np.asarray(losses, dtype=np.float64)
    return (losses - losses.min()) / max(losses.max() - losses.min(), np.finfo(np.float64).tiny)


def mixture_clean_probability(x: np.ndarray) -> np.ndarray:
    """Normalised (or history-averaged) losses (n,) -> P(clean) (n,): the mixture fitted to x as given, the
    posterior of its smaller-mean component (small loss: a label the network fits early)."""
    x = np.asarray(x, dtype=np.float64)
    means, variances, weights = fit_gmm(x)
    return gmm_posterior(x, means, variances, weights)[:, int(np.argmin(means))]


# ----------------------------------------------------------------------------------------------
# Targets and MixMatch


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """p (B, K) -> p^(1/T), normalised over k."""
    p = p ** (1.0 / temperature)
    return p / p.sum(dim=1, keepdim=True)


def co_refine(one_hot: torch.Tensor, w: torch.Tensor, p_net: torch.Tensor, temperature: float) -> torch.Tensor:
    """Labelled targets: one_hot (B, K) given labels, w (B,) clean probabilities from the other
    network's division, p_net (B, K) this network's prediction averaged over the views."""
    return sharpen(w[:, None] * one_hot + (1 - w[:, None]) * p_net, temperature)


def co_guess(p_net: torch.Tensor, p_other: torch.Tensor, temperature: float) -> torch.Tensor:
    """Unlabelled targets: both networks' predictions (B, K), each averaged over the views, averaged."""
    return sharpen((p_net + p_other) / 2, temperature)


def mixmatch(inputs: torch.Tensor, targets: torch.Tensor, lam: float,
             perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs (M, ...), targets (M, K) mixed with their permutation perm (M,) by l' = max(lam, 1 - lam)."""
    lam = max(lam, 1.0 - lam)
    return lam * inputs + (1 - lam) * inputs[perm], lam * targets + (1 - lam) * targets[perm]


def semi_loss(logits: torch.Tensor, targets: torch.Tensor,
              labelled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_x, L_u) on mixed rows: logits, targets (M, K); labelled (M,) bool, whether the row's own
    (unpermuted) sample is labelled. L_x: soft CE averaged over labelled rows; L_u: squared error of
    the probabilities averaged over unlabelled rows and classes. An empty side gives 0."""
    lab = labelled.to(logits.dtype)  # (M,)
    soft_ce = -(F.log_softmax(logits, dim=1) * targets).sum(dim=1)  # (M,)
    sq_err = ((F.softmax(logits, dim=1) - targets) ** 2).mean(dim=1)  # (M,)
    lx = (soft_ce * lab).sum() / lab.sum().clamp_min(1)
    lu = (sq_err * (1 - lab)).sum() / (1 - lab).sum().clamp_min(1)
    return lx, lu


def uniform_prior_penalty(logits: torch.Tensor) -> torch.Tensor:
    """sum_k pi_k log(pi_k / mean_i p_ik) with pi = 1/K: KL from the uniform prior to the mean prediction."""
    k = logits.shape[1]
    mean_p = F.softmax(logits, dim=1).mean(dim=0)  # (K,)
    return (math.log(1.0 / k) - torch.log(mean_p)).sum() / k


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """mean_i sum_k p_ik log p_ik: lower for less confident predictions."""
    log_p = F.log_softmax(logits, dim=1)
    return (log_p.exp() * log_p).sum(dim=1).mean()


def linear_rampup(epoch: float, start: float, length: float) -> float:
    """0 before `start`, rising linearly to 1 over `length` epochs."""
    return float(np.clip((epoch - start) / length, 0.0, 1.0))


class DivideMix(Method):
    name = "dividemix"
    Config = DivideMixConfig
    needs = DataNeeds(views=("weak", "weak2"), train_eval=True)

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self._step = 0  # batches taken this epoch, for the fractional epoch of the ramp

    def state_arrays(self) -> list[ArraySpec]:
        specs = [ArraySpec(CLEAN_PROB, (len(NETS),), "float32", -1.0)]
        if self.config.loss_history > 1:  # in the store, so that it is checkpointed with the division it feeds
            specs.append(ArraySpec(LOSS_HISTORY, (self.config.loss_history, len(NETS)), "float32", -1.0))
        return specs

    def build_models(self) -> dict[str, nn.Module]:
        return {name: self.ctx.build_model() for name in NETS}  # two initialisations, diverged from the start

    def predict(self, models: dict[str, nn.Module], images: torch.Tensor) -> torch.Tensor:
        return (models["model"](images) + models["peer"](images)) / 2

    # ------------------------------------------------------------------ co-divide

    def _losses(self, models: dict[str, nn.Module], batch: Batch) -> torch.Tensor:
        """(B, 2): each network's CE on the given labels, eval mode and eval transform."""
        labels = self.ctx.noisy_labels[batch.idx]
        return torch.stack([F.cross_entropy(models[n](batch.images).float(), labels, reduction="none")
                            for n in NETS], dim=1)

    def on_epoch_start(self, run: Run) -> None:
        self._step = 0
        if run.epoch < self.config.warmup_epochs:
            return
        idx, losses = run.eval_train(self._losses)  # (n,), (n, 2): every training sample once, by idx
        losses = losses.double().cpu().numpy()
        x = np.stack([min_max(losses[:, j]) for j in range(len(NETS))], axis=1)  # (n, 2) in [0, 1]
        if self.config.loss_history > 1:
            x = self._history_mean(run, idx, x)
        prob = np.stack([mixture_clean_probability(x[:, j]) for j in range(len(NETS))], axis=1)  # (n, 2)
        run.store.set(CLEAN_PROB, idx, torch.from_numpy(prob).to(idx.device))

    def _history_mean(self, run: Run, idx: torch.Tensor, normalised: np.ndarray) -> np.ndarray:
        """Pushes this epoch's normalised losses (n, 2) into the samples' histories (newest first; the oldest
        of H drops out) and returns each sample's mean over the epochs its history holds (n, 2)."""
        past = np.asarray(torch.as_tensor(run.store.gather(LOSS_HISTORY, idx)).cpu())  # (n, H, 2), -1: empty
        history = np.concatenate([normalised[:, None].astype(np.float32), past[:, :-1]], axis=1)  # (n, H, 2)
        run.store.set(LOSS_HISTORY, idx, torch.from_numpy(history).to(idx.device))
        held = history >= 0  # a normalised loss is never negative
        return np.where(held, history, 0).sum(axis=1, dtype=np.float64) / held.sum(axis=1)

    # ------------------------------------------------------------------ steps

    def train_step(self, batch: Batch, labels: torch.Tensor, run: Run) -> StepOutput:
        self._step += 1
        if run.epoch < self.config.warmup_epochs:
            return self._warmup_step(batch, labels, run)
        prob = torch.as_tensor(run.store.gather(CLEAN_PROB, batch.idx), device=labels.device)  # (B, 2)
        progress = run.epoch + (self._step - 1) / run.steps  # fractional epochs done, as the authors' ramp
        lambda_u = self.config.lambda_u * linear_rampup(progress, self.config.warmup_epochs,
                                                        self.config.rampup_epochs)
        out = {}
        for j, net in enumerate(NETS):
            w = prob[:, 1 - j]  # co-divide: the division the OTHER network's mixture made
            out[net] = self._semi_step(run, net, NETS[1 - j], batch, labels, w, lambda_u)
        (loss, lx, lu, logits), (peer_loss, peer_lx, peer_lu, _) = out["model"], out["peer"]
        return StepOutput(terms={"loss": loss, "lx": lx, "lu": lu, "peer_loss": peer_loss, "peer_lx": peer_lx,
                                 "peer_lu": peer_lu}, logits=logits)

    def _semi_step(self, run: Run, name: str, other_name: str, batch: Batch, labels: torch.Tensor,
                   w: torch.Tensor, lambda_u: float):
        """One MixMatch step of network `name` on its division (w (B,) from network `other_name`); returns
        (loss, L_x, L_u, the network's logits on the weak view (B, K)), all detached."""
        cfg, accelerator = self.config, run.accelerator
        net, other = run.models[name], run.models[other_name]
        b = labels.shape[0]
        labelled = w > cfg.p_threshold  # (B,) bool
        views = torch.cat([batch.views["weak"], batch.views["weak2"]])  # (2B, 3, H, W)
        with torch.no_grad():
            with accelerator.autocast():
                net_logits = net(views).float()  # (2B, K), train mode as the authors' refinement and guess
            other_mode = other.training
            other.eval()
            with accelerator.autocast():
                other_logits = other(views).float()  # (2B, K)
            other.train(other_mode)
            k = net_logits.shape[1]
            p_net = F.softmax(net_logits, dim=1).view(2, b, k).mean(dim=0)  # (B, K)
            p_other = F.softmax(other_logits, dim=1).view(2, b, k).mean(dim=0)  # (B, K)
            refined = co_refine(F.one_hot(labels, k).float(), w, p_net, cfg.temperature)
            guessed = co_guess(p_net, p_other, cfg.temperature)
            targets = torch.where(labelled[:, None], refined, guessed)  # (B, K)
        lam = float(np.random.beta(cfg.alpha, cfg.alpha))  # numpy's global stream: seeded and checkpointed
        perm = torch.randperm(2 * b, device=views.device)
        mixed_x, mixed_t = mixmatch(views, targets.repeat(2, 1), lam, perm)
        with accelerator.autocast():
            mixed_logits = net(mixed_x).float()  # (2B, K)
        lx, lu = semi_loss(mixed_logits, mixed_t, labelled.repeat(2))
        loss = lx + lambda_u * lu
        if cfg.uniform_prior:
            loss = loss + uniform_prior_penalty(mixed_logits)
        run.update(loss, (name,))
        return loss.detach(), lx.detach(), lu.detach(), net_logits[:b]

    def _warmup_step(self, batch: Batch, labels: torch.Tensor, run: Run) -> StepOutput:
        with run.accelerator.autocast():
            logits = {n: run.models[n](batch.images).float() for n in NETS}  # (B, K) each
        losses = {}
        for n in NETS:
            losses[n] = F.cross_entropy(logits[n], labels)
            if self.config.warmup_penalty:
                losses[n] = losses[n] + negative_entropy(logits[n])
        # the two networks share no parameters: one backward of the sum gives each its own gradient
        run.update(losses["model"] + losses["peer"], NETS)
        return StepOutput(terms={"loss": losses["model"].detach(), "peer_loss": losses["peer"].detach()},
                          logits=logits["model"].detach())

    # ------------------------------------------------------------------ diagnostics

    def on_epoch_end(self, run: Run) -> EpochReport:
        """For the division each network's mixture made this epoch (suffix _model / _peer; the one made by
        "peer" is what "model" trained on): labelled_frac, and with clean labels (diagnostics only)
        labelled_precision (right labels among the labelled), labelled_recall (labelled among the right
        labels) and clean_prob_auroc (AUROC of 1 - clean_prob as a detector of wrong labels)."""
        if run.epoch < self.config.warmup_epochs:
            return EpochReport()
        prob = run.store[CLEAN_PROB]  # (N, 2)
        divided = prob[:, 0] >= 0  # every sample of the training stream (not the clean meta subset)
        row = {}
        right = None
        if self.ctx.clean_labels is not None:
            right = (self.ctx.noisy_labels == self.ctx.clean_labels).cpu().numpy()[divided]
        for j, net in enumerate(NETS):
            p = prob[divided, j]
            labelled = p > self.config.p_threshold
            row[f"labelled_frac_{net}"] = float(labelled.mean())
            if right is not None:
                hits = float((labelled & right).sum())
                row[f"labelled_precision_{net}"] = hits / max(float(labelled.sum()), 1.0)
                row[f"labelled_recall_{net}"] = hits / max(float(right.sum()), 1.0)
                row[f"clean_prob_auroc_{net}"] = auroc(-p, ~right)
        return EpochReport(metrics=row)
