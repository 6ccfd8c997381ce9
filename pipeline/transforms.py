"""Image transforms as batched tensor ops, for the cache loader, the fallback, and stream mode's cifar kind.

Two kinds, one config (TransformConfig):
  cifar     train: pad 4 px with zeros, random 32x32 crop, horizontal flip, normalise
            eval:  normalise only
  imagenet  train: random-resized-crop (area 8-100 %, aspect 3/4-4/3) to size, flip, normalise
            eval:  resize the shorter side to `resize`, center crop `size`, normalise

Every op works on a whole (B, 3, H, W) uint8 batch on its device at once; per-sample randomness
comes from one torch.Generator, so a (seed, epoch) pair fixes the augmentation. Stream mode
(pipeline/dali_loader.py) uses these ops too for the cifar kind, on the batches DALI decodes; its
imagenet kind keeps DALI operators (random-resized-crop needs the full-size images).

Images of the imagenet kind have varying sizes, and a batch tensor needs one size; the cache and
the fallback therefore first bring every image to `resize` x `resize` (shorter side to `resize`,
then a center crop; `to_fixed_size`). The eval center crop of that square equals the usual
"resize then center crop"; the train random-resized-crop sees the central square only, a known
approximation of the cache mode (stream mode with DALI crops from the full image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # per channel, fraction of 255
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RRC_AREA = (0.08, 1.0)  # random-resized-crop area range, fraction of the image
RRC_RATIO = (3 / 4, 4 / 3)  # random-resized-crop aspect range, width / height


@dataclass(frozen=True, kw_only=True)
class TransformConfig:
    """How images become normalised float tensors; presets: `cifar10()`, `imagenet()`."""

    kind: Literal["cifar", "imagenet"]
    size: int  # output side, px
    mean: tuple[float, float, float]  # per channel RGB, fraction of 255
    std: tuple[float, float, float]  # per channel RGB, fraction of 255
    pad: int = 4  # cifar train: zero padding before the random crop, px
    resize: int = 256  # imagenet: eval shorter side, and the side of the cached square, px

    def __post_init__(self) -> None:
        if self.kind not in ("cifar", "imagenet"):
            raise ValueError(f"TransformConfig.kind must be 'cifar' or 'imagenet', got {self.kind!r}")
        if self.size < 1 or self.pad < 0:
            raise ValueError(f"TransformConfig: size must be >= 1 and pad >= 0, got size={self.size} pad={self.pad}")
        if self.kind == "imagenet" and self.resize < self.size:
            raise ValueError(
                f"TransformConfig: resize ({self.resize}) must be >= size ({self.size}) for the center crop; "
                f"set resize to at least {self.size} (the usual ratio is size / 0.875)"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"TransformConfig: mean and std need 3 values each, std > 0; got {self.mean}, {self.std}")


def cifar10(**overrides) -> TransformConfig:
    return TransformConfig(**{"kind": "cifar", "size": 32, "mean": CIFAR10_MEAN, "std": CIFAR10_STD, **overrides})


def imagenet(**overrides) -> TransformConfig:
    return TransformConfig(
        **{"kind": "imagenet", "size": 224, "resize": 256, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, **overrides}
    )


# ----------------------------------------------------------------------------------------------
# Single images (decode side): bring every image to the shape the batch ops expect


def stored_side(config: TransformConfig) -> int:
    """Side of the square uint8 images the batch ops take: the crop size for cifar, `resize` for imagenet."""
    return config.size if config.kind == "cifar" else config.resize


def to_fixed_size(image: Tensor, side: int) -> Tensor:
    """(3, H, W) uint8 -> (3, side, side) uint8: shorter side resized to `side` (antialiased), center crop."""
    _, h, w = image.shape
    if h == side and w == side:
        return image
    scale = side / min(h, w)
    new_h, new_w = max(side, round(h * scale)), max(side, round(w * scale))
    resized = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - side) // 2, (new_w - side) // 2
    out = resized[0, :, top : top + side, left : left + side]
    return out.round_().clamp_(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------------
# Batched ops on (B, 3, S, S) uint8


def normalise(images: Tensor, config: TransformConfig) -> Tensor:
    """Pixels in [0, 255] (uint8 or float, (B, 3, H, W)) -> contiguous float32 (x / 255 - mean) / std.

    A strided input (e.g. a channels-last view of DALI's HWC output) is made contiguous before the
    float conversion: copying the uint8 pixels is about 3x cheaper than a strided float copy.
    """
    scale = torch.tensor([1.0 / (255.0 * s) for s in config.std], device=images.device).view(1, 3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(config.mean, config.std)], device=images.device).view(1, 3, 1, 1)
    out = images.contiguous().to(torch.float32, copy=True)
    return out.mul_(scale).sub_(shift)  # (B, 3, H, W) float32


def random_crop_flip(images: Tensor, size: int, pad: int, generator: torch.Generator) -> Tensor:
    """Per-sample random crop of a zero-padded batch plus random horizontal flip, as two gathers.

    images (B, 3, S, S) uint8 -> (B, 3, size, size); offsets uniform in [0, S + 2 pad - size].
    Rows are gathered first, then columns; the flip is folded into the column index (torch.where
    on the index, not on the pixels). Two torch.gather calls with expanded indices run about twice
    as fast on the CPU as one 4-D advanced-indexing gather.
    """
    b, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images  # (B, 3, H+2p, W+2p), zeros
    max_y, max_x = h + 2 * pad - size, w + 2 * pad - size
    if max_y < 0 or max_x < 0:
        raise ValueError(f"random crop of {size} px from {h}x{w} images padded by {pad} px is impossible")
    oy = torch.randint(0, max_y + 1, (b,), device=device, generator=generator)  # (B,)
    ox = torch.randint(0, max_x + 1, (b,), device=device, generator=generator)  # (B,)
    flip = torch.rand(b, device=device, generator=generator) < 0.5  # (B,)
    ar = torch.arange(size, device=device)
    rows = (oy[:, None] + ar).view(b, 1, size, 1).expand(b, c, size, w + 2 * pad)
    cols = (ox[:, None] + torch.where(flip[:, None], size - 1 - ar, ar)).view(b, 1, 1, size).expand(b, c, size, size)
    return padded.gather(2, rows).gather(3, cols)  # (B, 3, size, size)


def random_resized_crop_flip(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Per-sample random-resized-crop + horizontal flip, batched through one affine grid_sample.

    images (B, 3, S, S) uint8 -> (B, 3, size, size) float32 in [0, 255]. Area and aspect are drawn
    like torchvision's RandomResizedCrop (log-uniform aspect) but without its 10 retries: a box
    that does not fit is shrunk to fit, which keeps it one vectorised draw.
    """
    b, _, h, w = images.shape
    device = images.device
    area = torch.empty(b, device=device).uniform_(*RRC_AREA, generator=generator)  # (B,) fraction
    log_ratio = torch.empty(b, device=device).uniform_(math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]), generator=generator)
    ratio = log_ratio.exp()  # (B,) width / height
    box_w = (area * ratio).sqrt().clamp(max=1.0)  # (B,) fraction of the width
    box_h = (area / ratio).sqrt().clamp(max=1.0)  # (B,) fraction of the height
    cx = (torch.rand(b, device=device, generator=generator) * 2 - 1) * (1 - box_w)  # (B,) centre in [-1, 1]
    cy = (torch.rand(b, device=device, generator=generator) * 2 - 1) * (1 - box_h)
    flip = torch.rand(b, device=device, generator=generator) < 0.5
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0] = torch.where(flip, -box_w, box_w)
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = box_h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)  # (B, size, size, 2)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def center_crop(images: Tensor, size: int) -> Tensor:
    """(B, 3, S, S) -> (B, 3, size, size), the central window."""
    _, _, h, w = images.shape
    top, left = (h - size) // 2, (w - size) // 2
    return images[:, :, top : top + size, left : left + size]


def apply(images: Tensor, config: TransformConfig, *, train: bool, generator: torch.Generator | None) -> Tensor:
    """uint8 (B, 3, S, S) with S = stored_side(config) -> float32 (B, 3, size, size) normalised."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"transforms expect uint8 (B, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
    if train and generator is None:
        raise ValueError("train transforms need a torch.Generator (seeded from seed and epoch)")
    if config.kind == "cifar":
        if train:
            images = random_crop_flip(images, config.size, config.pad, generator)
        elif images.shape[-1] != config.size or images.shape[-2] != config.size:
            images = center_crop(images, config.size)
        return normalise(images, config)
    if train:
        return normalise(random_resized_crop_flip(images, config.size, generator), config)
    return normalise(center_crop(images, config.size), config)
