"""The Method interface the trainer drives (DESIGN rule 4).

A method declares what it needs (per-sample arrays, data views, the clean subset, its models) and
supplies `loss` (the default `train_step` then runs the standard step) or its own `train_step`
(several models, meta steps). Every hook and step receives the `Run` handle: the models, optimisers,
accelerator, sample store and clean subset as they are now, so a method keeps no references to them.
Methods never log, write files, checkpoint or check the main process: they return an `EpochReport`
and the trainer writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

import numpy as np
import torch
from accelerate.utils import DistributedType
from pydantic import BaseModel, ConfigDict
from torch import nn

from pipeline.load.batch import Batch
from state.spec import ArraySpec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from state.store import SampleStore
    from training.clean_subset import CleanSubset


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class DataNeeds:
    views: tuple[str, ...] = ()  # extra augmented views per batch, names from pipeline.load.transforms.VIEW_NAMES
    clean_subset: bool = False  # needs the clean meta subset as a second stream
    train_eval: bool = False  # calls Run.eval_train: passes over the training split with the eval transform
    select: bool = False  # trains each epoch on the samples `Method.select` returns (pipeline SelectedEpochs)


#: fn(models, batch) -> (B, ...) per-sample values, run under no_grad with every model in eval mode
EvalFn = Callable[[dict[str, nn.Module], Batch], torch.Tensor]


def _no_train_eval(fn: EvalFn) -> tuple[torch.Tensor, torch.Tensor]:
    raise RuntimeError("eval_train needs needs = DataNeeds(train_eval=True) on the method class")


@dataclass
class Run:
    """The run as it is now, handed to every hook and step (STYLE 23: a method keeps no references to
    models, optimisers, loaders or the accelerator between calls)."""

    models: dict[str, nn.Module]  # the prepared models, by name (build_models)
    optimizers: dict[str, torch.optim.Optimizer]  # by model name (build_optimizers)
    accelerator: Any  # accelerate.Accelerator
    store: SampleStore | None = None  # the per-sample arrays of state_arrays(); None when there are none
    clean: CleanSubset | None = None  # the clean meta subset, with needs.clean_subset
    epoch: int = 0  # 0-based epoch being trained
    steps: int = 0  # batches this epoch, the same in every process
    #: eval_train(fn) -> (idx (n,) int64 ascending, values (n, ...)): fn over every sample of the training
    #: stream exactly once (n = all of the split but the clean meta subset), gathered by idx from all
    #: processes, the same on every process; models go back to their modes afterwards. Only for
    #: methods that declare needs.train_eval.
    eval_train: Callable[[EvalFn], tuple[torch.Tensor, torch.Tensor]] = _no_train_eval
    #: make_loader(split, train=..., batch_size=..., exclude=None) -> a loader over a split of the run's
    #: dataset with the run's decoding, transforms and process sharding (pipeline make_loader)
    make_loader: Callable[..., Any] | None = None

    def unwrap(self, name: str = "model") -> nn.Module:
        """The model without its distributed/compile wrappers (for functional calls and weight copies)."""
        return self.accelerator.unwrap_model(self.models[name])

    def update(self, loss: torch.Tensor, names: Iterable[str] = ("model",)) -> None:
        """The standard step: backward through `loss`, then step and zero the named optimisers."""
        self.accelerator.backward(loss)
        self.step(names)

    def step(self, names: Iterable[str] = ("model",)) -> None:
        for name in names:
            optimizer = plain_optimizer(self.optimizers[name])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def plain_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimiser inside an Accelerate-prepared one where the wrapper's step would only forward to
    it (no fp16 grad scaler, not XLA, gradients synchronised this step); otherwise the wrapper itself.

    Accelerate's AcceleratedOptimizer.step probes for the optional lomo_optim package with two uncached
    importlib find_spec calls, and its zero_grad inspects a signature, on every step: about 1 ms of host
    time per step in a profile of tools/bench_trainer.py on the CPU (2 % of a tiny-CNN step there, a
    larger share of a fast GPU step)."""
    inner = getattr(optimizer, "optimizer", None)
    if inner is None or getattr(optimizer, "scaler", None) is not None:
        return optimizer
    if optimizer.accelerator_state.distributed_type == DistributedType.XLA:
        return optimizer
    return inner if optimizer.gradient_state.sync_gradients else optimizer


