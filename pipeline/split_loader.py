"""SplitLoader: what the three loader modes share (options, epoch counter, steps per epoch).

The modes differ in how they read and decode (cache_loader.py, dali_loader.py, wds_loader.py);
the per-process split they all follow is `epoch_plan` in pipeline/loader.py."""

from __future__ import annotations

import torch

from pipeline import transforms as T


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
