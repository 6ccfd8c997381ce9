"""Decoding one encoded image into the uint8 tensor the loaders cache or augment.

Shared by the cache loader and the fallback stream loader (the same decoder, so their pixels are
identical); below the loaders, importing none of them.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image

from pipeline.format.dataset import DatasetError
from pipeline.load import transforms as T

# torchvision 0.29 deprecates its decoders in favour of TorchCodec (not installed here) and warns on
# every call; silenced around our decode loops only, with a note to migrate when TorchCodec is pinned
_TV_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


@contextmanager
def quiet_decoder_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TV_DEPRECATION, category=DeprecationWarning)
        yield


def decode_sample(data: bytes, side: int, fixed: bool, where: str) -> Tensor:
    """Encoded image bytes -> uint8 (3, side, side) on the CPU; `where` names the sample in errors.

    fixed=True (imagenet kind) brings any size to side x side (T.to_fixed_size); fixed=False
    (cifar kind) requires the image to be side x side already.
    """
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as err:
        raise DatasetError(f"{where} cannot be decoded: {err}") from err
    return fit(image, side, fixed, where)


def fit(image: Tensor, side: int, fixed: bool, where: str) -> Tensor:
    if fixed:
        return T.to_fixed_size(image, side)
    if image.shape[1:] != (side, side):
        raise DatasetError(
            f"{where} is {image.shape[2]}x{image.shape[1]} px but the cifar transform expects "
            f"{side}x{side} (data.image_size={side}): set data.transform=imagenet for images of other or mixed sizes"
        )
    return image
