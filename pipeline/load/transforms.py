"""Image transforms as batched tensor ops, for the cache loader, the fallback, and stream mode's cifar kind.

Two kinds, one config (TransformConfig):
  cifar     train: pad 4 px with zeros, random 32x32 crop, horizontal flip, normalise
            eval:  normalise only
  imagenet  train: random-resized-crop (area 8-100 %, aspect 3/4-4/3) to size, flip, normalise
            eval:  resize the shorter side to `resize`, center crop `size`, normalise

Every op works on a whole (B, 3, H, W) uint8 batch on its device at once; per-sample randomness
comes from one torch.Generator, so a (seed, epoch) pair fixes the augmentation. Stream mode
(pipeline/load/dali_loader.py) uses these ops too for the cifar kind, on the batches DALI decodes; its
imagenet kind keeps DALI operators (random-resized-crop needs the full-size images).

Named views (methods that declare e.g. DataNeeds(views=("weak", "strong")), IDO, or ("weak", "weak2"),
DivideMix): `train_views` returns "weak", a crop + flip (reflect padding for the cifar kind, as the IDO
authors' views); "weak2", a second, independent draw of the weak view; and "strong", an independent
draw of the same crop/flip followed by the authors' RandAugment (`randaugment`, its op pool and levels
in the RandAugment section's comment). Every view beyond "weak" has its own generator, so asking for
one never changes the weak images or any other view.

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
    upscale: int | None = None  # cifar kind: bilinear upsampling of the finished size x size batch to this side,
    # e.g. 224 for ImageNet-pretrained backbones (crop/flip at 32 px, then resize: the IDO authors' order)
    strong_magnitude: int = 10  # m of the strong view's RandAugment (IDO: 5 on CIFAR-10, 10 elsewhere)

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
        if self.upscale is not None and (self.kind != "cifar" or self.upscale < self.size):
            raise ValueError(f"TransformConfig: upscale ({self.upscale}) is for the cifar kind and must be >= size "
                             f"({self.size}); with the imagenet kind set size instead")

    @property
    def output_side(self) -> int:
        """Side of the float batches the model sees."""
        return self.upscale or self.size


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


def random_crop_flip(images: Tensor, size: int, pad: int, generator: torch.Generator, *,
                     padding_mode: Literal["constant", "reflect"] = "constant") -> Tensor:
    """Per-sample random crop of a padded batch (zeros, or reflected) plus random horizontal flip, as two gathers.

    images (B, 3, S, S) uint8 -> (B, 3, size, size); offsets uniform in [0, S + 2 pad - size].
    Rows are gathered first, then columns; the flip is folded into the column index (torch.where
    on the index, not on the pixels). Two torch.gather calls with expanded indices run about twice
    as fast on the CPU as one 4-D advanced-indexing gather.
    """
    b, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad), mode=padding_mode) if pad else images  # (B, 3, H+2p, W+2p)
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


def finish(images: Tensor, config: TransformConfig) -> Tensor:
    """(B, 3, size, size) pixels -> float32 normalised, upsampled to config.upscale when set. Normalising
    first is exact: the per-channel affine map commutes with bilinear interpolation."""
    out = normalise(images, config)
    if config.upscale is not None and config.upscale != out.shape[-1]:
        out = F.interpolate(out, size=(config.upscale, config.upscale), mode="bilinear", align_corners=False)
    return out


def apply(images: Tensor, config: TransformConfig, *, train: bool, generator: torch.Generator | None) -> Tensor:
    """uint8 (B, 3, S, S) with S = stored_side(config) -> float32 (B, 3, side, side) normalised,
    side = config.output_side."""
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
        return finish(images, config)
    if train:
        return normalise(random_resized_crop_flip(images, config.size, generator), config)
    return normalise(center_crop(images, config.size), config)


# RandAugment of the strong view: the IDO authors' `RandAugmentwogeo`, batched on (B, 3, H, W) uint8
#
# Despite its name the pool has geometric ops. Each op has a (maximum, bias); at level v its value is
# v * maximum / LEVEL_SCALE + bias (truncated to an integer for the integer-valued ops, as their code
# does). Per image: n ops drawn uniformly with replacement; each is applied with probability `prob`
# at a level drawn uniformly from 1 .. magnitude - 1 (their numpy.random.randint(1, m) excludes m);
# a random sign (+-1) per image for rotate, shear, translate and solarize_add. Then a grey square of
# `cutout` x side is always cut out. The values at the CIFAR-10 setting m = 5 (levels 1..4):
#   autocontrast  per-channel min/max stretch (PIL)                      -
#   brightness, color, contrast, sharpness   PIL ImageEnhance factor     1.8 v/10 + 0.1: 0.28 .. 0.82
#   cutout        grey (127) square of int(0.1 v/10 x side) px           32 px: 0 or 1 px (PIL draws side + 1)
#   equalize      PIL histogram equalisation                             -
#   invert        255 - x                                                -
#   posterize     keep int(4 v/10) + 4 bits                              4 or 5 bits
#   rotate        int(30 v/10) degrees, nearest, black fill (PIL)         +-3 .. +-12 degrees
#   shear_x/y     shear 0.1 v/10, nearest, black fill                    +-0.01 .. +-0.04
#   solarize      invert pixels >= 256 - int(256 v/10)                   >= 231, 205, 180, 154
#   solarize_add  add +-int(110 v/10), clip, then solarize at 128        +-11 .. +-44
#   translate_x/y int(0.05 v/10 x side) px, black fill                   32 px: 0 or 1 px; 224 px: 1 .. 4 px
# m = 10 (CIFAR-100, Clothing1M, WebVision) reaches levels 1..9. Every op rounds back to uint8, as PIL
# does between ops. The geometric ops follow PIL's Image.transform exactly: the output pixel centre
# (x + 0.5, y + 0.5) maps to source coordinates, the source pixel containing it is copied (nearest),
# and pixels mapped outside the image are black.

LEVEL_SCALE = 10  # the authors' PARAMETER_MAX
OP_RANGES: dict[str, tuple[float, float] | None] = {  # op -> (maximum, bias); None: the op has no level
    "autocontrast": None, "brightness": (1.8, 0.1), "color": (1.8, 0.1), "contrast": (1.8, 0.1),
    "cutout": (0.1, 0.0), "equalize": None, "invert": None, "posterize": (4, 4), "rotate": (30, 0),
    "sharpness": (1.8, 0.1), "shear_x": (0.1, 0.0), "shear_y": (0.1, 0.0), "solarize": (256, 0),
    "solarize_add": (110, 0), "translate_x": (0.05, 0.0), "translate_y": (0.05, 0.0),
}
RANDAUGMENT_OPS = tuple(OP_RANGES)
CUTOUT_GREY = 127  # fill of both cutouts
SOLARIZE_ADD_THRESHOLD = 128
GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights, as PIL's convert("L")


@dataclass(frozen=True, kw_only=True)
class RandAugmentConfig:
    """The strong view's RandAugment (section comment above); magnitude 5 on CIFAR-10, 10 elsewhere."""

    n: int = 2  # ops drawn per image, with replacement
    magnitude: int = 10  # m: levels are drawn from 1 .. m - 1
    prob: float = 0.5  # chance that each drawn op is applied
    cutout: float = 0.15  # side of the final grey square, fraction of the image side (0: none)
    ops: tuple[str, ...] = RANDAUGMENT_OPS

    def __post_init__(self) -> None:
        if self.n < 0 or not 2 <= self.magnitude <= LEVEL_SCALE or not 0 <= self.prob <= 1 or not 0 <= self.cutout < 1:
            raise ValueError(f"RandAugmentConfig: need n >= 0, magnitude in [2, {LEVEL_SCALE}], prob in [0, 1], "
                             f"cutout in [0, 1); got n={self.n} magnitude={self.magnitude} prob={self.prob} "
                             f"cutout={self.cutout}")
        unknown = [op for op in self.ops if op not in OP_RANGES]
        if unknown or not self.ops:
            raise ValueError(f"RandAugmentConfig: unknown ops {unknown} (or none); choose from {RANDAUGMENT_OPS}")


