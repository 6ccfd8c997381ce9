"""PreAct ResNet-18 for 32x32 inputs: the pre-activation residual network (He et al. 2016, "Identity
Mappings in Deep Residual Networks") in the form the DivideMix, ELR+ and SOP+ authors train on CIFAR
(their PreResNet.py, the same file in all three repositories).

Each block is BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3, added to the shortcut: the identity on the
block's input where the shape stays, else a 1x1 strided convolution (no BN) of the pre-activated input.
Stages of 2 blocks at 64, 128, 256, 512 channels, the last three starting with stride 2.

Where that network differs from the paper's full pre-activation design, the authors' choice is kept:
  - the stem is conv3x3 (3 -> 64) followed by BN and ReLU (the paper: the convolution alone, the
    first block's BN -> ReLU normalising it); so the first block normalises an already normalised map;
  - there is no BN -> ReLU after the last block (the paper adds one before pooling): the pooled
    features are the sum of the residual branches and the shortcut, unnormalised.
Parameters for K classes: 11,166,144 + 513 K (11,171,274 for K = 10). Without the stem BN (64 scales and
64 shifts) it is the widely copied kuangliu/pytorch-cifar PreActResNet18 (11,171,146 for K = 10); the
paper's design, without the stem BN and with the final BN (512 + 512), has 11,172,170.
The authors pool with a fixed 4x4 window (global on 32x32 inputs); here the pool is global at any size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.models.resnet_cifar import CifarResNet


class PreActBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.projection = None
        if stride != 1 or in_ch != out_ch:
            self.projection = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))  # (B, C_in, H, W)
        # the identity carries the raw input; a projection sees the pre-activated one (He et al. 2016, Fig. 4e)
        shortcut = x if self.projection is None else self.projection(pre)  # (B, C_out, H / s, W / s)
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + shortcut


def preact_resnet18(num_classes: int) -> CifarResNet:
    """The CIFAR ResNet-18 layout (stem conv3x3 + BN + ReLU, global pool, fc) with pre-activation blocks."""
    return CifarResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, block=PreActBlock)
