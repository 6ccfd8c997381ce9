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

Two views (methods that declare DataNeeds(views=("weak", "strong")), e.g. IDO): `train_views`
returns "weak", the normal train augmentation above (the same tensor as `apply(train=True)` gives
for the same generator), and "strong", an independent draw of the same crop/flip followed by a
photometric RandAugment (`randaugment`, n ops per image, magnitude m of MAX_MAGNITUDE; the op list
and the magnitude scale are in RANDAUGMENT_OPS's comment). The strong view has its own generator,
so asking for views never changes the weak images.

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
    augment: bool = True  # false: training images get the eval transform (no crop, no flip), e.g. to let a
    # model memorise wrong labels quickly (the CPU memorisation regime); extra views still differ by their draws

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
    train = train and config.augment
    if config.kind == "cifar":
        if train:
            images = random_crop_flip(images, config.size, config.pad, generator)
        elif images.shape[-1] != config.size or images.shape[-2] != config.size:
            images = center_crop(images, config.size)
        return normalise(images, config)
    if train:
        return normalise(random_resized_crop_flip(images, config.size, generator), config)
    return normalise(center_crop(images, config.size), config)


# ----------------------------------------------------------------------------------------------
# RandAugment, photometric ops only, batched on (B, 3, H, W) uint8
#
# The magnitude scale is torchvision's (31 bins): m in [0, MAX_MAGNITUDE = 30], strength = m / 30.
# RandAugment(n=2, m=10) therefore means 2 ops per image at a third of their largest strength:
#   identity      -
#   brightness    blend with black,          factor 1 +- 0.9 * m/30  (m=10: 0.7 or 1.3, sign random per image)
#   contrast      blend with the image's mean grey level, same factor range
#   color         blend with the image's greyscale (saturation), same factor range
#   sharpness     blend with the 3x3-smoothed image (PIL's SMOOTH kernel, border kept), same factor range
#   posterize     keep 8 - round(4 * m/30) bits per channel    (m=10: 7 bits)
#   solarize      invert pixels >= 255 * (1 - m/30)            (m=10: >= 170)
#   equalize      per-channel histogram equalisation (PIL's algorithm), no magnitude
#   autocontrast  per-channel min/max stretch to [0, 255], no magnitude
# Geometric ops (rotate, shear, translate) are left out: the spec asks for photometric ops only, and
# the crop/flip before them already moves the image. Each op's output is rounded back to uint8,
# as PIL does between ops, so posterize/solarize/equalize see integer pixels.

MAX_MAGNITUDE = 30
RANDAUGMENT_OPS = ("identity", "brightness", "contrast", "color", "sharpness", "posterize", "solarize", "equalize",
                   "autocontrast")
ENHANCE_RANGE = 0.9  # largest |factor - 1| of the blend ops, at m = MAX_MAGNITUDE
GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights, as PIL's convert("L")


@dataclass(frozen=True, kw_only=True)
class RandAugmentConfig:
    """RandAugment of the strong view: `n` ops per image, drawn uniformly (with replacement) from `ops`."""

    n: int = 2  # ops applied to every image, one after the other
    magnitude: int = 10  # strength, 0..MAX_MAGNITUDE (torchvision's scale)
    ops: tuple[str, ...] = RANDAUGMENT_OPS

    def __post_init__(self) -> None:
        if self.n < 0 or not 0 <= self.magnitude <= MAX_MAGNITUDE:
            raise ValueError(f"RandAugmentConfig: n must be >= 0 and magnitude in [0, {MAX_MAGNITUDE}], "
                             f"got n={self.n} magnitude={self.magnitude}")
        unknown = [op for op in self.ops if op not in RANDAUGMENT_OPS]
        if unknown or not self.ops:
            raise ValueError(f"RandAugmentConfig: unknown ops {unknown} (or none); choose from {RANDAUGMENT_OPS}")


def _to_uint8(x: Tensor) -> Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _blend(images: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """PIL ImageEnhance: degenerate + factor (image - degenerate); factor (b,), clipped to uint8."""
    out = images.float().sub_(degenerate).mul_(factor.view(-1, 1, 1, 1)).add_(degenerate)
    return _to_uint8(out)


def grey(images: Tensor) -> Tensor:
    """(b, 3, H, W) uint8 -> (b, 1, H, W) float32 luma."""
    w = torch.tensor(GREY, device=images.device).view(1, 3, 1, 1)
    return (images.float() * w).sum(dim=1, keepdim=True)


def brightness(images: Tensor, factor: Tensor) -> Tensor:
    return _blend(images, torch.zeros((), device=images.device), factor)


def contrast(images: Tensor, factor: Tensor) -> Tensor:
    return _blend(images, grey(images).mean(dim=(1, 2, 3), keepdim=True), factor)


def color(images: Tensor, factor: Tensor) -> Tensor:
    return _blend(images, grey(images), factor)


def sharpness(images: Tensor, factor: Tensor) -> Tensor:
    """Blend with the image smoothed by [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13; border pixels stay as they are."""
    kernel = torch.ones(3, 1, 3, 3, device=images.device)
    kernel[:, :, 1, 1] = 5.0
    kernel /= 13.0
    smooth = images.float()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(images.float(), kernel, groups=3).round_()  # (b, 3, H-2, W-2)
    return _blend(images, smooth, factor)


def posterize(images: Tensor, bits: int) -> Tensor:
    mask = (0xFF << (8 - bits)) & 0xFF
    return images & mask


def solarize(images: Tensor, threshold: float) -> Tensor:
    return torch.where(images >= threshold, 255 - images, images)


def autocontrast(images: Tensor) -> Tensor:
    """Per image and channel: (x - min) * 255 / (max - min); a flat channel is left unchanged."""
    x = images.float()
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), 255.0 / (hi - lo).clamp_min(1e-6))
    out = torch.where(flat, x, (x - lo) * scale)
    return _to_uint8(out)


