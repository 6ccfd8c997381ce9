"""The front door to data loading: make_loader(), the Loader protocol, and the per-process split.

Two modes from the same shards (DESIGN.md rule 3):
  stream  DALI reads, decodes and augments the tars (pipeline/load/dali_loader.py); without DALI
          (e.g. macOS) a webdataset + torchvision fallback does the same (pipeline/load/webdataset_loader.py)
  cache   the split is decoded once into a uint8 tensor on the device (pipeline/load/cache_loader.py)

Views: make_loader(..., views=("weak", "strong")) (training loaders only) gives every Batch
`views["weak"]` (the normal train augmentation, the same tensor as `batch.images`) and
`views["strong"]` (an independent crop/flip + photometric RandAugment, pipeline/load/transforms.py);
"weak2" is a second independent weak draw, "autoaugment" the AutoAugment CIFAR-10 policy + crop/flip
+ cutout (SOP+); all from the batched torch ops in every mode. Each view
beyond "weak" draws from its own generator seeded by (seed, epoch, view, process) (`view_generators`),
so asking for views leaves `batch.images` and the other views unchanged.

Per-epoch subsets: make_loader(..., sampling=BalancedEpochs(labels, samples, K)) (training loaders
only) trains each epoch on a fresh class-balanced random subset of `samples` idx (the Clothing1M
recipes' "2,000 batches of 64"), drawn by pipeline/load/sampling.py from (seed, epoch) in every process
alike, each process taking its own block; the stream modes read those samples by idx.
sampling=SelectedEpochs(N, exclude) instead trains each epoch on the samples the method selected for it
(Method.select), in epochs of fixed length.

Every loader yields Batch objects and gives the same number of steps in every process, by the
epoch plan of pipeline/load/epochs.py; pipeline/load/split_loader.py says which samples each mode reads and
how (`exclude`: a small kept subset such as the clean meta subset is read by idx in every mode, so
all modes yield the same batches of it).

Imports go one way: this module imports the loaders, they import pipeline/load/split_loader.py,
pipeline/load/epochs.py and pipeline/load/decode.py, which import none of them.
"""

from __future__ import annotations

import logging
from typing import Iterator, Literal, Protocol

import numpy as np
import torch

from pipeline.format.dataset import Dataset, DatasetError
from pipeline.load.batch import Batch
from pipeline.load.cache_loader import CacheLoader
from pipeline.load.sampling import EpochSampling
from pipeline.load.transforms import TransformConfig, check_views
from pipeline.load.webdataset_loader import WebDatasetLoader

log = logging.getLogger(__name__)


class Loader(Protocol):
    """What make_loader returns, in every mode."""

    num_samples: int  # samples per epoch over all processes (the split minus `exclude`)

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...  # batches per epoch, the same in every process

    def set_epoch(self, epoch: int) -> None: ...


# ----------------------------------------------------------------------------------------------
# Checks shared by the loaders


def check_device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {device} was asked for but this machine has no usable CUDA GPU "
                f"(torch.cuda.is_available() is False): use device='cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {device} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def check_exclude(exclude: np.ndarray | None, n: int, where: str) -> np.ndarray | None:
    if exclude is None:
        return None
    exclude = np.asarray(exclude)
    if exclude.dtype != np.bool_ or exclude.shape != (n,):
        raise ValueError(
            f"exclude for {where} must be a bool mask of shape ({n},) indexed by idx, "
            f"got {exclude.dtype} {exclude.shape} (use Dataset.mask(split, name))"
        )
    return exclude


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# The front door


def make_loader(
    dataset: Dataset,
    split: str,
    *,
    mode: Literal["stream", "cache"],
    batch_size: int,  # per process
    train: bool,  # shuffle + augment, or in-order + eval transform
    transform: TransformConfig,
    device: torch.device | str,
    process_index: int = 0,
    num_processes: int = 1,
    seed: int = 0,
    exclude: np.ndarray | None = None,  # bool (N,), True = leave this idx out (e.g. the clean meta subset)
    num_threads: int = 2,  # decoding threads (stream) / shard reading threads (cache)
    views: tuple[str, ...] = (),  # extra augmented views per batch: () or names from VIEW_NAMES; train only
    sampling: EpochSampling | None = None,  # a per-epoch subset (class-balanced, or the method's); train only
    mmap: bool = True,  # stream mode with DALI: memory-map the tars (False: plain reads, see BENCHMARKS.md)
) -> Loader:
    """Builds the loader of one split for this process; see the module docstring for the split rule."""
    if mode not in ("stream", "cache"):
        raise ValueError(f"loader mode must be 'stream' or 'cache', got {mode!r}")
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index {process_index} is outside [0, num_processes={num_processes})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    views = check_views(views)
    if views and not train:
        raise ValueError(f"views {views} were asked for on the evaluation loader of split {split!r}: "
                         f"views are train augmentations; pass views=() with train=False")
    if sampling is not None and not train:
        raise ValueError(f"per-epoch sampling was asked for on the evaluation loader of split {split!r}: "
                         f"evaluation reads every sample; pass sampling=None with train=False")
    device = check_device(device)
    n = dataset.num_samples(split)
    exclude = check_exclude(exclude, n, f"split {split!r} of {dataset.path}")
    kept = n - (int(exclude.sum()) if exclude is not None else 0)
    if kept // num_processes == 0:
        raise DatasetError(
            f"split {split!r} of {dataset.path} has {kept} samples to load, fewer than the "
            f"{num_processes} processes: every process needs at least one"
        )
    common = dict(
        batch_size=batch_size, train=train, transform=transform, device=device, process_index=process_index,
        num_processes=num_processes, seed=seed, exclude=exclude, num_threads=num_threads, views=views,
        sampling=sampling,
    )
    if mode == "cache":
        return CacheLoader(dataset, split, **common)
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(
            f"mode='stream' runs DALI on the CPU or a CUDA GPU; device {device} is neither: "
            f"use mode='cache' (it augments on any torch device) or device='cpu'"
        )
    if dali_available():
        from pipeline.load.dali_loader import DaliLoader  # here: DALI is optional (no wheels for macOS)

        return DaliLoader(dataset, split, dont_use_mmap=not mmap, **common)
    log.warning("nvidia.dali cannot be imported: stream mode uses the webdataset + torchvision fallback (slower)")
    return WebDatasetLoader(dataset, split, **common)
