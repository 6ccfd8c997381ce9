"""Meta label correction, the machinery shared by MLC, MLC-D and EBOMLC (Nguyen and Ta 2026,
"Efficient Bilevel Optimization for Meta Label Correction"; Zheng et al. 2021 for MLC).
State: none per sample; a meta model g_a beside the main model f_w.

A clean subset D (needs.clean_subset) sits beside the noisy set D'. The meta model corrects a given
label from the main model's own detached penultimate features:

    g_a(h(x), y~) = softmax(MLP([h(x).detach() ++ Embedding(C, 128)(y~)]))      (3 layers, tanh)

    lower loss G(w, a) = mean over D' of soft-CE(f_w(x'), g_a(h(x'), y~'))     (paper Eq. 3)
    upper loss F(w)    = mean over D  of CE(f_w(x_c), y_c)                       (paper Eq. 2)
    mixture F(w, a)    = mean over D  of -log(rho p_f[y_c] + (1 - rho) p_g[y_c])  (paper Eq. 9)

MLC differentiates F through a one-step look-ahead (training/methods/lookahead.py). MLC-D and
EBOMLC use the dynamic barrier (BOME) with Q(w, a) = G(w, a) - G(w_hat, a), w_hat = k SGD steps
on G from w (k = 1 for EBOMLC); `barrier_direction` gives their update direction (Eq. 6-7, 11-14).

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
  optimisers stay in step. What stays per process is w_hat: each process takes its k inner steps
  along its own batch's gradient (Q is then the mean of per-process Q's, not Q of the joint batch
  with one joint inner step). MLC's look-ahead is per process likewise (training/methods/mlc.py).
  BatchNorm running statistics are averaged over processes at epoch end. The multi-process path
  has not been run in a test yet.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from pipeline.batch import Batch
from training.methods.base import DataNeeds, Method, StepOutput
from training.methods.lookahead import current_lr_wd, forward_with
from training.plots import confusion_heatmap, save_figure

log = logging.getLogger(__name__)

META = "meta"  # name of the meta model (and its optimiser) in the trainer's dicts


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


class MetaLabelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    meta_lr: float = Field(3e-4, gt=0)  # Adam learning rate of the meta model (constant: not scheduled)
    meta_embed_dim: int = Field(128, gt=0)  # label embedding width
    meta_hidden: int = Field(128, gt=0)  # MLP hidden width
    fp16_loss_scale: float = Field(1024.0, gt=0)  # static loss scale, used only with mixed_precision=fp16


class BarrierConfig(MetaLabelConfig):
    inner_steps: int = Field(1, ge=1)  # k: SGD steps on G from w that give w_hat
    delta: float = Field(0.25, gt=0)  # barrier scale: phi_t = delta ||grad Q||^2 (+ alignment term)
    barrier_eps: float = Field(1e-4, ge=0)  # added to ||grad Q||^2 in beta's denominator
    # Gradient of Q through w_hat: "bome" detaches w_hat (grad_w Q = grad_w G(w, a); BOME's
    # reading, the default); "full" also subtracts grad_w G at w_hat (dw_hat/dw taken as identity,
    # one more main-model backward).
    w1_grad: Literal["bome", "full"] = "bome"


# ---------------------------------------------------------------------------------------------
# the meta model and the losses
# ---------------------------------------------------------------------------------------------


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors; float64 stays float64 (tests, debugging)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class MetaLabelNet(nn.Module):
    """g_a(h, y~): corrected-label logits (B, C) from detached features h (B, F) and given labels y~ (B,)."""

    def __init__(self, num_classes: int, feature_dim: int, embed_dim: int = 128, hidden: int = 128):
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim + embed_dim, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([features, self.embed(labels)], dim=1))  # (B, C) logits


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_i -sum_k target_ik log softmax(logits)_ik, in float32. logits, target (B, C)."""
    return -(at_least_float32(target) * F.log_softmax(at_least_float32(logits), dim=1)).sum(dim=1).mean()


