"""Typed run configuration: YAML recipes + dotted command-line overrides, validated by pydantic.

A recipe may name a `base:` recipe (path relative to itself) and override only what differs, so
named runs derive from one another instead of copying. Overrides look like `optim.lr=0.05`;
their values are parsed as YAML scalars, and an unknown or ill-typed key is an error naming it.
Recipes and overrides read booleans as YAML 1.2 does: only true/false, so `mixed_precision=no`
is the string "no", not false.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigError
from training.tracking import default_backend

__all__ = ["Config", "ConfigError", "dump_config", "load_config"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    root: str  # directory holding converted datasets (<root>/<name>/manifest.json)
    name: str  # dataset directory name, e.g. "cifar10"
    label_set: str  # noisy label set used for training, e.g. "sym-0.40-s0"
    clean_label_set: str | None = "clean"  # for diagnostics only; None when the clean labels are unknown
    train_split: str = "train"
    test_split: str = "test"  # the split best/last test accuracy refer to
    extra_test_splits: list[str] = []  # also evaluated every epoch, e.g. ["imagenet_val"] for mini-WebVision
    clean_subset: str | None = None  # mask of the clean meta subset, e.g. "clean-subset-1000-s0": left out of
    # the noisy training stream, and served (with its clean labels) to methods that need it
    clean_batch_size: int | None = Field(None, gt=0)  # per process; default: batch_size
    loader: Literal["stream", "cache"] = "cache"
    transform: Literal["cifar", "imagenet"] = "cifar"
    augment: bool = True  # false: train on the eval transform (no crop/flip/resized crop), every loader mode
    image_size: int = Field(32, gt=0)  # output side in px (32 CIFAR, 224 ImageNet-style)
    upscale: int | None = Field(None, gt=0)  # cifar transform: upsample the finished 32 px batch to this side
    # (224 for ImageNet-pretrained backbones, as the IDO authors do: crop/flip at 32 px, then resize)
    strong_magnitude: int = Field(10, ge=2, le=10)  # m of the strong view's RandAugment (IDO: 5 on CIFAR-10)
    batch_size: int = Field(128, gt=0)  # per process
    eval_batch_size: int = Field(512, gt=0)  # per process
    num_threads: int = Field(2, gt=0)  # DALI / decode worker threads per process
    verify: Literal["auto", "full", "quick"] = "auto"  # before training, check the shards against the manifest:
    # full = sha256, quick = existence and size, auto = full up to pipeline.format.dataset.FULL_VERIFY_BYTES of shards
    mmap: bool = True  # stream mode: DALI memory-maps the tars; false reads them (RSS stays flat, BENCHMARKS.md)
    epoch_samples: int | None = Field(None, gt=0)  # train each epoch on a fresh class-balanced random subset
    # of this many samples (over all processes, by the training labels; Clothing1M: 2000 x 64 = 128000)


class ModelConfig(_Section):
    name: str  # a name from training.models.MODELS
    pretrained: str | None = None  # weights file, or "auto" (torch/timm cache); never downloaded at run time


class OptimConfig(_Section):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(gt=0)  # learning rate at the start of the schedule
    momentum: float = Field(0.9, ge=0)  # SGD only
    weight_decay: float = Field(5e-4, ge=0)
    nesterov: bool = False  # SGD only
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = []  # epochs at which multistep multiplies lr by gamma
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: int = Field(0, ge=0)  # linear warm-up from lr/10 (per step)

    @model_validator(mode="after")
    def _check_milestones(self) -> "OptimConfig":
        if self.schedule == "multistep" and sorted(self.milestones) != self.milestones:
            raise ValueError(f"optim.milestones must be increasing, got {self.milestones}")
        return self


class StateConfig(_Section):
    """Where the sample store keeps the method's per-sample arrays (DESIGN rule 5)."""

    placement: Literal["auto", "device", "host"] = "auto"  # auto: the training device when it is a CUDA GPU and
    # the arrays fit in device_budget_gib, else host memory (numba kernels); device on a CPU run = torch on CPU
    device_budget_gib: float = Field(4.0, gt=0)  # per process, all arrays together


class TrackingConfig(_Section):
    """Experiment trackers through Accelerate (training/tracking.py); metrics.jsonl is written either way."""

    backend: Literal["none", "tensorboard", "wandb", "mlflow", "aim"] = Field(default_factory=default_backend)
    # default: tensorboard where the package is importable, else none; files go to <run>/tracking/
    project: str | None = None  # the tracker's project / experiment name; default: the run name


class MethodConfig(_Section):
    name: str = "ce"  # a name from training.methods.METHODS
    params: dict[str, Any] = {}  # validated by the method's own config model


class Config(_Section):
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig
    method: MethodConfig = MethodConfig()
    state: StateConfig = StateConfig()
    tracking: TrackingConfig = TrackingConfig()
    epochs: int = Field(gt=0)
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    cpu: bool = False  # force CPU even where a GPU is present
    out_dir: str = "runs"
    run_name: str | None = None  # default: <dataset>-<label_set>-<method>-s<seed>
    eval_every: int = Field(1, gt=0)  # epochs
    keep_checkpoints: int = Field(1, ge=1)  # most recent epoch checkpoints kept
    deterministic: bool = False  # torch deterministic algorithms (slower; for exact resume tests)
    log_every: int = Field(50, gt=0)  # steps between reads of the loss from the device (progress bar and the
    # non-finite check); the steps in between never wait for the device
    channels_last: bool = False  # models in NHWC memory layout (faster convolutions on tensor-core GPUs)
    compile: bool = False  # torch.compile every model (first steps slower while it compiles; GPU runs)
    export_label_issues: bool = False  # after the last epoch, write <run>/label_issues/ (training/label_issues.py;
    # in-sample predictions: tools/find_label_issues.py --folds K for out-of-sample ones)

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if any(m >= self.epochs for m in self.optim.milestones):
            raise ValueError(
                f"optim.milestones {self.optim.milestones} must be < epochs ({self.epochs}); "
                f"set optim.milestones=[...] for this length of run"
            )
        return self

    @property
    def resolved_run_name(self) -> str:
        return self.run_name or f"{self.data.name}-{self.data.label_set}-{self.method.name}-s{self.seed}"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: yes/no/on/off stay strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def _read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular 'base:' chain {[str(p) for p in seen]}")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        raw = _yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    base = raw.pop("base", None)
    if base is None:
        return raw
    return _merge(_read_recipe(path.parent / base, seen + (path,)), raw)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _apply_override(tree: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    try:
        value = _yaml(text) if text else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: the value is not a YAML scalar or list ({err.problem})") from None
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = value


def _describe(err: ValidationError) -> str:
    """One clause per error, naming the key; the offending value only when it is short (never a section)."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        got = repr(e.get("input"))
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}")
        elif e["type"] == "missing":
            lines.append(f"missing required key {key!r}")
        elif isinstance(e.get("input"), dict) or len(got) > 60:
            lines.append(f"{key}: {msg}" if key else msg)
        else:
            lines.append(f"{key}: {msg} (got {got})")
    return "; ".join(lines)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    tree = _read_recipe(Path(path)) if path else {}
    for override in overrides:
        _apply_override(tree, override)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"invalid config ({path}): {_describe(err)}") from None


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
