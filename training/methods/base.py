"""The Method interface the trainer drives (DESIGN rule 4).

A method declares what it needs (per-sample arrays, data views, the clean subset, its models)
and supplies either `loss` (the trainer runs the standard step) or its own `train_step`
(several models, meta steps). Methods never log, checkpoint or compute metrics: the trainer does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Iterable

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from pipeline.load.batch import Batch
from state.spec import ArraySpec

if TYPE_CHECKING:
    from state.store import SampleStore
    from training.clean_subset import CleanSubset


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class DataNeeds:
    views: tuple[str, ...] = ()  # extra augmented views per batch, names from pipeline.load.transforms.VIEW_NAMES
    clean_subset: bool = False  # needs the clean meta subset as a second stream
    train_eval: bool = False  # calls EpochRun.eval_train: passes over the training split with the eval transform


#: fn(models, batch) -> (B, ...) per-sample values, run under no_grad with every model in eval mode
EvalFn = Callable[[dict[str, nn.Module], Batch], torch.Tensor]


@dataclass
class EpochRun:
    """What on_epoch_start receives besides the epoch: the run as it is now (STYLE 23, so a method keeps
    no references to models or loaders between calls)."""

    models: dict[str, nn.Module]  # the prepared models, by name (build_models)
    steps: int  # batches this epoch, the same in every process
    #: eval_train(fn) -> (idx (n,) int64 ascending, values (n, ...)): fn over every sample of the training
    #: stream exactly once (n = all of the split but the clean meta subset), gathered by idx from all
    #: processes, the same on every process; models go back to their modes afterwards. Only for
    #: methods that declare needs.train_eval.
    eval_train: Callable[[EvalFn], tuple[torch.Tensor, torch.Tensor]]


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
    out_dir: Path  # <run>/method/: where a method may write its own per-epoch artefacts (main process only)
    is_main_process: bool
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
    #: Set by methods that run their own step; the trainer then calls `train_step`.
    custom_step: ClassVar[bool] = False
    #: Optimisers (by model name) that keep a constant learning rate.
    unscheduled: ClassVar[tuple[str, ...]] = ()
    #: Name of a (N, K) soft-label array in the store; the trainer then reports label-correction diagnostics.
    soft_label_array: ClassVar[str | None] = None

    def __init__(self, config: BaseModel, ctx: MethodContext):
        self.config = config
        self.ctx = ctx
        self.store: SampleStore | None = None  # set by the trainer when state_arrays() is not empty
        self.clean: CleanSubset | None = None  # set by the trainer when needs.clean_subset

    def state_arrays(self) -> list[ArraySpec]:
        return []

    def build_models(self) -> dict[str, nn.Module]:
        """Models this method trains; "model" is the one the trainer evaluates."""
        return {"model": self.ctx.build_model()}

    def build_optimizers(self, models: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per model, by default the configured one (optim.*). The trainer applies the
        learning-rate schedule to each, except those named in `unscheduled` (e.g. a meta model's Adam)."""
        return {name: self.ctx.build_optimizer(model.parameters()) for name, model in models.items()}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        """logits (B, K), labels (B,) int64 noisy labels of batch.idx -> {"loss": scalar, ...}."""
        raise NotImplementedError(f"method {self.name!r} must implement loss() or train_step()")

    def train_step(self, batch: Batch, labels: torch.Tensor, models: dict[str, nn.Module],
                   optimizers: dict[str, torch.optim.Optimizer], accelerator, epoch: int) -> StepOutput:
        raise NotImplementedError

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

    def on_epoch_start(self, epoch: int, run: EpochRun) -> None:
        """Epoch hook, before the first batch (e.g. per-epoch passes over the clean subset or, with
        needs.train_eval, over the training split)."""

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Epoch hook; returns method-specific metrics for the epoch's log row."""
        return {}
