"""A differentiable one-step look-ahead of a model's weights, shared by the meta-learning methods
(MLC, L2RW): w' = w - lr * (grad_w L + wd * w), kept in the autograd graph so a loss at w' can be
differentiated back to whatever L depended on (a meta model's labels, per-sample weights).

The look-ahead is plain SGD with the optimiser's current learning rate and weight decay (momentum
is left out, as in L2RW's reference and the usual one-step MLC reading)."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


def current_lr_wd(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    group = optimizer.param_groups[0]
    return float(group["lr"]), float(group.get("weight_decay", 0.0))


def lookahead(model: nn.Module, loss: torch.Tensor, lr: float, weight_decay: float = 0.0) -> dict[str, torch.Tensor]:
    """Weights after one differentiable SGD step on `loss` (name -> tensor, graph kept)."""
    return lookahead_with_grads(model, loss, lr, weight_decay)[0]


def lookahead_with_grads(model: nn.Module, loss: torch.Tensor, lr: float, weight_decay: float = 0.0
                         ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """(weights after the step, the gradients of `loss` it used, in named_parameters order; both in the graph)."""
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return {n: p - lr * (g + weight_decay * p) for n, p, g in zip(names, params, grads)}, list(grads)


def forward_with(model: nn.Module, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """model(x) evaluated at `weights`. Buffers (BatchNorm running statistics) are cloned so a
    look-ahead forward never changes the real model's statistics."""
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return functional_call(model, {**weights, **buffers}, (x,), strict=False)