@dataclass
class EpochReport:
    """What a method returns at the end of an epoch. The trainer puts `metrics` in the epoch's log row
    and writes the rest under <run>/method/ on the main process, each file replaced in one rename."""

    metrics: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)  # relative path ending .png -> figure
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # relative path ending .npy -> array
    texts: dict[str, str] = field(default_factory=dict)  # relative path -> the whole file (e.g. JSON lines)


@dataclass
class MethodContext:
    """What the trainer hands a method when it builds it."""

    num_classes: int
    num_samples: int  # N of the training split (state arrays have N rows)
    noisy_labels: torch.Tensor  # (N,) int64 on the training device, indexed by idx
    clean_labels: torch.Tensor | None  # (N,) int64 when known: for diagnostics only, never for training
    epochs: int
    base_lr: float  # optim.lr, the rate the schedule's factors multiply
    build_model: Callable[[], nn.Module]  # a fresh model of the configured architecture
    build_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]  # the configured optimiser
    class_names: list[str] = field(default_factory=list)  # for figures; index k when empty


@dataclass
class StepOutput:
    terms: dict[str, torch.Tensor]  # "loss" plus any scalar terms to log
    logits: torch.Tensor  # (B, K) main-model logits on the batch, for the trainer's metrics


class Method:
    """Base class: subclasses set `name`, `Config` and implement `loss` or `train_step`."""

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]] = NoParams
    needs: ClassVar[DataNeeds] = DataNeeds()
    #: Optimisers (by model name) that keep a constant learning rate.
    unscheduled: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: BaseModel, ctx: MethodContext):
        self.config = config
        self.ctx = ctx

    def state_arrays(self) -> list[ArraySpec]:
        return []

    def build_models(self) -> dict[str, nn.Module]:
        """Models this method trains; "model" is the one `predict` uses by default."""
        return {"model": self.ctx.build_model()}

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per model, by default the configured one (optim.*). The trainer applies the
        learning-rate schedule to each, except those named in `unscheduled` (e.g. a meta model's Adam)."""
        return {name: self.ctx.build_optimizer(model.parameters()) for name, model in models.items()}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, batch: Batch, run: Run) -> dict[str, torch.Tensor]:
        """logits (B, K), labels (B,) int64 noisy labels of batch.idx -> {"loss": scalar, ...}."""
        raise NotImplementedError(f"method {self.name!r} must implement loss() or train_step()")

    def train_step(self, batch: Batch, labels: torch.Tensor, run: Run) -> StepOutput:
        """One training step on `batch` (labels (B,) int64: its given labels). By default the standard
        step: the main model's logits under autocast, `loss`, backward, optimiser step."""
        with run.accelerator.autocast():
            logits = run.models["model"](batch.images)  # (B, K)
            terms = self.loss(logits, labels, batch, run)
        run.update(terms["loss"])
        return StepOutput(terms=terms, logits=logits.detach())

    def lr_factor(self, epoch: float, factor: float) -> float:
        """The learning-rate multiplier at `epoch` (fractional), given the configured schedule's `factor`;
        a method with its own schedule (e.g. IDO's cosine over stage 2) overrides this."""
        return factor

    def state_dict(self) -> dict:
        """Method state beyond the sample store, models and optimisers (checkpointed by the trainer)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def predict(self, models: dict[str, nn.Module], images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> logits (B, K) the trainer evaluates (test accuracy); an ensemble or a
        teacher overrides this. Called under no_grad and autocast with every model in eval mode."""
        return models["model"](images)

    def on_epoch_start(self, run: Run) -> None:
        """Epoch hook, before the first batch (e.g. per-epoch passes over the clean subset or, with
        needs.train_eval, over the training split)."""

    def select(self, run: Run) -> np.ndarray | torch.Tensor | None:
        """With needs.select: bool (N,) training samples for the coming epoch, the same on every process, or
        None for all of them; called after on_epoch_start. The epoch keeps its length (the selected samples
        are shuffled and repeated to fill it), so the schedule and step counts stay fixed."""
        return None

    def on_epoch_end(self, run: Run) -> EpochReport:
        """Epoch hook, after the last batch: the epoch's method metrics and artefacts."""
        return EpochReport()
