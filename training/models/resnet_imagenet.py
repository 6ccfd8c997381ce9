"""torchvision ResNet-50 for ImageNet-size inputs (Clothing1M, WebVision), with the same
`features` / `fc` interface as the CIFAR models. Weights start random; loading pretrained
weights from a local file belongs to the real-world-datasets work."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet50 as tv_resnet50


class ResNet50(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        net = tv_resnet50(weights=None)
        self.num_features = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone = net
        self.fc = nn.Linear(self.num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))  # (B, num_classes)