def mixture_nll(main_logits: torch.Tensor, meta_logits: torch.Tensor, labels: torch.Tensor, rho: float) -> torch.Tensor:
    """EBOMLC's upper loss (Eq. 9): mean -log(rho softmax(f)[y] + (1 - rho) softmax(g)[y]), float32.
    Probabilities are mixed, then logged; done as a logsumexp of log-probabilities so it stays finite
    when either probability underflows. rho = 1 gives plain cross-entropy exactly (log 0 = -inf adds
    nothing) while g stays in the graph with zero gradient. rho in (0, 1]."""
    log_pf = F.log_softmax(at_least_float32(main_logits), dim=1).gather(1, labels[:, None]).squeeze(1)  # (B,)
    log_pg = F.log_softmax(at_least_float32(meta_logits), dim=1).gather(1, labels[:, None]).squeeze(1)  # (B,)
    weights = torch.log(torch.tensor([rho, 1.0 - rho], device=log_pf.device))
    return -torch.logsumexp(torch.stack([log_pf, log_pg], dim=1) + weights, dim=1).mean()


def dynamic_barrier(dot_fq_w: torch.Tensor, q_norm2: torch.Tensor, delta: float, eps: float) -> torch.Tensor:
    """beta_t = max(delta - <grad_w F, grad_w Q> / (||grad Q||^2 + eps), 0)   (float32 scalars).

    This is Eq. 7 (MLC-D, where grad_a F = 0) and Eq. 11 (EBOMLC): EBOMLC's alignment term
    <grad_a F, grad_a Q> in phi_t (Eq. 10) cancels the a-part of <grad F, grad Q>, so only the
    w-parts meet in the numerator while the norm runs over (w, a). Zero when F already descends
    along Q (aligned gradients), above delta when they are opposed."""
    dot_fq_w, q_norm2 = at_least_float32(dot_fq_w), at_least_float32(q_norm2)
    return torch.clamp(delta - dot_fq_w / (q_norm2 + eps), min=0.0)


# ---------------------------------------------------------------------------------------------
# flat float32 gradient vectors
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