def _to_uint8(x: Tensor) -> Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _per_image(value, images: Tensor) -> Tensor:
    """A scalar or (b,) value -> a tensor broadcasting over (b, 3, H, W)."""
    return torch.as_tensor(value, device=images.device).view(-1, 1, 1, 1)


def _blend(images: Tensor, degenerate: Tensor, factor) -> Tensor:
    """PIL ImageEnhance: degenerate + factor (image - degenerate); factor scalar or (b,), clipped to uint8."""
    out = images.float().sub_(degenerate).mul_(_per_image(factor, images).float()).add_(degenerate)
    return _to_uint8(out)


def grey(images: Tensor) -> Tensor:
    """(b, 3, H, W) uint8 -> (b, 1, H, W) float32 luma."""
    w = torch.tensor(GREY, device=images.device).view(1, 3, 1, 1)
    return (images.float() * w).sum(dim=1, keepdim=True)


def brightness(images: Tensor, factor) -> Tensor:
    return _blend(images, torch.zeros((), device=images.device), factor)


def contrast(images: Tensor, factor) -> Tensor:
    return _blend(images, grey(images).mean(dim=(1, 2, 3), keepdim=True), factor)


def color(images: Tensor, factor) -> Tensor:
    return _blend(images, grey(images), factor)


def sharpness(images: Tensor, factor) -> Tensor:
    """Blend with the image smoothed by [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13; border pixels stay as they are."""
    kernel = torch.ones(3, 1, 3, 3, device=images.device)
    kernel[:, :, 1, 1] = 5.0
    kernel /= 13.0
    smooth = images.float()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(images.float(), kernel, groups=3).round_()  # (b, 3, H-2, W-2)
    return _blend(images, smooth, factor)


