"""Model registry: an explicit name -> constructor(num_classes) dict.

Every model exposes `features(x) -> (B, F)` and a linear head `fc`, which methods with a
meta model or feature-space rules (EBOMLC, the surrogate) rely on. Besides the names below, any timm or
torchvision classifier is available as ``timm:<name>`` / ``torchvision:<name>`` (training/models/by_name.py).
`pretrained` (a weights file or "auto") loads a backbone from local files only (training/models/pretrained.py)."""

from __future__ import annotations

from typing import Callable

from torch import nn

from pipeline.errors import ConfigError
from training.models.by_name import PREFIXES
from training.models.resnet_cifar import resnet18, resnet32, resnet34
from training.models.preact_resnet import preact_resnet18
from training.models.pretrained import load_backbone
from training.models.resnet_imagenet import ResNet50
from training.models.timm_models import inception_resnet_v2, vgg19_bn
from training.models.tiny_cnn import TinyCNN

MODELS: dict[str, Callable[[int], nn.Module]] = {
    "tiny_cnn": TinyCNN,
    "preact_resnet18": preact_resnet18,
    "resnet18": resnet18,
    "resnet32": resnet32,
    "resnet34": resnet34,
    "resnet50": ResNet50,
    "inception_resnet_v2": inception_resnet_v2,
    "vgg19_bn": vgg19_bn,
}


def build_model(name: str, num_classes: int, pretrained: str | None = None) -> nn.Module:
    """A fresh model; with `pretrained` (weights file or "auto") its backbone is loaded from local
    files, and a missing file is an error naming it (never a silent random init)."""
    prefix, sep, arch = name.partition(":")
    if sep and prefix in PREFIXES:
        model = PREFIXES[prefix](arch, num_classes)
    elif name in MODELS:
        model = MODELS[name](num_classes)
    else:
        raise ConfigError(f"model.name: unknown model {name!r}; known models: {', '.join(sorted(MODELS))}, "
                          f"or timm:<name> / torchvision:<name> for any timm or torchvision classifier")
    if pretrained is not None:
        load_backbone(model, name, pretrained)
    return model
