"""Per-epoch class-balanced sampling (pipeline/sampling.py): balance, determinism, process split."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.sampling import balanced_quotas, class_balanced_epoch


def _labels(n: int = 5000, k: int = 14, seed: int = 0) -> np.ndarray:
    # skewed class sizes, like Clothing1M's noisy labels
    p = np.linspace(1, 4, k)
    return np.random.default_rng(seed).choice(k, size=n, p=p / p.sum())


def test_class_balanced_epoch_is_balanced_and_never_repeats():
    labels = _labels()
    idx = class_balanced_epoch(labels, epoch=0, seed=0, num_batches=20, batch_size=64)
    assert idx.shape == (1280,) and idx.dtype == np.int64
    assert len(np.unique(idx)) == len(idx)
    counts = np.bincount(labels[idx], minlength=14)
    assert counts.max() - counts.min() <= 1  # 1280 / 14: 91 or 92 each


def test_class_balanced_epoch_small_class_gives_all_and_others_fill_in():
    labels = np.array([0] * 10 + [1] * 500 + [2] * 500)
    idx = class_balanced_epoch(labels, epoch=3, seed=1, num_batches=3, batch_size=100)
    counts = np.bincount(labels[idx], minlength=3)
    assert counts.tolist() == [10, 145, 145]
    assert len(np.unique(idx)) == 300


def test_class_balanced_epoch_is_deterministic_per_seed_and_epoch():
    labels = _labels()
    a = class_balanced_epoch(labels, epoch=2, seed=5, num_batches=10, batch_size=32)
    assert np.array_equal(a, class_balanced_epoch(labels, epoch=2, seed=5, num_batches=10, batch_size=32))
    assert not np.array_equal(a, class_balanced_epoch(labels, epoch=3, seed=5, num_batches=10, batch_size=32))
    assert not np.array_equal(a, class_balanced_epoch(labels, epoch=2, seed=6, num_batches=10, batch_size=32))


@pytest.mark.parametrize("num_processes", [2, 3])
def test_class_balanced_epoch_processes_get_disjoint_equal_blocks_of_one_selection(num_processes):
    labels = _labels()
    parts = [class_balanced_epoch(labels, 1, 0, num_batches=10, batch_size=16, process_index=r,
                                  num_processes=num_processes) for r in range(num_processes)]
    steps = -(-10 // num_processes)
    assert all(len(p) == steps * 16 for p in parts)  # same number of steps everywhere
    union = np.concatenate(parts)
    assert len(np.unique(union)) == len(union)  # disjoint
    counts = np.bincount(labels[union], minlength=14)
    assert counts.max() - counts.min() <= 1  # balanced over all processes together


def test_class_balanced_epoch_single_process_is_the_union_order():
    labels = _labels()
    whole = class_balanced_epoch(labels, 0, 0, num_batches=4, batch_size=8, num_processes=1)
    halves = [class_balanced_epoch(labels, 0, 0, num_batches=4, batch_size=8, process_index=r, num_processes=2)
              for r in range(2)]
    assert np.array_equal(np.concatenate(halves), whole)


def test_class_balanced_epoch_too_large_is_an_error_naming_the_fix():
    with pytest.raises(ValueError, match="lower num_batches"):
        class_balanced_epoch(np.zeros(100, dtype=np.int64), 0, 0, num_batches=2, batch_size=64)


def test_balanced_quotas_water_fills():
    rng = np.random.default_rng(0)
    assert balanced_quotas(np.array([3, 0, 100, 100]), 103, rng).tolist() == [3, 0, 50, 50]
    q = balanced_quotas(np.array([10, 10, 10]), 8, rng)
    assert q.sum() == 8 and sorted(q.tolist()) == [2, 3, 3]
