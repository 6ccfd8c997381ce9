"""SplitLoader: what the three loader modes share (options, epoch counter, steps per epoch).

The modes differ in how they read and decode (cache_loader.py, dali_loader.py, wds_loader.py);
the per-process split they all follow is `epoch_plan` in pipeline/loader.py, or, with `sampling`,
the per-epoch class-balanced draw of pipeline/sampling.py (stream modes then read by idx,
pipeline/random_access.py)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline import transforms as T
from pipeline.dataset import Dataset
from pipeline.loader import epoch_plan
from pipeline.random_access import ShardRandomAccess
from pipeline.sampling import BalancedEpochs


class SplitLoader:
    def __init__(
        self,
        *,
        batch_size: int,  # per process
        train: bool,  # shuffle + train augmentation, else file order + eval transform
        transform: T.TransformConfig,
        device: torch.device,
        process_index: int = 0,
        num_processes: int = 1,
        seed: int = 0,
        num_threads: int = 2,  # decoding threads per process
        views: tuple[str, ...] = (),  # extra training views, e.g. ("weak", "strong")
        sampling: BalancedEpochs | None = None,  # a class-balanced subset per epoch instead of the whole split
    ):
        self.views = T.check_views(views)
        self.batch_size = batch_size
        self.train = train
        self.transform = transform
        self.device = device
        self.process_index = process_index
        self.num_processes = num_processes
        self.seed = seed
        self.num_threads = num_threads
        self.sampling = sampling
        self.epoch = 0
        self._bounds: list[tuple[int, int]] = []  # set by the subclass: this process's batches

    def __len__(self) -> int:
        return len(self._bounds)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _part_index(self, epoch: int) -> int:
        """The part of the split this process reads in `epoch`: training rotates the parts over the
        processes every epoch (so each sees the whole split over time), evaluation does not."""
        return (self.process_index + epoch) % self.num_processes if self.train else self.process_index

    def _plan_subsets(self, exclude: np.ndarray | None) -> None:
        """Per-epoch subsets: the same number of full batches in every process."""
        self.sampling.check(self.batch_size, self.num_processes, exclude)
        steps = self.sampling.steps(self.batch_size, self.num_processes)
        self._bounds = [(i * self.batch_size, (i + 1) * self.batch_size) for i in range(steps)]
        self.num_samples = steps * self.batch_size * self.num_processes

    def _plan_stream(self, dataset: Dataset, split: str, exclude: np.ndarray | None) -> None:
        """The stream modes' plan: read each epoch's subset by idx, or this process's part of the split."""
        if self.sampling is not None:
            self.reader = ShardRandomAccess(dataset, split)
            self._plan_subsets(exclude)
            return
        n = dataset.num_samples(split)
        self.num_samples = n - (int(exclude.sum()) if exclude is not None else 0)
        _, self._bounds = epoch_plan(n, self.batch_size, self.process_index, self.num_processes)

    def epoch_subset(self, epoch: int, exclude: np.ndarray | None) -> np.ndarray:
        """This process's idx of `epoch` under `sampling`: int64 (steps * batch_size,), training order."""
        return self.sampling.draw(epoch, self.seed, self.batch_size, self.process_index, self.num_processes, exclude)
