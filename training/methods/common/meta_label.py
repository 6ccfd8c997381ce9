"""Meta label correction, the machinery shared by MLC, MLC-D and EBOMLC (Nguyen and Ta 2026,
"Efficient Bilevel Optimization for Meta Label Correction"; Zheng et al. 2021 for MLC).
State: none per sample; a meta model g_a beside the main model f_w.

A clean subset D (needs.clean_subset) sits beside the noisy set D'. The meta model corrects a given
label from the main model's own detached penultimate features:

    g_a(h(x), y~) = softmax(MLP([h(x).detach() ++ Embedding(C, 128)(y~)]))      (3 layers, tanh)

    lower loss G(w, a) = mean over D' of soft-CE(f_w(x'), g_a(h(x'), y~'))     (paper Eq. 3)
    upper loss F(w)    = mean over D  of CE(f_w(x_c), y_c)                       (paper Eq. 2)

(EBOMLC replaces F by a mixture of f and g, Eq. 9: ebomlc.py.)

With `clean_in_lower` the clean batch is split in two halves, as the official MLC does
(`hmlc_K_mix`): the first half gives F, the second is mixed into G by count,
G = (B soft-CE(noisy) + B_c2 CE(f_w(x_c2), y_c2)) / (B + B_c2); each half has its own forward, so
BatchNorm sees the noisy and the clean images as separate batches, as in the authors' code.

MLC differentiates F through a one-step look-ahead (mlc.py). MLC-D and EBOMLC use the dynamic
barrier (BOME) with Q(w, a) = G(w, a) - G(w_hat, a), w_hat = k SGD steps on G from w (k = 1 for
EBOMLC); `barrier_direction` gives their update direction (Eq. 6-7, 11-14) for the upper loss each
passes (mlc_d.py, ebomlc.py). Every inner step (MLC's look-ahead, the barrier methods' w_hat) is the
main optimiser's own SGD step (`InnerSGD`: its lr, weight decay, momentum and Nesterov setting, its
momentum buffer read but not updated), as the authors' `update_params` does.

Gradients are taken with torch.autograd.grad and written into .grad by hand, so this module owns
three details the standard step leaves to Accelerate:
- mixed precision: forwards run under accelerator.autocast(); every loss and all barrier maths
  (inner products, norms, beta) are float32. Under fp16 the losses are multiplied by a static
  scale (`fp16_loss_scale`) before differentiation and the float32 gradients divided by it; a step
  whose gradients are not finite is skipped and counted (`meta_skipped_steps`).
- under fp16 the optimisers are stepped through the wrapped torch optimiser (`optimizer.optimizer`),
  because Accelerate's GradScaler would otherwise unscale gradients that are already unscaled.
- several processes: the models are used unwrapped (DDP's reducer never runs). The flat
  gradients grad F and grad Q are averaged over processes with accelerator.reduce BEFORE beta is
  computed, so every process computes the same beta and writes the same gradients, and the
  optimisers stay in step. The first inner step also follows the averaged grad_w G(w, a), so w1 is
  the same everywhere (EBOMLC's main model moves to it); later inner steps (MLC-D, k > 1) follow
  each process's own batch. MLC's look-ahead is per process likewise (mlc.py).
  BatchNorm running statistics are averaged over processes at epoch end. The multi-process path
  is covered by one two-process CPU test (tests/test_meta_label.py).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from pipeline.errors import ConfigError
from pipeline.load.batch import Batch
from training.methods.base import DataNeeds, EpochReport, Method, Run, StepOutput
from training.methods.common.lookahead import forward_with
from training.plots import confusion_heatmap

log = logging.getLogger(__name__)

META = "meta"  # name of the meta model (and its optimiser) in the trainer's dicts


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


class MetaLabelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    meta_lr: float = Field(3e-4, gt=0)  # Adam (amsgrad) learning rate of the meta model (constant: not scheduled)
    meta_embed_dim: int = Field(128, gt=0)  # label embedding width
    meta_hidden: int = Field(128, gt=0)  # MLP hidden width
    fp16_loss_scale: float = Field(1024.0, gt=0)  # static loss scale, used only with mixed_precision=fp16
    # Split the clean batch: first half -> upper loss F, second half mixed into the lower loss G by
    # count (official MLC's `hmlc_K_mix`). Needs data.clean_batch_size >= 2.
    clean_in_lower: bool = False


class BarrierConfig(MetaLabelConfig):
    inner_steps: int = Field(1, ge=1)  # k: SGD steps on G from w that give w_hat
    delta: float = Field(0.25, gt=0)  # barrier scale: phi_t = delta ||grad Q||^2 (+ alignment term)
    barrier_eps: float = Field(1e-8, ge=0)  # added to ||grad Q||^2 in beta's denominator (authors' code: 1e-8)
    # Gradient of Q = G(w, a) - G(w_hat, a) in w: "full" = grad G(w, a) - grad G(w_hat, a), both
    # terms, w_hat's gradient taken at w_hat (dw_hat/dw as identity; the authors' code, one more
    # main-model backward); "bome" = grad_w G(w, a) only (w_hat detached, BOME's reading).
    w1_grad: Literal["full", "bome"] = "full"


# ---------------------------------------------------------------------------------------------
# the meta model and the losses
# ---------------------------------------------------------------------------------------------


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors; float64 stays float64 (tests, debugging)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class MetaLabelNet(nn.Module):
    """g_a(h, y~): corrected-label logits (B, C) from detached features h (B, F) and given labels y~ (B,).

    Initialised as the official MLC meta net: xavier-uniform label embedding (entries of size about
    0.1, so the features are heard from step 0; PyTorch's N(0, 1) default lets the label dominate),
    xavier-normal MLP weights, zero biases."""

    def __init__(self, num_classes: int, feature_dim: int, embed_dim: int = 128, hidden: int = 128):
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim + embed_dim, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, num_classes),
        )
        nn.init.xavier_uniform_(self.embed.weight)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([features, self.embed(labels)], dim=1))  # (B, C) logits


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_i -sum_k target_ik log softmax(logits)_ik, in float32. logits, target (B, C)."""
    return -(at_least_float32(target) * F.log_softmax(at_least_float32(logits), dim=1)).sum(dim=1).mean()


def lower_loss(logits: torch.Tensor, target: torch.Tensor, mix_logits: torch.Tensor | None = None,
               mix_labels: torch.Tensor | None = None) -> torch.Tensor:
    """G: soft-CE of logits (B, C) against g's target (B, C); with a clean half-batch (mix_logits
    (Bm, C), mix_labels (Bm,)) the count-weighted mean with its hard CE, as official MLC mixes them."""
    loss = soft_cross_entropy(logits, target)
    if mix_logits is None:
        return loss
    b, bm = len(logits), len(mix_logits)
    return (b * loss + bm * F.cross_entropy(at_least_float32(mix_logits), mix_labels)) / (b + bm)


def dynamic_barrier(dot_fq_w: torch.Tensor, q_norm2: torch.Tensor, delta: float, eps: float) -> torch.Tensor:
    """beta_t = max(delta - <grad_w F, grad_w Q> / (||grad Q||^2 + eps), 0)   (float32 scalars).

    This is Eq. 7 (MLC-D, where grad_a F = 0) and Eq. 11 (EBOMLC): EBOMLC's alignment term
    <grad_a F, grad_a Q> in phi_t (Eq. 10) cancels the a-part of <grad F, grad Q>, so only the
    w-parts meet in the numerator while the norm runs over (w, a). Zero when F already descends
    along Q (aligned gradients), above delta when they are opposed."""
    dot_fq_w, q_norm2 = at_least_float32(dot_fq_w), at_least_float32(q_norm2)
    return torch.clamp(delta - dot_fq_w / (q_norm2 + eps), min=0.0)


# ---------------------------------------------------------------------------------------------
# flat float32 gradient vectors, and the main optimiser's step on a copy of the weights
# ---------------------------------------------------------------------------------------------


def flat(grads) -> torch.Tensor:
    """One float32 (or float64) vector from a sequence of gradients (every parameter here takes part
    in every loss, so none is None)."""
    return torch.cat([at_least_float32(g.reshape(-1)) for g in grads])


def write_grads(params: list[nn.Parameter], vector: torch.Tensor) -> None:
    """Sets p.grad from consecutive slices of a flat vector (cast to each parameter's dtype)."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = vector[offset: offset + n].view_as(p).to(p.dtype).clone()
        offset += n


def grads_of(loss: torch.Tensor, params: list[torch.Tensor], scale: float = 1.0, **kwargs) -> torch.Tensor:
    """Flat float32 gradient of a scalar loss; differentiates loss*scale and divides (fp16 scaling)."""
    return flat(torch.autograd.grad(loss * scale if scale != 1.0 else loss, params, **kwargs)) / scale


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def named_trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


@dataclass
class InnerSGD:
    """torch.optim.SGD's next step applied to a copy of the weights, its state untouched:
    d = g + wd w;  m = mu buf + (1 - dampening) d (m = d with no buffer yet);  w - lr (d + mu m if
    Nesterov else m). The buffer is read, not updated, as in the authors' `update_params`. Differentiable
    in the weights and gradients given. A non-SGD main optimiser gives plain SGD at its lr and wd."""

    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name -> momentum buffer

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer, model: nn.Module) -> "InnerSGD":
        group = optimizer.param_groups[0]
        momentum = float(group.get("momentum", 0.0))
        buffers = {}
        if momentum:
            for n, p in named_trainable(model).items():
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    buffers[n] = buf
        return cls(lr=float(group["lr"]), weight_decay=float(group.get("weight_decay", 0.0)), momentum=momentum,
                   dampening=float(group.get("dampening", 0.0)), nesterov=bool(group.get("nesterov", False)),
                   buffers=buffers)

    def step(self, weights: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for n, w in weights.items():
            d = grads[n] + self.weight_decay * w
            buf = self.buffers.get(n)
            m = d if buf is None else self.momentum * buf + (1.0 - self.dampening) * d
            out[n] = w - self.lr * (d + self.momentum * m if self.nesterov else m)
        return out


def unflatten(vector: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Name -> slice of a flat vector shaped (and typed) like the given tensors."""
    out, offset = {}, 0
    for n, t in like.items():
        out[n] = vector[offset: offset + t.numel()].view_as(t).to(t.dtype)
        offset += t.numel()
    return out


# ---------------------------------------------------------------------------------------------
# the dynamic-barrier direction (MLC-D, EBOMLC)
# ---------------------------------------------------------------------------------------------


@dataclass
class Direction:
    """Update direction of one barrier step, flat float32 over trainable parameters."""

    w: torch.Tensor  # (n_w,) written into the main model's .grad
    a: torch.Tensor  # (n_a,) written into the meta model's .grad
    beta: torch.Tensor  # scalar, beta_t before the xi factor
    upper: torch.Tensor  # scalar, F on the clean batch (mixture for EBOMLC)
    lower: torch.Tensor  # scalar, G(w, a) on the noisy batch (and the clean half with clean_in_lower)
    q: torch.Tensor  # scalar, Q(w, a) = G(w, a) - G(w_hat, a)
    logits: torch.Tensor  # (B, C) main-model logits on the noisy batch, detached
    corrected: torch.Tensor  # (B, C) g's corrected-label distribution on the noisy batch, detached
    w_hat: dict[str, torch.Tensor]  # parameter name -> w_hat after the k inner steps, detached


def identity(vector: torch.Tensor) -> torch.Tensor:
    return vector


#: (main logits (Bc, C), meta logits (Bc, C), clean labels (Bc,)) -> scalar upper loss F(w, a) in float32
UpperLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def barrier_direction(model: nn.Module, meta: nn.Module, x: torch.Tensor, y: torch.Tensor, x_clean: torch.Tensor,
                      y_clean: torch.Tensor, *, inner: InnerSGD, config: BarrierConfig, xi: float,
                      upper_loss: UpperLoss | None = None, mix: tuple[torch.Tensor, torch.Tensor] | None = None,
                      autocast=contextlib.nullcontext, reduce=identity, scale: float = 1.0) -> Direction:
    """One dynamic-barrier step direction  lambda = grad F + xi * beta * grad Q  over (w, a): F is CE on
    the clean batch with grad_a F = 0 when `upper_loss` is None (MLC-D, Alg. 1), else
    upper_loss(f_w(x_c), g_a(h(x_c), y_c), y_c), differentiated in w and a (EBOMLC's mixture, Alg. 2).

    x (B, ...), y (B,) the noisy batch and its given labels; x_clean, y_clean the clean batch for F;
    mix (x_c2, y_c2) a clean half-batch mixed into G, or None. `inner` is the main optimiser's SGD
    step that gives w_hat; `reduce` averages a flat gradient over processes (identity in one
    process). Main-model passes without mix: k + 2 forwards, and k + 2 backwards with w1_grad=full
    or k + 1 with bome (EBOMLC, k = 1: 3 and 3, or 3 and 2); mix adds a forward of the clean half
    beside each of the k + 1 noisy ones."""
    params = named_trainable(model)
    w_params, a_params = list(params.values()), trainable(meta)
    # lower loss at w on the noisy batch; g sees the main model's detached features
    with autocast():
        feats = model.features(x)  # (B, F)
        logits = model.fc(feats)  # (B, C)
        meta_logits = meta(feats.detach(), y)  # (B, C)
        mix_logits = model(mix[0]) if mix is not None else None  # (Bm, C)
    mix_labels = mix[1] if mix is not None else None
    corrected = F.softmax(at_least_float32(meta_logits), dim=1)  # (B, C) float32, depends on a only
    target = corrected.detach()
    lower = lower_loss(logits, target, mix_logits, mix_labels)
    g0_w = reduce(grads_of(lower, w_params, scale))  # main backward 1: grad_w G(w, a), the same on every process

    def lower_at(weights):  # (G(weights, a) with g's output fixed, noisy logits, mix logits)
        with autocast():
            lg = forward_with(model, weights, x)
            lm = forward_with(model, weights, mix[0]) if mix is not None else None
        return lower_loss(lg, target, lm, mix_labels), lg, lm

    # w_hat: k steps of the main optimiser on G(., a) from w, the first along grad_w G(w, a) (k = 1: w1, Eq. 8)
    w_hat = inner.step({n: p.detach() for n, p in params.items()}, unflatten(g0_w, params))
    for _ in range(config.inner_steps - 1):
        w_hat = {n: w.requires_grad_(True) for n, w in w_hat.items()}
        loss_hat = lower_at(w_hat)[0]
        step_grads = dict(zip(w_hat, torch.autograd.grad(loss_hat * scale, list(w_hat.values()))))
        w_hat = {n: w.detach() for n, w in inner.step(w_hat, {n: g / scale for n, g in step_grads.items()}).items()}
    if config.w1_grad == "full":
        w_hat = {n: w.requires_grad_(True) for n, w in w_hat.items()}
        loss_hat, logits_hat, mix_hat = lower_at(w_hat)
        q_w = g0_w - reduce(grads_of(loss_hat, list(w_hat.values()), scale))  # main backward: grad_w G(w_hat, a)
        w_hat = {n: w.detach() for n, w in w_hat.items()}
    else:
        with torch.no_grad():
            loss_hat, logits_hat, mix_hat = lower_at(w_hat)  # no graph: w_hat is a constant
        q_w = g0_w
    # grad_a Q = grad_a [G(w, a) - G(w_hat, a)] with both main outputs fixed: a meta-model backward only
    detach = (lambda t: None if t is None else t.detach())
    q_value = (lower_loss(logits.detach(), corrected, detach(mix_logits), mix_labels)
               - lower_loss(logits_hat.detach(), corrected, detach(mix_hat), mix_labels))
    q_a = reduce(grads_of(q_value, a_params, scale))

    # upper loss at w on the clean batch
    with autocast():
        feats_c = model.features(x_clean)
        logits_c = model.fc(feats_c)
        meta_logits_c = meta(feats_c.detach(), y_clean) if upper_loss is not None else None
    if upper_loss is None:
        upper = F.cross_entropy(at_least_float32(logits_c), y_clean)
        f_w = grads_of(upper, w_params, scale)  # main backward
        f_a = torch.zeros_like(q_a)
    else:
        upper = upper_loss(logits_c, meta_logits_c, y_clean)
        f = grads_of(upper, w_params + a_params, scale)  # main backward (and the meta model)
        f_w, f_a = f[:len(g0_w)], f[len(g0_w):]
    f_w, f_a = reduce(f_w), reduce(f_a)

    q_norm2 = q_w.dot(q_w) + q_a.dot(q_a)
    beta = dynamic_barrier(f_w.dot(q_w), q_norm2, config.delta, config.barrier_eps)
    coef = xi * beta
    return Direction(w=f_w + coef * q_w, a=f_a + coef * q_a, beta=beta.detach(), upper=upper.detach(),
                     lower=lower.detach(), q=q_value.detach(), logits=logits.detach(),
                     corrected=corrected.detach(), w_hat=w_hat)


# ---------------------------------------------------------------------------------------------
# per-epoch diagnostics
# ---------------------------------------------------------------------------------------------


@dataclass
class EpochDiagnostics:
    """Per-epoch sums on this process's batches (device tensors, read once at epoch end).

    Corrected-label accuracy is measured on the fly, on the training batches as g saw them
    (augmented images, g changing during the epoch), against the clean labels: no extra pass."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    betas: list[torch.Tensor] = field(default_factory=list)

    def add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()

    def add_labels(self, corrected: torch.Tensor, given: torch.Tensor, clean: torch.Tensor) -> None:
        """corrected (B, C) g's distribution; given, clean (B,) int64."""
        right = corrected.argmax(dim=1) == clean
        wrong_given = given != clean
        self.add("label_n", torch.tensor(float(len(given)), device=given.device))
        self.add("label_right", right.sum())
        self.add("label_mislabelled", wrong_given.sum())
        self.add("label_fixed", (right & wrong_given).sum())  # given label wrong, g's argmax right
        self.add("label_broken", (~right & ~wrong_given).sum())  # given label right, g's argmax wrong
        c = corrected.shape[1]
        self.add("confusion", torch.bincount(clean * c + corrected.argmax(dim=1), minlength=c * c).view(c, c))

    def summary(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        if not self.sums:
            return {}
        names = sorted(n for n in self.sums if n != "confusion")
        totals = dict(zip(names, reduce_sum(torch.stack([self.sums[n] for n in names])).tolist()))
        steps = max(totals.pop("steps", 0.0), 1.0)
        n, mislabelled = max(totals["label_n"], 1.0), totals["label_mislabelled"]
        out = {
            "meta_label_acc": totals["label_right"] / n,
            "meta_fixed": totals["label_fixed"] / mislabelled if mislabelled else float("nan"),
            "meta_broken": totals["label_broken"] / max(n - mislabelled, 1.0),
            "upper_loss": totals["upper"] / steps,
            "lower_loss": totals["lower"] / steps,
            "meta_skipped_steps": totals.get("skipped", 0.0),
        }
        if "q" in totals:
            out["q_value"] = totals["q"] / steps
        if self.betas:  # identical on every process (computed from averaged gradients)
            beta = torch.stack(self.betas).float()
            out.update(beta_mean=float(beta.mean()), beta_std=float(beta.std(unbiased=False)),
                       beta_min=float(beta.min()), beta_max=float(beta.max()),
                       beta_zero_frac=float((beta == 0).float().mean()))
        return out


# ---------------------------------------------------------------------------------------------
# the method base
# ---------------------------------------------------------------------------------------------


class MetaLabelMethod(Method):
    """Main model + meta model (Adam with amsgrad, constant lr, as official MLC) + clean subset;
    subclasses implement `train_step` with the helpers below."""

    needs: ClassVar[DataNeeds] = DataNeeds(clean_subset=True)
    unscheduled: ClassVar[tuple[str, ...]] = (META,)

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.diag = EpochDiagnostics()

    def build_models(self) -> dict[str, nn.Module]:
        model = self.ctx.build_model()
        if not hasattr(model, "features") or not hasattr(model, "fc"):
            raise ConfigError(f"method {self.name!r} needs a model with features(x) and fc (training/models/)")
        cfg = self.config
        meta = MetaLabelNet(self.ctx.num_classes, model.fc.in_features, cfg.meta_embed_dim, cfg.meta_hidden)
        return {"model": model, META: meta}

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.ctx.build_optimizer(models["model"].parameters()),
                META: torch.optim.Adam(models[META].parameters(), lr=self.config.meta_lr, amsgrad=True)}

    # -- helpers for train_step

    def _loss_scale(self, run: Run) -> float:
        """The static loss scale under mixed_precision=fp16, else 1."""
        return self.config.fp16_loss_scale if run.accelerator.mixed_precision == "fp16" else 1.0

    def _clean_batch(self, run: Run) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """(images, labels) of the clean batch for the upper loss and, with clean_in_lower, the
        (images, labels) half-batch mixed into the lower loss (official MLC: first half F, second G)."""
        batch = run.clean.next_batch()
        images, labels = batch.images, run.clean.labels[batch.idx]  # (Bc, ...), (Bc,) int64 clean labels
        if not self.config.clean_in_lower:
            return images, labels, None
        half = len(labels) // 2
        if half == 0:
            raise ConfigError(f"{self.name} with clean_in_lower splits the clean batch in two: set "
                             f"data.clean_batch_size to 2 or more, or method.params.clean_in_lower=false")
        return images[:half], labels[:half], (images[half:], labels[half:])

    @staticmethod
    def _reduce_fn(run: Run) -> Callable[[torch.Tensor], torch.Tensor]:
        """Mean of a flat gradient over processes (identity in one process)."""
        acc = run.accelerator
        if acc.num_processes == 1:
            return identity
        return lambda v: acc.reduce(v, reduction="mean")

    def _apply(self, run: Run, grad_w: torch.Tensor, grad_a: torch.Tensor,
               start: dict[str, torch.Tensor] | None = None) -> bool:
        """Writes the finished gradients and steps both optimisers, the main one from `start` (name ->
        weights the main model moves to first) when given; skips the step (and counts it) when a
        gradient is not finite. Returns whether the step was taken."""
        model, meta = run.unwrap("model"), run.unwrap(META)
        ok = bool(torch.isfinite(grad_w).all() and torch.isfinite(grad_a).all())
        if ok:
            if start is not None:
                with torch.no_grad():
                    for n, p in named_trainable(model).items():
                        p.copy_(start[n])
            write_grads(trainable(model), grad_w)
            write_grads(trainable(meta), grad_a)
            for name in ("model", META):
                opt = run.optimizers[name]
                # Accelerate's fp16 GradScaler would unscale these finished gradients a second time
                (opt.optimizer if getattr(opt, "scaler", None) is not None else opt).step()
        else:
            self.diag.add("skipped", torch.ones((), device=grad_w.device))
            log.warning("%s: non-finite gradient, step skipped (under fp16 lower method.params.fp16_loss_scale)",
                        self.name)
        for name in ("model", META):
            run.optimizers[name].zero_grad(set_to_none=True)
        return ok

    def _record(self, run: Run, batch: Batch, labels: torch.Tensor, corrected: torch.Tensor, upper: torch.Tensor,
                lower: torch.Tensor) -> None:
        self.diag.add("steps", torch.ones((), device=upper.device))
        self.diag.add("upper", upper)
        self.diag.add("lower", lower)
        self.diag.add_labels(corrected, labels, run.clean.labels[batch.idx])

    # -- epoch hook

    def on_epoch_end(self, run: Run) -> EpochReport:
        """The epoch's diagnostics summed over processes, and corrected_vs_true.npy and .png: (C, C)
        counts of this epoch, rows the true (clean) class, columns g's argmax on the noisy training
        batches (replaced each epoch, so the run's end leaves the last epoch's heatmap)."""
        acc = run.accelerator
        reduce_sum = identity if acc.num_processes == 1 else (lambda v: acc.reduce(v, reduction="sum"))
        report = EpochReport(metrics=self.diag.summary(reduce_sum))
        if "confusion" in self.diag.sums:
            confusion = reduce_sum(self.diag.sums["confusion"]).cpu().numpy().astype(np.int64)
            report.arrays["corrected_vs_true.npy"] = confusion
            report.figures["corrected_vs_true.png"] = self._confusion_figure(confusion)
        if acc.num_processes > 1:
            self._average_buffers(run)
        self.diag = EpochDiagnostics()
        return report

    def _confusion_figure(self, confusion: np.ndarray) -> Figure:
        accuracy = np.trace(confusion) / max(int(confusion.sum()), 1)
        return confusion_heatmap(confusion, self.ctx.class_names,
                                 f"{self.name}: meta model's corrected label vs true label ({accuracy:.1%} right)",
                                 xlabel="corrected label (argmax of g)", ylabel="true label")

    @staticmethod
    def _average_buffers(run: Run) -> None:
        """Models run unwrapped, so DDP does not broadcast BatchNorm statistics; average them instead
        so every process evaluates the same model."""
        for name in run.models:
            for buf in run.unwrap(name).buffers():
                if buf.is_floating_point():
                    buf.copy_(run.accelerator.reduce(buf.detach().clone(), reduction="mean"))


class BarrierMethod(MetaLabelMethod):
    """MLC-D and EBOMLC: one step per batch along the dynamic-barrier direction the subclass computes."""

    def _direction(self, model: nn.Module, meta: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   x_clean: torch.Tensor, y_clean: torch.Tensor, **step) -> Direction:
        """barrier_direction with the method's upper loss and xi (step: inner, mix, autocast, reduce, scale)."""
        raise NotImplementedError

    def _start(self, d: Direction) -> dict[str, torch.Tensor] | None:
        """Weights the main model moves to before its barrier step; None: it steps from w."""
        return None

    def train_step(self, batch: Batch, labels: torch.Tensor, run: Run) -> StepOutput:
        model, meta = run.unwrap("model"), run.unwrap(META)
        clean_images, clean_labels, mix = self._clean_batch(run)
        d = self._direction(model, meta, batch.images, labels, clean_images, clean_labels,
                            inner=InnerSGD.of(run.optimizers["model"], model), mix=mix,
                            autocast=run.accelerator.autocast, reduce=self._reduce_fn(run), scale=self._loss_scale(run))
        self._apply(run, d.w, d.a, start=self._start(d))
        self._record(run, batch, labels, d.corrected, d.upper, d.lower)
        self.diag.add("q", d.q)
        self.diag.betas.append(d.beta)
        return StepOutput(terms={"loss": d.lower, "upper": d.upper, "beta": d.beta, "q": d.q}, logits=d.logits)