def posterize(images: Tensor, bits) -> Tensor:
    """Keep the top `bits` (int or (b,)) bits of every channel value."""
    keep = 8 - _per_image(bits, images).long()
    mask = ((255 >> keep) << keep).to(torch.uint8)  # (b, 1, 1, 1)
    return images & mask


def solarize(images: Tensor, threshold) -> Tensor:
    """Invert values >= threshold (scalar or (b,))."""
    return torch.where(images >= _per_image(threshold, images), 255 - images, images)


def solarize_add(images: Tensor, addend) -> Tensor:
    """Add `addend` (int or (b,)), clip to [0, 255], then solarize at 128."""
    shifted = (images.to(torch.int16) + _per_image(addend, images).to(torch.int16)).clamp_(0, 255).to(torch.uint8)
    return solarize(shifted, SOLARIZE_ADD_THRESHOLD)


def invert(images: Tensor) -> Tensor:
    return 255 - images


def autocontrast(images: Tensor) -> Tensor:
    """PIL's ImageOps.autocontrast per image and channel: v -> int(v * scale + offset), scale = 255 / (max -
    min), offset = -min * scale, in float64 like PIL (so the maximum can land on 254); flat channels are
    left unchanged."""
    b, c, h, w = images.shape
    flat = images.reshape(b * c, h * w).long()  # (bc, HW)
    lo = flat.amin(dim=1, keepdim=True).double()  # (bc, 1)
    hi = flat.amax(dim=1, keepdim=True).double()
    levels = torch.arange(256, device=images.device, dtype=torch.float64)
    scale = 255.0 / (hi - lo).clamp_min(1)
    lut = (levels * scale - lo * scale).trunc_().clamp_(0, 255)  # (bc, 256)
    lut = torch.where(hi > lo, lut, levels).long()
    return lut.gather(1, flat).to(torch.uint8).view(b, c, h, w)


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