def sgd_steps(model: nn.Module, first_step: torch.Tensor, x: torch.Tensor, target: torch.Tensor, k: int,
              lr: float, weight_decay: float, autocast=contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """w_hat after k plain SGD steps on soft-CE(f(x), target) from the model's weights, the first one
    along the given flat gradient (the caller already has grad_w G at w). Detached weights."""
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    weights, offset = {}, 0
    for n, p in zip(names, params):
        g = first_step[offset: offset + p.numel()].view_as(p).to(p.dtype)
        weights[n] = (p.detach() - lr * (g + weight_decay * p.detach()))
        offset += p.numel()
    for _ in range(k - 1):
        current = {n: w.requires_grad_(True) for n, w in weights.items()}
        with autocast():
            logits = forward_with(model, current, x)
        grads = torch.autograd.grad(soft_cross_entropy(logits, target), list(current.values()))
        weights = {n: (w - lr * (g + weight_decay * w)).detach() for (n, w), g in zip(current.items(), grads)}
    return weights


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
    lower: torch.Tensor  # scalar, G(w, a) on the noisy batch
    q: torch.Tensor  # scalar, Q(w, a) = G(w, a) - G(w_hat, a)
    logits: torch.Tensor  # (B, C) main-model logits on the noisy batch, detached
    corrected: torch.Tensor  # (B, C) g's corrected-label distribution on the noisy batch, detached


def identity(vector: torch.Tensor) -> torch.Tensor:
    return vector


def barrier_direction(model: nn.Module, meta: nn.Module, x: torch.Tensor, y: torch.Tensor, x_clean: torch.Tensor,
                      y_clean: torch.Tensor, *, lr: float, weight_decay: float, config: BarrierConfig,
                      rho: float | None, xi: float, autocast=contextlib.nullcontext, reduce=identity,
                      scale: float = 1.0) -> Direction:
    """One MLC-D (rho None: upper loss = CE, grad_a F = 0; Alg. 1) or EBOMLC (rho: mixture upper
    loss; Alg. 2) step direction:  lambda = grad F + xi * beta * grad Q  over (w, a).

    x (B, ...), y (B,) the noisy batch and its given labels; x_clean, y_clean the clean batch.
    `reduce` averages a flat gradient over processes (identity in one process). Main-model passes:
    k + 2 forwards and k + 1 backwards (EBOMLC, k = 1: 3 and 2), one more backward with w1_grad=full."""
    w_params, a_params = trainable(model), trainable(meta)
    # lower loss at w on the noisy batch; g sees the main model's detached features
    with autocast():
        feats = model.features(x)  # (B, F)
        logits = model.fc(feats)  # (B, C)
        meta_logits = meta(feats.detach(), y)  # (B, C)
    corrected = F.softmax(at_least_float32(meta_logits), dim=1)  # (B, C) float32, depends on a only
    target = corrected.detach()
    lower = soft_cross_entropy(logits, target)
    g0_w = grads_of(lower, w_params, scale)  # main backward 1: grad_w G(w, a)

    # w_hat: k SGD steps on G(., a) from w, the first along grad_w G(w, a) (k = 1: w1, Eq. 8)
    w_hat = sgd_steps(model, g0_w, x, target, config.inner_steps, lr, weight_decay, autocast)
    if config.w1_grad == "full":
        w_hat = {n: w.requires_grad_(True) for n, w in w_hat.items()}
        with autocast():
            logits_hat = forward_with(model, w_hat, x)
        g_hat_w = grads_of(soft_cross_entropy(logits_hat, target), list(w_hat.values()), scale)
        logits_hat = logits_hat.detach()
    else:
        with torch.no_grad(), autocast():
            logits_hat = forward_with(model, w_hat, x)  # (B, C), no graph: w_hat is a constant
        g_hat_w = None
    # grad_a Q = grad_a [G(w, a) - G(w_hat, a)] with both main outputs fixed: a meta-model backward only
    q_value = soft_cross_entropy(logits.detach(), corrected) - soft_cross_entropy(logits_hat, corrected)
    q_a = grads_of(q_value, a_params, scale)
    q_w = g0_w if g_hat_w is None else g0_w - g_hat_w

    # upper loss at w on the clean batch
    with autocast():
        feats_c = model.features(x_clean)
        logits_c = model.fc(feats_c)
        meta_logits_c = meta(feats_c.detach(), y_clean) if rho is not None else None
    if rho is None:
        upper = F.cross_entropy(at_least_float32(logits_c), y_clean)
        f_w = grads_of(upper, w_params, scale)  # main backward 2
        f_a = torch.zeros_like(q_a)
    else:
        upper = mixture_nll(logits_c, meta_logits_c, y_clean, rho)
        f = grads_of(upper, w_params + a_params, scale)  # main backward 2 (and the meta model)
        f_w, f_a = f[:len(g0_w)], f[len(g0_w):]

    f_w, f_a, q_w, q_a = (reduce(v) for v in (f_w, f_a, q_w, q_a))
    q_norm2 = q_w.dot(q_w) + q_a.dot(q_a)
    beta = dynamic_barrier(f_w.dot(q_w), q_norm2, config.delta, config.barrier_eps)
    coef = xi * beta
    return Direction(w=f_w + coef * q_w, a=f_a + coef * q_a, beta=beta.detach(), upper=upper.detach(),
                     lower=lower.detach(), q=q_value.detach(), logits=logits.detach(),
                     corrected=corrected.detach())


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
    """Main model + meta model (Adam, constant lr) + clean subset; subclasses implement `direction`."""

    needs: ClassVar[DataNeeds] = DataNeeds(clean_subset=True)
    custom_step: ClassVar[bool] = True
    unscheduled: ClassVar[tuple[str, ...]] = (META,)

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.diag = EpochDiagnostics()
        self._accelerator = None
        self._models: dict[str, nn.Module] = {}
        self._warned_fp16 = False

    def build_models(self) -> dict[str, nn.Module]:
        model = self.ctx.build_model()
        if not hasattr(model, "features") or not hasattr(model, "fc"):
            raise ValueError(f"method {self.name!r} needs a model with features(x) and fc (training/models/)")
        cfg = self.config
        meta = MetaLabelNet(self.ctx.num_classes, model.fc.in_features, cfg.meta_embed_dim, cfg.meta_hidden)
        return {"model": model, META: meta}

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.ctx.build_optimizer(models["model"].parameters()),
                META: torch.optim.Adam(models[META].parameters(), lr=self.config.meta_lr)}

    # -- helpers for train_step

    def _setup(self, models, accelerator) -> tuple[nn.Module, nn.Module, float]:
        """Unwrapped (main, meta) models and the loss scale; remembers them for on_epoch_end."""
        self._accelerator, self._models = accelerator, models
        scale = 1.0
        if getattr(accelerator, "mixed_precision", "no") == "fp16":
            scale = self.config.fp16_loss_scale
        return accelerator.unwrap_model(models["model"]), accelerator.unwrap_model(models[META]), scale

    def _clean_batch(self) -> tuple[Batch, torch.Tensor]:
        batch = self.clean.next_batch()
        return batch, self.clean.labels[batch.idx]  # (Bc,) int64 clean labels

    @staticmethod
    def _reduce_fn(accelerator):
        if accelerator.num_processes == 1:
            return identity
        return lambda v: accelerator.reduce(v, reduction="mean")

    def _apply(self, model: nn.Module, meta: nn.Module, grad_w: torch.Tensor, grad_a: torch.Tensor,
               optimizers: dict[str, torch.optim.Optimizer]) -> bool:
        """Writes the finished gradients and steps both optimisers; skips the step (and counts it)
        when a gradient is not finite. Returns whether the step was taken."""
        ok = bool(torch.isfinite(grad_w).all() and torch.isfinite(grad_a).all())
        if ok:
            write_grads(trainable(model), grad_w)
            write_grads(trainable(meta), grad_a)
            for name in ("model", META):
                opt = optimizers[name]
                # Accelerate's fp16 GradScaler would unscale these finished gradients a second time
                (opt.optimizer if getattr(opt, "scaler", None) is not None else opt).step()
        else:
            self.diag.add("skipped", torch.ones((), device=grad_w.device))
            log.warning("%s: non-finite gradient, step skipped (under fp16 lower method.params.fp16_loss_scale)",
                        self.name)
        for name in ("model", META):
            optimizers[name].zero_grad(set_to_none=True)
        return ok

    def _record(self, batch: Batch, labels: torch.Tensor, corrected: torch.Tensor, upper: torch.Tensor,
                lower: torch.Tensor) -> None:
        self.diag.add("steps", torch.ones((), device=upper.device))
        self.diag.add("upper", upper)
        self.diag.add("lower", lower)
        self.diag.add_labels(corrected, labels, self.clean.labels[batch.idx])

    # -- epoch hook

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        acc = self._accelerator
        if acc is None:
            return {}
        reduce_sum = identity if acc.num_processes == 1 else (lambda v: acc.reduce(v, reduction="sum"))
        out = self.diag.summary(reduce_sum)
        if "confusion" in self.diag.sums:
            confusion = reduce_sum(self.diag.sums["confusion"]).cpu().numpy().astype(np.int64)
            if self.ctx.is_main_process:
                self._write_confusion(confusion)
        if acc.num_processes > 1:
            self._average_buffers()
        self.diag = EpochDiagnostics()
        return out

    def _write_confusion(self, confusion: np.ndarray) -> None:
        """<run>/method/corrected_vs_true.npy and .png: (C, C) counts of this epoch, rows the true
        (clean) class, columns g's argmax on the noisy training batches; overwritten each epoch, so
        the run's end leaves the last epoch's heatmap."""
        out_dir = Path(self.ctx.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / "corrected_vs_true.tmp.npy"
        np.save(tmp, confusion)
        tmp.replace(out_dir / "corrected_vs_true.npy")
        accuracy = np.trace(confusion) / max(int(confusion.sum()), 1)
        fig = confusion_heatmap(confusion, self.ctx.class_names,
                                f"{self.name}: meta model's corrected label vs true label ({accuracy:.1%} right)",
                                xlabel="corrected label (argmax of g)", ylabel="true label")
        save_figure(fig, out_dir / "corrected_vs_true.png")

    def _average_buffers(self) -> None:
        """Models run unwrapped, so DDP does not broadcast BatchNorm statistics; average them instead
        so every process evaluates the same model."""
        acc = self._accelerator
        for model in self._models.values():
            for buf in acc.unwrap_model(model).buffers():
                if buf.is_floating_point():
                    buf.copy_(acc.reduce(buf.detach().clone(), reduction="mean"))


class BarrierMethod(MetaLabelMethod):
    """MLC-D and EBOMLC: the dynamic-barrier step with the method's upper loss (rho) and xi."""

    def _rho_xi(self) -> tuple[float | None, float]:
        raise NotImplementedError

    def train_step(self, batch, labels, models, optimizers, accelerator, epoch) -> StepOutput:
        model, meta, scale = self._setup(models, accelerator)
        clean, clean_labels = self._clean_batch()
        lr, wd = current_lr_wd(optimizers["model"])
        rho, xi = self._rho_xi()
        d = barrier_direction(model, meta, batch.images, labels, clean.images, clean_labels, lr=lr,
                              weight_decay=wd, config=self.config, rho=rho, xi=xi, autocast=accelerator.autocast,
                              reduce=self._reduce_fn(accelerator), scale=scale)
        self._apply(model, meta, d.w, d.a, optimizers)
        self._record(batch, labels, d.corrected, d.upper, d.lower)
        self.diag.add("q", d.q)
        self.diag.betas.append(d.beta)
        return StepOutput(terms={"loss": d.lower, "upper": d.upper, "beta": d.beta, "q": d.q}, logits=d.logits)
