"""timm backbones (Inception-ResNet-v2 for mini-WebVision, VGG19-BN for ANIMAL-10N) with the registry's
interface: `features(x) -> (B, F)` and a linear head `fc`. Built without weights; pretrained ones come
from training/models/pretrained.py (local files only)."""

from __future__ import annotations

import torch
from torch import nn


class TimmClassifier(nn.Module):
    """A timm model without its classifier (``num_classes=0``: pooled features) plus our own `fc`."""

    def __init__(self, arch: str, num_classes: int):
        super().__init__()
        import timm  # imported here: the registry stays cheap to import

        self.backbone = timm.create_model(arch, pretrained=False, num_classes=0)
        # VGG keeps its 4096-wide pre-logits MLP, reported as head_hidden_size; others pool num_features
        self.num_features = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.fc = nn.Linear(self.num_features, num_classes)
        head = self.backbone.pretrained_cfg.get("classifier")  # timm's classifier module, dropped from weights files
        self.head_keys = (f"{head}.",) if head else ()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, F): 1536 Inception-ResNet-v2, 4096 VGG19-BN

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))  # (B, num_classes)


def inception_resnet_v2(num_classes: int) -> TimmClassifier:
    """Inputs of at least 75 px (mini-WebVision: 227 or 299)."""
    return TimmClassifier("inception_resnet_v2", num_classes)


def vgg19_bn(num_classes: int) -> TimmClassifier:
    return TimmClassifier("vgg19_bn", num_classes)