def affine_nearest(images: Tensor, matrix: Tensor) -> Tensor:
    """PIL's Image.transform(size, AFFINE, (a, b, c, d, e, f)) with NEAREST and black fill, per image.

    matrix (b, 6) maps the output pixel centre (x + 0.5, y + 0.5) to the source point
    (a x' + b y' + c, d x' + e y' + f); the source pixel containing it is copied. Computed as PIL does
    for images under 32768 px: in 16.16 fixed point (each coefficient rounded to 1/65536), so the
    result is pixel-exact against PIL on any device.
    """
    b, c, h, w = images.shape
    m = matrix.to(device=images.device, dtype=torch.float64)  # (b, 6)
    start_x = m[:, 2] + m[:, 0] * 0.5 + m[:, 1] * 0.5  # source point of pixel (0, 0)
    start_y = m[:, 5] + m[:, 3] * 0.5 + m[:, 4] * 0.5
    fixed = (torch.stack([m[:, 0], m[:, 1], start_x, m[:, 3], m[:, 4], start_y], dim=1) * 65536 + 0.5).floor()
    a0, a1, a2, a3, a4, a5 = fixed.long().view(b, 6, 1, 1).unbind(dim=1)  # (b, 1, 1) each
    ys = torch.arange(h, device=images.device).view(1, h, 1)
    xs = torch.arange(w, device=images.device).view(1, 1, w)
    sx = torch.div(a2 + ys * a1 + xs * a0, 65536, rounding_mode="floor")  # (b, H, W) source column
    sy = torch.div(a5 + ys * a4 + xs * a3, 65536, rounding_mode="floor")  # (b, H, W) source row
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    source = (sy.clamp(0, h - 1) * w + sx.clamp(0, w - 1)).view(b, 1, h * w).expand(b, c, h * w)
    out = images.reshape(b, c, h * w).gather(2, source).view(b, c, h, w)
    return torch.where(inside[:, None], out, torch.zeros((), dtype=images.dtype, device=images.device))


def _affine(images: Tensor, *coefficients) -> Tensor:
    """Six scalars or (b,) tensors -> affine_nearest."""
    b = images.shape[0]
    cols = [torch.as_tensor(v, dtype=torch.float64, device=images.device).expand(b) for v in coefficients]
    return affine_nearest(images, torch.stack(cols, dim=1))


def rotate(images: Tensor, degrees) -> Tensor:
    """PIL's Image.rotate(degrees) (counter-clockwise about the image centre, same size, nearest)."""
    _, _, h, w = images.shape
    angle = -torch.as_tensor(degrees, dtype=torch.float64, device=images.device) * (math.pi / 180)
    cos, sin = angle.cos().round(decimals=15), angle.sin().round(decimals=15)  # PIL rounds them so
    cx, cy = w / 2.0, h / 2.0
    return _affine(images, cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)


def shear_x(images: Tensor, shear) -> Tensor:
    return _affine(images, 1.0, shear, 0.0, 0.0, 1.0, 0.0)


def shear_y(images: Tensor, shear) -> Tensor:
    return _affine(images, 1.0, 0.0, 0.0, shear, 1.0, 0.0)


def translate(images: Tensor, dx, dy) -> Tensor:
    """Output pixel (x, y) takes source pixel (x + dx, y + dy); dx, dy whole pixels."""
    return _affine(images, 1.0, 0.0, dx, 0.0, 1.0, dy)


def cutout(images: Tensor, size, cx, cy) -> Tensor:
    """The authors' CutoutAbs: a grey square of side `size` px around the centre (cx, cy) (floats in
    [0, side)), each (b,) or scalar. x0 = int(max(0, cx - size / 2)), x1 = int(min(W, x0 + size)), and
    PIL's rectangle fills x0..x1 inclusive, so the square is size + 1 px where it is not clipped."""
    _, _, h, w = images.shape
    size = torch.as_tensor(size, dtype=torch.float64, device=images.device).view(-1, 1)
    x0 = (torch.as_tensor(cx, dtype=torch.float64, device=images.device).view(-1, 1) - size / 2).clamp_min(0).floor()
    y0 = (torch.as_tensor(cy, dtype=torch.float64, device=images.device).view(-1, 1) - size / 2).clamp_min(0).floor()
    x1, y1 = (x0 + size).clamp(max=w).floor(), (y0 + size).clamp(max=h).floor()
    cols = torch.arange(w, device=images.device, dtype=torch.float64).view(1, w)
    rows = torch.arange(h, device=images.device, dtype=torch.float64).view(1, h)
    in_x, in_y = (cols >= x0) & (cols <= x1), (rows >= y0) & (rows <= y1)  # (b, W), (b, H)
    box = (in_y[:, :, None] & in_x[:, None, :])[:, None]  # (b, 1, H, W)
    return images.masked_fill(box, CUTOUT_GREY)


_ENHANCE = {"brightness": brightness, "color": color, "contrast": contrast, "sharpness": sharpness}


