"""SplitLoader: what the three loader modes share (options, epoch counter, the plan of an epoch).

The modes differ in how they read and decode (cache_loader.py, dali_loader.py,
webdataset_loader.py); the plan is one of three, all built on pipeline/load/epochs.py:

  by idx     the kept idx (the split minus `exclude`) in epoch_order, this process's part of it
             by epoch_plan: the cache mode always; the stream modes when the kept idx are at most
             READ_BY_IDX_UP_TO of the split (e.g. the clean meta subset), reading each sample by
             idx (pipeline/load/random_access.py). Every mode then yields the same idx batches.
  sampling   a class-balanced draw per epoch (pipeline/load/sampling.py), full batches, read by idx.
  streaming  the stream modes otherwise: this process's part of the split's file order
             (epoch_plan over all N), read front to back; excluded idx are dropped from each batch.

Why two stream plans: streaming decodes (DALI) or reads (fallback) the excluded samples too, and
reading by idx gives up the sequential reads of whole tars (the DALI reader's threads, mmap,
read-ahead; on a network filesystem a random read per sample is slow). With the kept idx at most
half the split, streaming would waste at least one read and decode per sample kept, so by idx is
cheaper; with more kept (the noisy stream with the 2 % clean subset held out) streaming wastes at
most as much as it keeps, typically a few percent, and keeps its sequential reads. The price of
streaming: a batch holds batch_size minus the excluded samples of its slot.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.load import transforms as T
from pipeline.load.epochs import epoch_order, epoch_plan
from pipeline.load.sampling import EpochSampling

READ_BY_IDX_UP_TO = 0.5  # stream modes read by idx when the kept samples are at most this fraction of the split


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
        sampling: EpochSampling | None = None,  # a per-epoch subset instead of the whole split
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
        self._bounds: list[tuple[int, int]] = []  # this process's batches, [start, stop) in its part

    def __len__(self) -> int:
        return len(self._bounds)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _plan(self, n: int, exclude: np.ndarray | None, can_stream: bool) -> None:
        """Chooses the plan (module docstring) for a split of n samples; sets num_samples, _bounds and
        streams (True: read the split front to back and drop `exclude`)."""
        self.exclude = exclude  # (N,) bool or None
        self.kept_idx = np.arange(n, dtype=np.int64) if exclude is None else np.flatnonzero(~exclude)  # (M,)
        self.streams = False
        if self.sampling is not None:
            self.sampling.check(self.batch_size, self.num_processes, exclude)
            steps = self.sampling.steps(self.batch_size, self.num_processes)
            self._bounds = [(i * self.batch_size, (i + 1) * self.batch_size) for i in range(steps)]
            self.num_samples = steps * self.batch_size * self.num_processes
            return
        self.num_samples = len(self.kept_idx)
        if can_stream and self.num_samples > READ_BY_IDX_UP_TO * n:
            self.streams = True
            _, self._bounds = epoch_plan(n, self.batch_size, self.process_index, self.num_processes)
        else:
            self._part, self._bounds = epoch_plan(self.num_samples, self.batch_size, self.process_index,
                                                  self.num_processes)

    def _part_index(self, epoch: int) -> int:
        """The part of the split a streaming process reads in `epoch`: training rotates the parts over
        the processes every epoch (so each sees the whole split over time), evaluation does not."""
        return (self.process_index + epoch) % self.num_processes if self.train else self.process_index

    def epoch_idx(self, epoch: int) -> np.ndarray:
        """This process's idx of `epoch` in training order, for the plans that read by idx:
        int64 (part,), batch i = [_bounds[i][0], _bounds[i][1])."""
        if self.sampling is not None:
            return self.sampling.draw(epoch, self.seed, self.batch_size, self.process_index, self.num_processes,
                                      self.exclude)
        start, stop = self._part
        return epoch_order(self.kept_idx, self.seed, epoch, self.train)[start:stop]