def equalize(images: Tensor) -> Tensor:
    """PIL's ImageOps.equalize per image and channel, all at once.

    With the channel's 256-bin histogram h, n pixels and h_last the count of its highest non-empty
    bin: step = (n - h_last) // 255; a channel with step 0 is left unchanged, else value v maps to
    min(255, (cdf(v - 1) + step // 2) // step), cdf(v - 1) = pixels with values below v.
    """
    b, c, h, w = images.shape
    flat = images.reshape(b * c, h * w).long()  # (bc, HW)
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=images.device).scatter_add_(1, flat, torch.ones_like(flat))
    levels = torch.arange(256, device=images.device)
    last = torch.where(hist > 0, levels, -1).amax(dim=1, keepdim=True)  # (bc, 1) highest non-empty bin
    step = (h * w - hist.gather(1, last)) // 255  # (bc, 1)
    below = hist.cumsum(dim=1) - hist  # (bc, 256) pixels below each value
    lut = ((below + step // 2) // step.clamp_min(1)).clamp_(max=255)
    lut = torch.where(step > 0, lut, levels)  # (bc, 256)
    return lut.gather(1, flat).to(torch.uint8).view(b, c, h, w)


def _apply_op(name: str, images: Tensor, magnitude: int, sign: Tensor) -> Tensor:
    """One op on a sub-batch; sign (b,) +-1 chooses stronger or weaker for the blend ops."""
    strength = magnitude / MAX_MAGNITUDE
    factor = 1.0 + sign * ENHANCE_RANGE * strength  # (b,)
    if name == "identity":
        return images
    if name == "brightness":
        return brightness(images, factor)
    if name == "contrast":
        return contrast(images, factor)
    if name == "color":
        return color(images, factor)
    if name == "sharpness":
        return sharpness(images, factor)
    if name == "posterize":
        return posterize(images, 8 - round(4 * strength))
    if name == "solarize":
        return solarize(images, 255.0 * (1.0 - strength))
    if name == "equalize":
        return equalize(images)
    if name == "autocontrast":
        return autocontrast(images)
    raise ValueError(f"unknown RandAugment op {name!r}; choose from {RANDAUGMENT_OPS}")


def randaugment(images: Tensor, config: RandAugmentConfig, generator: torch.Generator) -> Tensor:
    """(B, 3, H, W) uint8 -> uint8: each image gets config.n ops drawn uniformly from config.ops.

    Batched by op: per round, the images that drew the same op are gathered, transformed together
    and written back, so a round costs one pass per op over its share of the batch.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"randaugment expects uint8 images, got {images.dtype}")
    out = images.clone()
    b = out.shape[0]
    for _ in range(config.n):
        choice = torch.randint(0, len(config.ops), (b,), device=out.device, generator=generator)  # (B,)
        sign = torch.where(torch.rand(b, device=out.device, generator=generator) < 0.5, -1.0, 1.0)  # (B,)
        for j, name in enumerate(config.ops):
            if name == "identity":
                continue
            rows = (choice == j).nonzero().squeeze(1)  # (b_j,)
            if rows.numel():
                out[rows] = _apply_op(name, out[rows], config.magnitude, sign[rows])
    return out


# ----------------------------------------------------------------------------------------------
# Views

VIEW_NAMES = ("weak", "strong")


def check_views(views: tuple[str, ...]) -> tuple[str, ...]:
    views = tuple(views)
    unknown = [v for v in views if v not in VIEW_NAMES]
    if unknown or len(set(views)) != len(views):
        raise ValueError(f"views must be distinct names from {VIEW_NAMES}, got {views}")
    return views


def _crop_flip(images: Tensor, config: TransformConfig, generator: torch.Generator) -> Tensor:
    """The train crop + flip without normalisation: uint8 (B, 3, size, size)."""
    if config.kind == "cifar":
        return random_crop_flip(images, config.size, config.pad, generator)
    return _to_uint8(random_resized_crop_flip(images, config.size, generator))


def train_views(images: Tensor, config: TransformConfig, views: tuple[str, ...], *, generator: torch.Generator,
                strong_generator: torch.Generator | None,
                augment: RandAugmentConfig = RandAugmentConfig()) -> tuple[Tensor, dict[str, Tensor]]:
    """uint8 (B, 3, S, S) -> (weak, {view name: (B, 3, size, size) float32 normalised}).

    weak is exactly apply(images, config, train=True, generator=generator) and is also views["weak"]
    when asked for; "strong" is an independent crop/flip + randaugment, drawn from strong_generator.
    """
    weak = apply(images, config, train=True, generator=generator)
    out = {}
    for name in check_views(views):
        if name == "weak":
            out[name] = weak
            continue
        if strong_generator is None:
            raise ValueError("the strong view needs its own torch.Generator (seeded from seed, epoch and process)")
        out[name] = normalise(randaugment(_crop_flip(images, config, strong_generator), augment, strong_generator),
                              config)
    return weak, out