def op_value(name: str, level: Tensor) -> Tensor:
    """The op's value at `level` (b,) int: float64 (b,), truncated for the integer-valued ops."""
    maximum, bias = OP_RANGES[name]
    if isinstance(maximum, int):  # posterize, rotate, solarize, solarize_add: int(v * max / 10) + bias
        return ((level * maximum) // LEVEL_SCALE + bias).double()
    return level.double() * maximum / LEVEL_SCALE + bias


def _apply_op(name: str, images: Tensor, level: Tensor, sign: Tensor, generator: torch.Generator) -> Tensor:
    """One op on a sub-batch: level (b,) int64 in 1..m-1, sign (b,) float64 +-1."""
    if OP_RANGES[name] is None:
        return {"autocontrast": autocontrast, "equalize": equalize, "invert": invert}[name](images)
    value = op_value(name, level)  # (b,)
    side = images.shape[-1]
    if name in _ENHANCE:
        return _ENHANCE[name](images, value)
    if name == "posterize":
        return posterize(images, value.long())
    if name == "solarize":
        return solarize(images, 256 - value)
    if name == "solarize_add":
        return solarize_add(images, (sign * value).long())
    if name == "rotate":
        return rotate(images, sign * value)
    if name == "shear_x":
        return shear_x(images, sign * value)
    if name == "shear_y":
        return shear_y(images, sign * value)
    if name in ("translate_x", "translate_y"):
        shift = (sign * value * side).trunc()  # int(v * side), towards zero
        return translate(images, shift, 0.0) if name == "translate_x" else translate(images, 0.0, shift)
    return _random_cutout(images, (value * side).trunc(), generator)  # cutout: int(v * min side)


def _random_cutout(images: Tensor, size, generator: torch.Generator) -> Tensor:
    b, _, h, w = images.shape
    cx = torch.rand(b, device=images.device, generator=generator, dtype=torch.float64) * w
    cy = torch.rand(b, device=images.device, generator=generator, dtype=torch.float64) * h
    return cutout(images, size, cx, cy)


def randaugment(images: Tensor, config: RandAugmentConfig, generator: torch.Generator) -> Tensor:
    """(B, 3, H, W) uint8 -> uint8: per image config.n ops of config.ops, each applied with probability
    config.prob at a random level, then the final cutout (section comment above).

    Batched by op: per round, the images whose drawn op is applied are gathered, transformed together
    and written back, so a round costs one pass per op over its share of the batch.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"randaugment expects uint8 images, got {images.dtype}")
    out = images.clone()
    b, device = out.shape[0], out.device
    for _ in range(config.n):
        choice = torch.randint(0, len(config.ops), (b,), device=device, generator=generator)  # (B,)
        level = torch.randint(1, config.magnitude, (b,), device=device, generator=generator)  # (B,) 1..m-1
        applied = torch.rand(b, device=device, generator=generator) < config.prob  # (B,)
        sign = torch.where(torch.rand(b, device=device, generator=generator) < 0.5, -1.0, 1.0).double()  # (B,)
        for j, name in enumerate(config.ops):
            rows = ((choice == j) & applied).nonzero().squeeze(1)  # (b_j,)
            if rows.numel():
                out[rows] = _apply_op(name, out[rows], level[rows], sign[rows], generator)
    if config.cutout > 0:
        out = _random_cutout(out, int(out.shape[-1] * config.cutout), generator)
    return out


# ----------------------------------------------------------------------------------------------
# AutoAugment of the autoaugment view: the CIFAR-10 policy (Cubuk et al., CVPR 2019) as the SOP authors apply it
#
# SOP+'s second view (Liu et al., ICML 2022) augments each image with one of the policy's 25 sub-policies,
# drawn uniformly; each of its two ops is applied with the op's probability at the op's fixed level
# (0-9). The levels map to values as in the authors' augmentation code (Fast AutoAugment's archive,
# PARAMETER_MAX 10: AUTOAUGMENT_LEVELS), on the PIL-exact batched ops above:
#
#     invert, equalize, autocontrast       no value
#     contrast, color, brightness, sharpness  factor 1.8 L / 10 + 0.1
#     rotate                               int(30 L / 10) degrees, random sign
#     shear_y                              0.3 L / 10, random sign
#     translate_x, translate_y             L pixels (absolute, whatever the image size), random sign
#     solarize                             invert values >= 256 - int(256 L / 10)
#     posterize                            keep 4 - int(4 L / 10) bits (their Posterize2)
#
# The draws (sub-policy, whether each op applies, each op's sign) come from one torch.Generator, so a
# view is reproducible from its seed; the images are grouped by sub-policy and op, so a batch costs one
# pass per (sub-policy, op) over its share of the images.

#: (op, probability, level) pairs of the 25 sub-policies, as in the AutoAugment paper's CIFAR-10 policy
AUTOAUGMENT_CIFAR10: tuple[tuple[tuple[str, float, int], tuple[str, float, int]], ...] = (
    (("invert", 0.1, 7), ("contrast", 0.2, 6)),
    (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
    (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.5, 8), ("equalize", 0.9, 2)),
    (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)),
    (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, 5), ("equalize", 0.5, 1)),
    (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translate_x", 0.5, 8)),
    (("equalize", 0.3, 7), ("autocontrast", 0.4, 8)),
    (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)),
    (("brightness", 0.9, 6), ("color", 0.2, 6)),
    (("solarize", 0.5, 2), ("invert", 0.0, 3)),
    (("equalize", 0.2, 0), ("autocontrast", 0.6, 0)),
    (("equalize", 0.2, 8), ("equalize", 0.6, 4)),
    (("color", 0.9, 9), ("equalize", 0.6, 6)),
    (("autocontrast", 0.8, 4), ("solarize", 0.2, 8)),
    (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("autocontrast", 0.9, 3)),
    (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.9, 2), ("solarize", 0.8, 3)),
    (("equalize", 0.8, 8), ("invert", 0.1, 3)),
    (("translate_y", 0.7, 9), ("autocontrast", 0.9, 1)),
)
AUTOAUGMENT_LEVELS = 10
_NO_VALUE = {"invert": invert, "equalize": equalize, "autocontrast": autocontrast}


def autoaugment_op(name: str, level: int, images: Tensor, sign: Tensor) -> Tensor:
    """One op of the policy at `level` on uint8 (b, 3, H, W); sign (b,) float64 +-1 for the signed ops."""
    if name in _NO_VALUE:
        return _NO_VALUE[name](images)
    if name in _ENHANCE:
        return _ENHANCE[name](images, level * 1.8 / AUTOAUGMENT_LEVELS + 0.1)
    if name == "rotate":
        return rotate(images, sign * int(level * 30 / AUTOAUGMENT_LEVELS))
    if name == "shear_y":
        return shear_y(images, sign * (level * 0.3 / AUTOAUGMENT_LEVELS))
    if name == "translate_x":
        return translate(images, sign * level, 0.0)
    if name == "translate_y":
        return translate(images, 0.0, sign * level)
    if name == "solarize":
        return solarize(images, 256 - int(level * 256 / AUTOAUGMENT_LEVELS))
    if name == "posterize":
        return posterize(images, 4 - int(level * 4 / AUTOAUGMENT_LEVELS))
    raise ValueError(f"autoaugment: unknown op {name!r}")


def autoaugment(images: Tensor, generator: torch.Generator, policy=AUTOAUGMENT_CIFAR10) -> Tensor:
    """uint8 (B, 3, H, W) -> uint8: per image one sub-policy of `policy`, each of its ops applied with its
    probability (section comment above)."""
    if images.dtype != torch.uint8:
        raise ValueError(f"autoaugment expects uint8 images, got {images.dtype}")
    out = images.clone()
    b, device = out.shape[0], out.device
    choice = torch.randint(0, len(policy), (b,), device=device, generator=generator)  # (B,)
    for slot in range(2):
        prob = torch.tensor([sub[slot][1] for sub in policy], device=device)[choice]  # (B,)
        applied = torch.rand(b, device=device, generator=generator) < prob  # (B,)
        sign = torch.where(torch.rand(b, device=device, generator=generator) < 0.5, -1.0, 1.0).double()  # (B,)
        for j, sub in enumerate(policy):
            rows = ((choice == j) & applied).nonzero().squeeze(1)  # (b_j,)
            if rows.numel():
                name, _, level = sub[slot]
                out[rows] = autoaugment_op(name, level, out[rows], sign[rows])
    return out


def zero_cutout(images: Tensor, length: int, generator: torch.Generator) -> Tensor:
    """The authors' CutoutDefault on normalised float (B, 3, H, W): per image, the square
    [y - length // 2, y + length // 2) x [x - length // 2, x + length // 2) around a uniform integer
    centre, clipped to the image, set to 0 (the dataset mean after normalisation)."""
    b, _, h, w = images.shape
    y = torch.randint(0, h, (b, 1), device=images.device, generator=generator)
    x = torch.randint(0, w, (b, 1), device=images.device, generator=generator)
    rows, cols = torch.arange(h, device=images.device).view(1, h), torch.arange(w, device=images.device).view(1, w)
    in_y = (rows >= y - length // 2) & (rows < y + length // 2)  # (B, H)
    in_x = (cols >= x - length // 2) & (cols < x + length // 2)  # (B, W)
    return images.masked_fill((in_y[:, :, None] & in_x[:, None, :])[:, None], 0.0)


# ----------------------------------------------------------------------------------------------
# Views

# weak2: a second independent weak draw (DivideMix's two views); autoaugment: SOP+'s second view
VIEW_NAMES = ("weak", "weak2", "strong", "autoaugment")
AUTOAUGMENT_CUTOUT = 16  # px side of the autoaugment view's final cutout (the SOP authors' CutoutDefault(16))


def check_views(views: tuple[str, ...]) -> tuple[str, ...]:
    views = tuple(views)
    unknown = [v for v in views if v not in VIEW_NAMES]
    if unknown or len(set(views)) != len(views):
        raise ValueError(f"views must be distinct names from {VIEW_NAMES}, got {views}")
    return views


def view_crop_flip(images: Tensor, config: TransformConfig, generator: torch.Generator) -> Tensor:
    """The views' crop + flip, uint8 (B, 3, size, size): cifar kind, a random crop after reflect padding
    by size // 8 px (the authors' RandomCrop(padding=size/8, padding_mode="reflect")); imagenet kind,
    the train random-resized-crop."""
    if config.kind == "cifar":
        return random_crop_flip(images, config.size, config.size // 8, generator, padding_mode="reflect")
    return _to_uint8(random_resized_crop_flip(images, config.size, generator))


def _weak_view(images: Tensor, config: TransformConfig, generator: torch.Generator) -> Tensor:
    """view_crop_flip, normalised; with config.augment false the eval transform (the same draws taken)."""
    if config.augment:
        return finish(view_crop_flip(images, config, generator), config)
    return apply(images, config, train=True, generator=generator)


def train_views(images: Tensor, config: TransformConfig, views: tuple[str, ...], *, generator: torch.Generator,
                generators: dict[str, torch.Generator],
                augment: RandAugmentConfig | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """uint8 (B, 3, S, S) -> (weak, {view name: (B, 3, size, size) float32 normalised}).

    weak = view_crop_flip drawn from `generator` (with config.augment false: the eval transform), and
    is also views["weak"] when asked for; it replaces the plain train augmentation as batch.images, and
    takes the same draws from `generator`. Every other view draws from its own generator in
    `generators` (name -> torch.Generator, loader.view_generators), so asking for it never changes the
    weak images: "weak2" is an independent draw of the weak view, "strong" an independent
    view_crop_flip + randaugment, "autoaugment" the SOP authors' second view: the AutoAugment CIFAR-10
    policy, then view_crop_flip, normalisation and a 16 px cutout to 0 (the AutoAugment section above).
    `augment` defaults to RandAugmentConfig(magnitude=config.strong_magnitude).
    """

    augment = augment or RandAugmentConfig(magnitude=config.strong_magnitude)
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"transforms expect uint8 (B, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
    weak = _weak_view(images, config, generator)
    out = {}
    for name in check_views(views):
        if name == "weak":
            out[name] = weak
            continue
        if name not in generators:
            raise ValueError(f"the {name} view needs its own torch.Generator (seeded from seed, epoch and process)")
        if name == "weak2":
            out[name] = _weak_view(images, config, generators[name])
        elif name == "autoaugment":
            g = generators[name]
            out[name] = zero_cutout(finish(view_crop_flip(autoaugment(images, g), config, g), config),
                                    AUTOAUGMENT_CUTOUT, g)
        else:
            out[name] = finish(randaugment(view_crop_flip(images, config, generators[name]), augment,
                                           generators[name]), config)
    return weak, out
