"""Per-epoch class-balanced sampling: which global idx each process trains on in an epoch.

The Clothing1M recipes (Xiao et al. 2015; ALR, SELC, ELR, DivideMix) do not run over the 1M noisy
images each epoch: they draw a class-balanced random subset, e.g. 2,000 batches of 64 by noisy label.
:func:`class_balanced_epoch` is that draw as a pure function of (labels, seed, epoch): every process
computes the same global selection and takes its own block of it, so with P processes the blocks are
disjoint, equal in length (every process runs the same number of steps, as all-reduce needs) and
together the whole selection. Labels are the training label set (noisy), indexed by idx; the result
is idx, so the sample store and label lookup work unchanged.

Balance: each class gets total // K samples (the remainder to randomly chosen classes). A class with
fewer samples than its share gives all of them and the shortfall is spread over the others
(water-filling), so the subset stays as balanced as the data allows and never repeats an idx.
"""

from __future__ import annotations

import zlib

import numpy as np

from pipeline.errors import ConfigError

_STREAM = zlib.crc32(b"class-balanced-epoch")


def balanced_quotas(counts: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """int64 (K,) samples to take per class: sums to `total`, quota_c <= counts_c, as equal as possible."""
    counts = np.asarray(counts, dtype=np.int64)
    if total > counts.sum():
        raise ValueError(f"cannot draw {total} samples from {int(counts.sum())} without repeating any")
    quotas = np.zeros_like(counts)
    remaining = total
    open_ = counts > 0
    while remaining > 0:
        k = int(open_.sum())
        share = remaining // k
        give = np.zeros_like(counts)
        if share:  # equal shares first; a capped class returns its excess to the next round
            give[open_] = share
        else:  # fewer left than open classes: one more each for a random choice of them
            give[rng.choice(np.flatnonzero(open_), size=remaining, replace=False)] = 1
        give = np.minimum(give, counts - quotas)  # a small class gives what it has left
        quotas += give
        remaining -= int(give.sum())
        open_ = quotas < counts
    return quotas


def class_balanced_epoch(
    labels: np.ndarray,
    epoch: int,
    seed: int,
    num_batches: int,
    batch_size: int,
    process_index: int = 0,
    num_processes: int = 1,
    num_classes: int | None = None,
) -> np.ndarray:
    """This process's idx for `epoch`: int64 (steps * batch_size,), in training order.

    labels: int (N,) training labels by idx. num_batches: batches of `batch_size` per epoch over all
    processes (the recipe's "2,000 batches of 64"); each process gets steps = ceil(num_batches / P)
    batches, so the epoch draws steps * P * batch_size samples (up to P - 1 batches more than asked).
    Deterministic in (labels, seed, epoch); independent of process_index except for the block taken."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-d (N,), got shape {labels.shape}")
    if num_batches < 1 or batch_size < 1:
        raise ValueError(f"num_batches and batch_size must be >= 1, got {num_batches} and {batch_size}")
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index {process_index} is not in [0, {num_processes})")
    steps = -(-num_batches // num_processes)
    per_process = steps * batch_size
    total = per_process * num_processes
    k = int(labels.max()) + 1 if num_classes is None else num_classes
    counts = np.bincount(labels, minlength=k)
    if total > len(labels):
        raise ValueError(
            f"an epoch of {steps} steps x {batch_size} x {num_processes} processes = {total} samples needs more than "
            f"the {len(labels)} training samples; lower num_batches"
        )
    rng = np.random.default_rng([seed, epoch, _STREAM])
    quotas = balanced_quotas(counts, total, rng)
    order = np.argsort(labels, kind="stable")  # idx grouped by class
    starts = np.concatenate([[0], np.cumsum(counts)])
    chosen = [rng.choice(order[starts[c]:starts[c + 1]], size=int(quotas[c]), replace=False)
              for c in range(k) if quotas[c]]
    selection = rng.permutation(np.concatenate(chosen))  # (total,) global training order
    return selection[process_index * per_process:(process_index + 1) * per_process].astype(np.int64)


def epoch_steps(samples: int, batch_size: int, num_processes: int) -> int:
    """Batches every process takes in an epoch of `samples` (over all processes) in whole batches:
    ceil(ceil(samples / batch_size) / num_processes) (class_balanced_epoch's rule)."""
    batches = -(-samples // batch_size)
    return -(-batches // num_processes)


class BalancedEpochs:
    """A loader's per-epoch subset rule: `samples` training samples per epoch (over all processes),
    class-balanced by `labels`, drawn afresh each epoch by class_balanced_epoch.

    labels: int (N,) by idx (the training label set); exclude: bool (N,) idx never drawn (e.g. the
    clean meta subset). The draw runs over the kept idx and maps back, so results are global idx."""

    def __init__(self, labels: np.ndarray, samples: int, num_classes: int):
        if samples < 1:
            raise ValueError(f"samples per epoch must be >= 1, got {samples}")
        self.labels = np.asarray(labels)
        self.samples = samples
        self.num_classes = num_classes

    def num_batches(self, batch_size: int) -> int:
        """Batches of `batch_size` per epoch over all processes: the samples rounded up to whole batches."""
        return -(-self.samples // batch_size)

    def steps(self, batch_size: int, num_processes: int) -> int:
        return epoch_steps(self.samples, batch_size, num_processes)

    def check(self, batch_size: int, num_processes: int, exclude: np.ndarray | None) -> None:
        """Fails early, naming the setting, when an epoch would need more samples than there are."""
        drawn = self.steps(batch_size, num_processes) * batch_size * num_processes
        available = len(self.labels) - (int(exclude.sum()) if exclude is not None else 0)
        if drawn > available:
            raise ConfigError(
                f"data.epoch_samples={self.samples} draws {drawn} samples an epoch (whole batches of {batch_size} in "
                f"each of {num_processes} processes) but only {available} training samples are available "
                f"(the clean subset, if any, is left out): lower data.epoch_samples, or leave it unset to use them all"
            )

    def draw(self, epoch: int, seed: int, batch_size: int, process_index: int, num_processes: int,
             exclude: np.ndarray | None = None) -> np.ndarray:
        """This process's idx for `epoch`: int64 (steps * batch_size,), in training order."""
        kept = np.arange(len(self.labels)) if exclude is None else np.flatnonzero(~exclude)
        local = class_balanced_epoch(self.labels[kept], epoch, seed, num_batches=self.num_batches(batch_size),
                                     batch_size=batch_size, process_index=process_index,
                                     num_processes=num_processes, num_classes=self.num_classes)
        return kept[local]


_SELECTION_STREAM = zlib.crc32(b"method-selection-epoch")


class SelectedEpochs:
    """A loader's per-epoch subset chosen by the method (Method.select, DataNeeds(select=True)).

    An epoch keeps the length of an unselected one, ceil(M / batch_size) full batches over all processes
    (M = kept samples), so the learning-rate schedule and every process's step count stay fixed; the
    selected idx fill it in fresh permutations, repeated when fewer than the epoch's samples are
    selected. With no selection (None, e.g. during a warm-up) an epoch is every kept idx, shuffled.
    The selection must be the same on every process; each process takes its own block."""

    def __init__(self, num_samples: int, exclude: np.ndarray | None = None):
        """num_samples: N of the split; exclude: bool (N,) idx never drawn (e.g. the clean meta subset)."""
        self.num_samples = num_samples
        self.kept = num_samples - (int(exclude.sum()) if exclude is not None else 0)
        if self.kept < 1:
            raise ValueError(f"a selection needs at least one training sample, got {self.kept}")
        self.mask: np.ndarray | None = None  # bool (N,) selected for the coming epoch

    def select(self, mask) -> None:
        """The method's selection for the coming epoch: bool (N,) (numpy or torch), or None for all."""
        if mask is not None:
            mask = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask)
            if mask.dtype != np.bool_ or mask.shape != (self.num_samples,):
                raise ValueError(f"Method.select must return a bool ({self.num_samples},) mask or None, "
                                 f"got {mask.dtype} {mask.shape}")
        self.mask = mask

    def steps(self, batch_size: int, num_processes: int) -> int:
        return epoch_steps(self.kept, batch_size, num_processes)

    def check(self, batch_size: int, num_processes: int, exclude: np.ndarray | None) -> None:
        """Nothing can be too large: a small selection is repeated to fill the epoch."""

    def draw(self, epoch: int, seed: int, batch_size: int, process_index: int, num_processes: int,
             exclude: np.ndarray | None = None) -> np.ndarray:
        """This process's idx for `epoch`: int64 (steps * batch_size,), in training order."""
        allowed = np.ones(self.num_samples, dtype=bool) if exclude is None else ~exclude
        if self.mask is not None:
            allowed &= self.mask
        pool = np.flatnonzero(allowed)
        if pool.size == 0:
            raise ValueError(f"Method.select left no training sample for epoch {epoch + 1}")
        per_process = self.steps(batch_size, num_processes) * batch_size
        total = per_process * num_processes
        rng = np.random.default_rng([seed, epoch, _SELECTION_STREAM])
        order = np.concatenate([rng.permutation(pool) for _ in range(-(-total // pool.size))])[:total]
        return order[process_index * per_process:(process_index + 1) * per_process].astype(np.int64)


EpochSampling = BalancedEpochs | SelectedEpochs  # the per-epoch subset rules a training loader takes
