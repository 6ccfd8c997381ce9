"""SOP, sparse over-parameterization (Liu, Zhu, Qu, You, "Robust training under label noise by
over-parameterization", ICML 2022). State: u[N] float32 and v[N, K] float32, the per-sample
over-parameterised label noise s_i = u_i^2 y_i - v_i^2 (1 - y_i), trained by plain SGD beside the network.

Per batch, with p_i = softmax(f(x_i)), y_i the one-hot given label and eps = 1e-4:
    U_i = clamp(u_i^2 y_i, 0, 1),  V_i = clamp(v_i^2 (1 - y_i), 0, 1)                         (B, K)
    q_i = clamp(normalise_L1(clamp(p_i + U_i - sg(V_i), min=eps)), min=eps)
    ce  = mean_i -sum_k y_ik log q_ik                  trains the network and u (v stop-gradient)
    mse = mean_i ||onehot(argmax f(x_i)) + sg(U_i) - V_i - y_i||^2    trains v only
and u <- u - lr_u d(ce)/du, v <- v - lr_v d(mse)/dv on the batch's rows (SGD, no momentum, no weight
decay, constant learning rates: the authors' separate optimiser, which their code never schedules).
A label the network disagrees with makes u_i^2 grow (it adds mass to the given class, so the network
need not), and v_i^2 learns the mass the prediction puts elsewhere; u_i^2 is therefore a per-sample
wrong-label score, reported each epoch (`sop_u2_right`, `sop_u2_wrong`, `sop_u2_auroc`).
SOP+ (the consistency and class-balance terms with a second, AutoAugment view) is `sop_plus`.

Where u and v live: as SampleStore arrays, not as torch parameters. Each step gathers the batch's rows,
differentiates the loss with respect to those rows only (autograd on (B,) and (B, K) leaves, which
never touches the network's backward) and applies the SGD step with `store.add(idx, -lr * grad)`.
That update is the authors' SGD on the full (N, K) parameter restricted to the rows with a non-zero
gradient, and in this form it is gathered from every process and applied in the same order
everywhere, so the replicas stay identical under DDP; it is persisted in Zarr with every checkpoint
and restored by --resume like all per-sample state. As an nn.Parameter, v would instead be a
(N, K) dense gradient all-reduced by DDP every step (5M floats on CIFAR-100) and checkpointed whole.
The gradient is that of this process's batch mean, so each sample's update is the one a single
process with the same per-process batch size would make.

Initialisation: u = v = init_scale (1e-8) for every sample. The authors draw N(0, 1e-8^2); only u^2
and v^2 enter the loss and each entry evolves on its own (the loss is separable per entry), so a
constant of the same magnitude behaves alike. It must not be 0: d/du of u^2 vanishes there.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from pipeline.load.batch import Batch
from state.spec import ArraySpec
from training.evaluation import auroc
from training.methods.base import EpochReport, Method, Run

U = "u"
V = "v"
EPS = 1e-4  # probability floor of the reconstructed prediction (the authors' value)


class SOPConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr_u: float = Field(10.0, gt=0)  # SGD learning rate of u (per unit of batch-mean loss gradient); constant
    lr_v: float = Field(10.0, gt=0)  # SGD learning rate of v; constant
    init_scale: float = Field(1e-8, gt=0)  # starting value of every u_i and v_ik (authors: N(0, 1e-8^2))


def sop_losses(logits: torch.Tensor, onehot: torch.Tensor, u: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ce, mse, q) of the module docstring. logits (B, K) float32, onehot (B, K) given labels,
    u (B,), v (B, K) the batch's rows. ce reaches the network and u; mse reaches v only; q (B, K) is
    the reconstructed prediction (SOP+'s class-balance term is taken on it)."""
    u2 = torch.clamp(u[:, None] ** 2 * onehot, 0.0, 1.0)  # (B, K), non-zero on the given class only
    v2 = torch.clamp(v ** 2 * (1.0 - onehot), 0.0, 1.0)  # (B, K), zero on the given class
    q = torch.clamp(F.softmax(logits, dim=1) + u2 - v2.detach(), min=EPS)
    q = torch.clamp(q / q.sum(dim=1, keepdim=True), min=EPS)  # (B, K) reconstructed prediction
    ce = -(onehot * q.log()).sum(dim=1).mean()
    hard = F.one_hot(logits.detach().argmax(dim=1), logits.shape[1]).to(logits.dtype)  # (B, K)
    mse = ((hard + u2.detach() - v2 - onehot) ** 2).sum(dim=1).mean()
    return ce, mse, q


def class_balance(q: torch.Tensor) -> torch.Tensor:
    """SOP+'s class-balance term on predictions q (B, K): -sum_k (1/K) log mean_i q_ik, the mean
    clamped to [EPS, 1] (KL(uniform || mean prediction) up to a constant)."""
    mean = torch.clamp(q.mean(dim=0), EPS, 1.0)  # (K,)
    return -(mean.log() / q.shape[1]).sum()


class SOP(Method):
    name = "sop"
    Config = SOPConfig

    def state_arrays(self) -> list[ArraySpec]:
        scale = self.config.init_scale
        return [ArraySpec(U, (), "float32", scale), ArraySpec(V, (self.ctx.num_classes,), "float32", scale)]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, batch: Batch, run: Run) -> dict[str, torch.Tensor]:
        return self.sop_step(logits, labels, batch, run)

    def sop_step(self, logits: torch.Tensor, labels: torch.Tensor, batch: Batch, run: Run,
                 balance: float = 0.0) -> dict[str, torch.Tensor]:
        """The loss on the batch's logits (B, K), with SOP+'s class-balance term weighted by `balance`
        (0: plain SOP), and the SGD step of the batch's u and v rows on it."""
        logits = logits.float()  # u, v and the losses stay in float32 under mixed precision
        device, store = logits.device, run.store
        u = torch.from_numpy(store.gather(U, batch.idx)).to(device).requires_grad_(True)  # (B,)
        v = torch.from_numpy(store.gather(V, batch.idx)).to(device).requires_grad_(True)  # (B, K)
        onehot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        ce, mse, q = sop_losses(logits, onehot, u, v)
        total = ce + mse  # one loss as in the paper: each variable only sees its own term (stop-gradients)
        terms = {"ce": ce.detach(), "mse": mse.detach()}
        if balance > 0:  # through q it reaches u too, as in the authors' code
            terms["balance"] = class_balance(q)
            total = total + balance * terms["balance"]
        grad_u, grad_v = torch.autograd.grad(total, (u, v), retain_graph=True)
        store.add(U, batch.idx, -self.config.lr_u * grad_u)
        store.add(V, batch.idx, -self.config.lr_v * grad_v)
        return {"loss": total, **{name: t.detach() for name, t in terms.items()}}

    def on_epoch_end(self, run: Run) -> EpochReport:
        """How well u^2 (capped at 1, as in the loss) separates wrong labels from right ones."""
        if self.ctx.clean_labels is None:
            return EpochReport()
        clean = self.ctx.clean_labels.cpu().numpy()
        known = clean >= 0
        u2 = np.minimum(run.store[U].astype(np.float64) ** 2, 1.0)[known]
        wrong = (self.ctx.noisy_labels.cpu().numpy() != clean)[known]
        out = {}
        if (~wrong).any():
            out["sop_u2_right"] = float(u2[~wrong].mean())
        if wrong.any():
            out["sop_u2_wrong"] = float(u2[wrong].mean())
        if wrong.any() and (~wrong).any():
            out["sop_u2_auroc"] = auroc(u2, wrong)
        return EpochReport(metrics=out)
