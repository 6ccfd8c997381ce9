"""ResNets for 32x32 inputs: ResNet-18/34 (He et al. 2016, 3x3 stem, no max-pool, as in the
SELC/ALR code) and ResNet-32 (the 3-stage, 16/32/64-channel CIFAR network of He et al. 2016, Sec. 4.2,
used by MLC/EBOMLC)."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv3x3 + BN + ReLU -> stages of blocks -> global average pool -> fc.
    `features(x)` returns the pooled (B, C) features the classifier sees."""

    def __init__(self, blocks: list[int], widths: list[int], num_classes: int,
                 block: type[nn.Module] = BasicBlock):
        """block(in_ch, out_ch, stride): BasicBlock, or e.g. models.preact_resnet.PreActBlock."""
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, in_ch = [], widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(block(in_ch, width, 2 if (j == 0 and i > 0) else 1))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch, num_classes)
        self.num_features = in_ch

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))  # (B, C, H', W')
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)  # (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))  # (B, num_classes)


def resnet18(num_classes: int) -> CifarResNet:
    return CifarResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes)


def resnet34(num_classes: int) -> CifarResNet:
    return CifarResNet([3, 4, 6, 3], [64, 128, 256, 512], num_classes)


def resnet32(num_classes: int) -> CifarResNet:
    return CifarResNet([5, 5, 5], [16, 32, 64], num_classes)
