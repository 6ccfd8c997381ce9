"""Pure functions behind the reweighting methods: the surrogate's feature-kernel scores and weight
rule, L2RW's meta gradient and weight normalisation, and the per-epoch weight diagnostics.

Surrogate (Zhang, Holtz, Mishne, Cloninger, arXiv 2510.12209; ../shared/methods/SURROGATE.md), per
training batch with eval-mode features f(x) (B, D) and clean features F_v (m, D), clean labels y_v:
    mu       = class-balanced mean of F_v             (each clean sample weighted 1 / count of its class)
    K        = (f(x) - mu) @ (F_v - mu)^T              (B, m)
    S[i, c]  = mean_{j: y_v[j] = c} K[i, j]            (B, C)
    S'[i, c] = S[i, c] - second largest of S[i, :]     (row shift)
    d_i      = S'[i, y_i] - alpha0 * sum_{c != y_i} S'[i, c]   (label-signed modulation)
    w_i      = 1 for all i if every d >= 0, else  0 for d_i <= 0,
               min(1, 0.5 + 0.5 d_i / min_{k: d_k < 0} |d_k|) for d_i > 0.
Because K is linear in the clean features, S = (f(x) - mu) @ (classmean_c(F_v) - mu)^T: the (B, m)
kernel is never built, only a (B, C) product with the C centred class means. `class_mean_kernel`
keeps the literal (B, m) route as the reference the tests compare against.

Why alpha0 = 1/(C-1) early: for a linear head, <grad l_i, grad l_j^clean> = <f_i, f_j> <p_i - e_yi,
p_j - e_yj>, and with uniform predictions the second factor is 1 for equal labels and -1/(C-1) for
different ones; later alpha0 = 0 keeps a sample only when its label is its clean-class argmax.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError
from training.evaluation import auroc
from training.methods.common.lookahead import forward_with, lookahead

# ------------------------------------------------------------------ surrogate: clean-feature statistics


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """labels (m,) int64 -> (C,) float32 counts; a class without a clean sample is an error."""
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float32)  # (C,)
    missing = torch.nonzero(counts == 0).flatten().tolist()
    if missing:
        raise ConfigError(
            f"the clean meta subset has no sample of class(es) {missing[:10]} (of {num_classes}); the surrogate "
            f"needs every class in it: make a class-balanced mask with tools/make_shards.py --clean-subset M"
        )
    return counts


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """features (m, D), labels (m,) -> (C, D): the mean feature of each class."""
    counts = class_counts(labels, num_classes)
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)  # (C, D)
    return sums / counts.to(features.dtype)[:, None]


def class_balanced_mean(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(D,): sum_j F_v[j] / count(y_j), normalised to weights summing to 1 = the mean of the class means,
    so a class with many clean samples does not pull the centre towards itself."""
    return class_means(features, labels, num_classes).mean(dim=0)


