"""Model registry: an explicit name -> constructor(num_classes) dict.

Every model exposes `features(x) -> (B, F)` and a linear head `fc`, which methods with a
meta model or feature-space rules (EBOMLC, the surrogate) rely on."""

from __future__ import annotations

from typing import Callable

from torch import nn

from training.models.resnet_cifar import resnet18, resnet32, resnet34
from training.models.resnet_imagenet import ResNet50
from training.models.tiny_cnn import TinyCNN

MODELS: dict[str, Callable[[int], nn.Module]] = {
    "tiny_cnn": TinyCNN,
    "resnet18": resnet18,
    "resnet32": resnet32,
    "resnet34": resnet34,
    "resnet50": ResNet50,
}


def build_model(name: str, num_classes: int) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes)
