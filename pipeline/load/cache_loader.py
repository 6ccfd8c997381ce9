"""Cache mode: decode a split once into a uint8 tensor on the device, then augment there in batches.

The fast path for CIFAR-size data (airbench's way): after one decode pass (about a second for
CIFAR-10 train on two cores), an epoch is a permutation of idx sliced into batches, each gathered
from the cached tensor and augmented with the batched ops of pipeline/load/transforms.py. No DALI.

Decoding reads the tars with pipeline.format.shards.read_shard and decodes with torchvision.io: on a
CUDA device JPEGs are decoded in batched lists by nvJPEG; on the CPU, one thread per shard.
With views=("weak", "strong") (or any names from T.VIEW_NAMES) every batch also carries those views
(T.train_views).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from pipeline.format.dataset import Dataset, DatasetError
from pipeline.format.shards import read_shard
from pipeline.load import transforms as T
from pipeline.load.batch import Batch
from pipeline.load.decode import decode_sample, fit, quiet_decoder_warnings
from pipeline.load.epochs import SeedPurpose, derive_seed, view_generators
from pipeline.load.split_loader import SplitLoader

log = logging.getLogger(__name__)

GPU_DECODE_CHUNK = 1024  # images per batched nvJPEG call


def _decode_shard_cpu(path: Path, side: int, fixed: bool) -> tuple[list[int], Tensor]:
    """Reads and decodes one shard on the CPU -> (idx list, uint8 (n, 3, side, side))."""
    idx_list, images = [], []
    for idx, data, ext in read_shard(path):
        images.append(decode_sample(data, side, fixed, f"{path}: sample idx {idx} (.{ext})"))
        idx_list.append(idx)
    stacked = torch.stack(images) if images else torch.empty(0, 3, side, side, dtype=torch.uint8)
    return idx_list, stacked


def decode_split(
    dataset: Dataset, split: str, config: T.TransformConfig, device: torch.device, num_threads: int = 2
) -> Tensor:
    """All images of a split as uint8 (N, 3, S, S) on `device`, row i = idx i; S = T.stored_side(config)."""
    n = dataset.num_samples(split)
    side = T.stored_side(config)
    fixed = config.kind == "imagenet"
    cache = torch.empty(n, 3, side, side, dtype=torch.uint8, device=device)  # (N, 3, S, S)
    seen = np.zeros(n, dtype=bool)
    start = time.perf_counter()

    def place(path: Path, idx_list: list[int], images: Tensor) -> None:
        idx = np.asarray(idx_list, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise DatasetError(f"{path}: holds idx {int(idx.max())} outside [0, {n}) of split {split!r}")
        if seen[idx].any() or len(np.unique(idx)) != len(idx):
            raise DatasetError(f"{path}: an idx of split {split!r} appears twice in the shards: re-run tools/make_shards.py --force")
        seen[idx] = True
        cache[torch.from_numpy(idx).to(device)] = images.to(device, non_blocking=True)

    paths = dataset.shard_paths(split)
    if device.type == "cuda":
        with quiet_decoder_warnings():
            for path in paths:
                idx_list, images = _decode_shard_cuda(path, side, fixed, device)
                place(path, idx_list, images)
    else:
        with quiet_decoder_warnings(), ThreadPoolExecutor(max(1, num_threads)) as pool:
            for path, (idx_list, images) in zip(paths, pool.map(lambda p: _decode_shard_cpu(p, side, fixed), paths)):
                place(path, idx_list, images)
    if not seen.all():
        missing = np.flatnonzero(~seen)
        raise DatasetError(
            f"{dataset.path}: split {split!r} lacks {len(missing)} of its {n} samples in the shards "
            f"(first missing idx {int(missing[0])}): re-run tools/make_shards.py --force"
        )
    log.info("cached %s/%s: %d images %s on %s in %.1f s", dataset.name, split, n, tuple(cache.shape[1:]), device,
             time.perf_counter() - start)
    return cache


def _decode_shard_cuda(path: Path, side: int, fixed: bool, device: torch.device) -> tuple[list[int], Tensor]:
    """One shard decoded by nvJPEG in batched lists (other formats on the CPU) -> (idx, (n, 3, S, S))."""
    samples = list(read_shard(path))
    idx_list = [s[0] for s in samples]
    out = []
    for lo in range(0, len(samples), GPU_DECODE_CHUNK):
        chunk = samples[lo : lo + GPU_DECODE_CHUNK]
        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for _, b, _ in chunk]
        if all(ext.lower() in ("jpg", "jpeg") for _, _, ext in chunk):
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        else:
            images = [decode_image(d, mode=ImageReadMode.RGB).to(device) for d in data]
        out.extend(fit(im, side, fixed, f"{path}: sample idx {idx}") for im, (idx, _, _) in zip(images, chunk))
    return idx_list, torch.stack(out) if out else torch.empty(0, 3, side, side, dtype=torch.uint8, device=device)


class CacheLoader(SplitLoader):
    """Batches from a decoded split held on the device; the plan is pipeline/load/split_loader.py's by idx."""

    def __init__(
        self,
        dataset: Dataset,
        split: str,
        *,
        exclude: np.ndarray | None = None,  # (N,) bool: idx left out
        **options,  # SplitLoader's
    ):
        super().__init__(**options)
        self.images = decode_split(dataset, split, self.transform, self.device, self.num_threads)  # (N, 3, S, S) uint8
        self._plan(self.images.shape[0], exclude, can_stream=False)

    def __iter__(self) -> Iterator[Batch]:
        """One epoch; the epoch counter advances at its end unless set_epoch is called."""
        epoch = self.epoch
        mine = torch.from_numpy(self.epoch_idx(epoch)).to(self.device)  # (part,) int64
        generator = None
        if self.train:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(derive_seed(self.seed, epoch, SeedPurpose.AUGMENT, self.process_index))
        extra = view_generators(self.views, self.device, self.seed, epoch, self.process_index)
        for lo, hi in self._bounds:
            idx = mine[lo:hi]  # (B,) int64
            if self.views:
                images, views = T.train_views(self.images[idx], self.transform, self.views, generator=generator,
                                              generators=extra)
                yield Batch(images=images, idx=idx, views=views)
                continue
            images = T.apply(self.images[idx], self.transform, train=self.train, generator=generator)
            yield Batch(images=images, idx=idx)
        self.epoch = epoch + 1
