"""Methods outside the trainer: a method built on a hand-made context, and the Run handle its hooks
and steps receive, for one CPU process without Accelerate's global state."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from state.store import SampleStore
from training.methods import METHODS
from training.methods.base import Method, MethodContext, Run


class FakeAccelerator:
    """The Accelerator calls methods make, for one CPU process."""

    num_processes = 1
    process_index = 0
    is_main_process = True
    mixed_precision = "no"
    device = torch.device("cpu")

    def autocast(self):
        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()

    def unwrap_model(self, model):
        return model

    def reduce(self, tensor, reduction="sum"):
        return tensor


def make_method(name: str, labels, *, num_classes: int = 3, clean=None, epochs: int = 20, base_lr: float = 0.1,
                build_model: Callable[[], nn.Module] | None = None,
                build_optimizer: Callable | None = None, **params) -> Method:
    """Method `name` with `params` on the given labels (N,); models are nn.Linear(2, K) and optimisers SGD
    at base_lr unless given."""
    labels = torch.as_tensor(labels)
    ctx = MethodContext(num_classes=num_classes, num_samples=len(labels), noisy_labels=labels,
                        clean_labels=None if clean is None else torch.as_tensor(clean), epochs=epochs, base_lr=base_lr,
                        build_model=build_model or (lambda: nn.Linear(2, num_classes)),
                        build_optimizer=build_optimizer or (lambda p: torch.optim.SGD(p, lr=base_lr)))
    cls = METHODS[name]
    return cls(cls.Config.model_validate(params), ctx)


def make_store(method: Method, **kwargs) -> SampleStore | None:
    """The method's sample store (labels and K from its context), or None when it keeps no arrays."""
    specs = method.state_arrays()
    if not specs:
        return None
    ctx = method.ctx
    return SampleStore(specs, ctx.num_samples, labels=ctx.noisy_labels.cpu(), num_classes=ctx.num_classes, **kwargs)


def make_run(method: Method, *, models: dict[str, nn.Module] | None = None,
             optimizers: dict[str, torch.optim.Optimizer] | None = None, accelerator=None,
             store: SampleStore | None = None, epoch: int = 0, **kwargs) -> Run:
    """A Run for `method`: its own models, optimisers and store unless given (kwargs: clean, steps, ...)."""
    models = method.build_models() if models is None else models
    optimizers = method.build_optimizers(models) if optimizers is None else optimizers
    return Run(models=models, optimizers=optimizers, accelerator=accelerator or FakeAccelerator(),
               store=make_store(method) if store is None else store, epoch=epoch, **kwargs)