def clean_centres(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From clean features (m, D) and labels (m,): (mu (D,), centred class means (C, D) = class means - mu)."""
    means = class_means(features, labels, num_classes)  # (C, D)
    mu = means.mean(dim=0)
    return mu, means - mu


# ------------------------------------------------------------------ surrogate: per-batch scores and weights


def class_mean_kernel(features: torch.Tensor, clean_features: torch.Tensor, clean_labels: torch.Tensor,
                      num_classes: int) -> torch.Tensor:
    """The literal route (reference for tests): centre both sides by the class-balanced clean mean,
    K = Ft @ Ftv^T (B, m), then S[i, c] = mean over clean j of class c of K[i, j] -> (B, C)."""
    mu = class_balanced_mean(clean_features, clean_labels, num_classes)
    kernel = (features - mu) @ (clean_features - mu).T  # (B, m)
    counts = class_counts(clean_labels, num_classes)
    sums = torch.zeros(features.shape[0], num_classes, dtype=kernel.dtype, device=kernel.device)
    sums.index_add_(1, clean_labels, kernel)  # (B, C)
    return sums / counts.to(kernel.dtype)


def class_scores(features: torch.Tensor, mu: torch.Tensor, centred_means: torch.Tensor) -> torch.Tensor:
    """S (B, C) from features (B, D), mu (D,) and centred class means (C, D); equals class_mean_kernel."""
    return (features - mu) @ centred_means.T


def row_shift(scores: torch.Tensor) -> torch.Tensor:
    """S' = S - (second largest value of each row): the top class gets a positive margin, all others <= 0."""
    second = torch.topk(scores, k=2, dim=1).values[:, 1:2]  # (B, 1)
    return scores - second


def label_signed(shifted: torch.Tensor, labels: torch.Tensor, alpha0: float) -> torch.Tensor:
    """d_i = S'[i, y_i] - alpha0 * sum_{c != y_i} S'[i, c]   -> (B,)."""
    own = shifted.gather(1, labels[:, None]).squeeze(1)  # (B,)
    others = shifted.sum(dim=1) - own
    return own - alpha0 * others


def surrogate_scores(features: torch.Tensor, labels: torch.Tensor, mu: torch.Tensor, centred_means: torch.Tensor,
                     alpha0: float) -> torch.Tensor:
    """features (B, D) float32, labels (B,) given labels -> d (B,)."""
    return label_signed(row_shift(class_scores(features, mu, centred_means)), labels, alpha0)


def surrogate_weights(d: torch.Tensor) -> torch.Tensor:
    """The weight rule: ones if no d is negative; otherwise 0 for d <= 0 and
    min(1, 0.5 + 0.5 d / min_{k: d_k < 0} |d_k|) for d > 0 (the smallest negative margin sets the scale)."""
    # Without a host sync: scale is +inf when no d is negative, and then every weight is 1.
    scale = torch.where(d < 0, -d, torch.full_like(d, float("inf"))).min()  # smallest |d_k| over d_k < 0
    rule = torch.where(d > 0, torch.clamp(0.5 + 0.5 * d / scale, max=1.0), torch.zeros_like(d))
    return torch.where(torch.isinf(scale), torch.ones_like(d), rule)


def alpha0_at(epoch: int, num_classes: int, alpha0_epochs: int, alpha0: float | None = None) -> float:
    """The alpha0 schedule: alpha0 (default 1/(C-1)) while epoch < alpha0_epochs (0-based), then 0."""
    if epoch >= alpha0_epochs:
        return 0.0
    return float(alpha0) if alpha0 is not None else 1.0 / (num_classes - 1)


# ------------------------------------------------------------------ L2RW (Ren et al. 2018)


def check_lookahead_setup(method: str, accelerator) -> None:
    """The look-ahead meta methods (L2RW, MW-Net) run in one process, without fp16: refuse the others."""
    if accelerator.num_processes > 1:
        raise ConfigError(
            f"method {method!r} runs in one process only ({accelerator.num_processes} were launched): its meta "
            f"step differentiates through a one-step look-ahead, which under DDP would use each process's "
            f"unreduced gradient and its own clean batch. Run it without accelerate launch (one GPU), or use "
            f"method.name=surrogate, which supports several processes"
        )
    if accelerator.mixed_precision == "fp16":
        raise ConfigError(f"method {method!r}: its meta gradient is not loss-scaled, so fp16 can underflow; "
                          f"use mixed_precision=bf16 or no")


def l2rw_meta_gradient(model: nn.Module, ce: torch.Tensor, clean_images: torch.Tensor, clean_labels: torch.Tensor,
                       lr: float, weight_decay: float = 0.0) -> torch.Tensor:
    """g_i = -d L_clean(w_hat(eps)) / d eps_i at eps = 0, where w_hat = w - lr * grad_w(sum_i eps_i ce_i)
    (one differentiable SGD step, training/methods/common/lookahead.py) and ce (B,) are the per-sample losses of
    the model's forward on the noisy batch (graph kept: the caller may still backpropagate through ce).
    Positive g_i: up-weighting sample i would lower the clean loss."""
    eps = torch.zeros_like(ce, requires_grad=True)  # (B,)
    ahead = lookahead(model, (eps * ce).sum(), lr, weight_decay)
    clean_logits = forward_with(model, ahead, clean_images)  # (Bv, K)
    clean_loss = F.cross_entropy(clean_logits.float(), clean_labels)
    (grad_eps,) = torch.autograd.grad(clean_loss, eps, retain_graph=True)
    return -grad_eps.detach()


def l2rw_weights(g: torch.Tensor) -> torch.Tensor | None:
    """max(g, 0) normalised to sum 1 (B,); None when every weight is zero (the caller skips the step)."""
    w = torch.clamp(g, min=0)
    total = w.sum()
    if float(total) <= 0:
        return None
    return w / total


# ------------------------------------------------------------------ diagnostics


def weight_diagnostics(weight: np.ndarray, noisy: np.ndarray, clean: np.ndarray, prefix: str = "weight") -> dict:
    """How the per-sample weights (N,) separate wrong labels (noisy != clean) from right ones, over the
    rows that were weighted (weight >= 0; -1 marks rows never weighted, e.g. the clean subset) and whose
    clean label is known (>= 0).

    <prefix>_right / _wrong: mean weight of samples whose given label is right / wrong;
    <prefix>_auroc: AUROC of (-weight) as a detector of wrong labels (1 = every wrong label weighs less
    than every right one, 0.5 = chance; ties count half);
    <prefix>_zero_wrong / _zero_right: fraction of wrong / right labels given weight 0.
    A key is left out when it is undefined (no wrong, or no right, labels among the rows)."""
    keep = (weight >= 0) & (clean >= 0)
    w, wrong = weight[keep].astype(np.float64), (noisy[keep] != clean[keep])
    out = {}
    if (~wrong).any():
        out[f"{prefix}_right"] = float(w[~wrong].mean())
        out[f"{prefix}_zero_right"] = float((w[~wrong] == 0).mean())
    if wrong.any():
        out[f"{prefix}_wrong"] = float(w[wrong].mean())
        out[f"{prefix}_zero_wrong"] = float((w[wrong] == 0).mean())
    if wrong.any() and (~wrong).any():
        out[f"{prefix}_auroc"] = auroc(-w, wrong)
    return out
