"""Per-epoch class-balanced sampling (pipeline/load/sampling.py): balance, determinism, process split, and
the loaders that train on those subsets (reading by idx in stream mode, pipeline/load/random_access.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support.datasets import make_dataset
from support.loader_data import build_loader
from pipeline.format.dataset import Dataset, DatasetError
from pipeline.format.shards import read_shard
from pipeline.load import transforms as T
from pipeline.load.random_access import ShardRandomAccess
from pipeline.load.sampling import BalancedEpochs, SelectedEpochs, balanced_quotas, class_balanced_epoch


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


# ------------------------------------------------------------------ in the loaders


@pytest.fixture(scope="module")
def sampled_dataset(tmp_path_factory) -> Dataset:
    """203 train samples (shards of 64, the last of 11) and 57 test ones, 10 classes, generated 32x32 pictures,
    the train mask clean-subset-20-s0."""
    return Dataset(make_dataset(tmp_path_factory.mktemp("sampling"), "sampled", {"train": 203, "test": 57}, side=32,
                                clean_subset=20))


def _reference_images(dataset: Dataset) -> torch.Tensor:
    """Every training image, eval-decoded by the cache loader, row = idx."""
    loader = build_loader("cache", dataset, train=False, batch_size=64)
    images = torch.cat([b.images for b in loader])
    return images[torch.cat([b.idx for b in loader]).argsort()]


def test_random_access_reads_the_bytes_read_shard_reads(sampled_dataset):
    access = ShardRandomAccess(sampled_dataset, "train")
    for path in sampled_dataset.shard_paths("train"):
        for idx, data, _ in read_shard(path):
            assert access.read(idx).tobytes() == data
    access.close()


def test_random_access_names_a_missing_index_entry(sampled_dataset, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sampled_dataset.path, copy)
    index = Dataset(copy).index_paths("train")[0]
    lines = index.read_text().splitlines()
    index.write_text("\n".join(lines[:-1]) + "\n")  # drop the shard's last sample
    with pytest.raises(DatasetError, match="no index entry for idx 63"):
        ShardRandomAccess(Dataset(copy), "train")


@pytest.mark.parametrize("kind", ["cache", "dali", "webdataset"])
def test_loaders_train_on_a_balanced_subset_per_epoch(kind, sampled_dataset):
    labels = sampled_dataset.labels("train", "clean")
    exclude = sampled_dataset.mask("train", "clean-subset-20-s0")
    sampling = BalancedEpochs(labels, samples=100, num_classes=10)
    # pad=0: the crop is the whole image, so each image is its idx's picture, maybe mirrored
    loader = build_loader(kind, sampled_dataset, sampling=sampling, exclude=exclude, transform=T.cifar10(pad=0),
                          seed=3)
    assert len(loader) == 7 and loader.num_samples == 112  # 100 rounded up to 7 batches of 16
    reference = _reference_images(sampled_dataset)
    level = 1 / (255 * min(T.CIFAR10_STD))
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert [len(b) for b in batches] == [16] * 7
        idx = torch.cat([b.idx for b in batches]).numpy()
        assert len(np.unique(idx)) == 112 and not exclude[idx].any()
        counts = np.bincount(labels[idx], minlength=10)
        assert counts.max() - counts.min() <= 1  # every class has more than its 11-12 here
        for batch in batches:
            want = reference[batch.idx]
            error = torch.minimum((batch.images - want).abs().amax(dim=(1, 2, 3)),
                                  (batch.images - want.flip(-1)).abs().amax(dim=(1, 2, 3)))
            assert (error < 8 * level).all()  # the pixels belong to the idx (DALI's decoder: a few levels off)
        epochs.append(idx)
    assert not np.array_equal(np.sort(epochs[0]), np.sort(epochs[1]))  # a fresh subset each epoch
    expected = sampling.draw(1, 3, 16, 0, 1, exclude)
    np.testing.assert_array_equal(epochs[1], expected)  # the order is the draw's, in every mode


def test_loader_subsets_of_two_processes_are_disjoint_and_equal_in_steps(sampled_dataset):
    labels = sampled_dataset.labels("train", "clean")
    sampling = BalancedEpochs(labels, samples=100, num_classes=10)
    parts = [build_loader("cache", sampled_dataset, sampling=sampling, process_index=r, num_processes=2)
             for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 4  # 7 batches over 2 processes: 4 steps each
    idx = [torch.cat([b.idx for b in loader]).numpy() for loader in parts]
    assert len(np.intersect1d(idx[0], idx[1])) == 0 and len(idx[0]) == len(idx[1]) == 64


@pytest.mark.parametrize("kind", ["cache", "webdataset"])
def test_a_subset_larger_than_the_training_set_names_the_setting(kind, sampled_dataset):
    exclude = sampled_dataset.mask("train", "clean-subset-20-s0")
    sampling = BalancedEpochs(sampled_dataset.labels("train", "clean"), samples=190, num_classes=10)
    with pytest.raises(ValueError, match=r"data.epoch_samples=190 draws 192 .* only 183 training samples"):
        build_loader(kind, sampled_dataset, sampling=sampling, exclude=exclude)


def test_sampling_on_an_evaluation_loader_is_refused(sampled_dataset):
    sampling = BalancedEpochs(sampled_dataset.labels("train", "clean"), samples=50, num_classes=10)
    with pytest.raises(ValueError, match="evaluation reads every sample"):
        build_loader("cache", sampled_dataset, train=False, sampling=sampling)


def test_selected_epochs_keep_the_epoch_length_and_draw_only_the_selection():
    exclude = np.zeros(100, dtype=bool)
    exclude[:10] = True  # 90 kept: 6 batches of 16
    rule = SelectedEpochs(100, exclude)
    everything = rule.draw(0, 0, 16, 0, 1, exclude)
    assert rule.steps(16, 1) == 6 and everything.shape == (96,)
    assert set(everything.tolist()) == set(range(10, 100))  # no selection: every kept idx (6 repeated)
    chosen = np.zeros(100, dtype=bool)
    chosen[::4] = True  # 25 selected, 3 of them excluded
    rule.select(torch.from_numpy(chosen))
    idx = rule.draw(1, 0, 16, 0, 1, exclude)
    assert idx.shape == (96,) and set(idx.tolist()) == set(np.flatnonzero(chosen & ~exclude).tolist())
    np.testing.assert_array_equal(np.bincount(idx, minlength=100)[chosen & ~exclude].clip(4, 5),
                                  np.bincount(idx, minlength=100)[chosen & ~exclude])  # 96 / 22: 4 or 5 each
    np.testing.assert_array_equal(idx, rule.draw(1, 0, 16, 0, 1, exclude))  # deterministic in (seed, epoch)
    assert not np.array_equal(idx, rule.draw(2, 0, 16, 0, 1, exclude))


def test_selected_epochs_split_one_selection_over_processes():
    rule = SelectedEpochs(200)
    chosen = np.arange(200) % 2 == 1
    rule.select(chosen)
    parts = [rule.draw(3, 5, 8, r, 2) for r in range(2)]
    assert rule.steps(8, 2) == 13 and [len(p) for p in parts] == [104, 104]  # 25 batches of 8 over 2 processes
    assert chosen[np.concatenate(parts)].all()


def test_selected_epochs_refuse_a_bad_or_empty_selection():
    rule = SelectedEpochs(10)
    with pytest.raises(ValueError, match=r"bool \(10,\) mask"):
        rule.select(np.ones(9, dtype=bool))
    with pytest.raises(ValueError, match=r"bool \(10,\) mask"):
        rule.select(np.ones(10, dtype=np.int64))
    rule.select(np.zeros(10, dtype=bool))
    with pytest.raises(ValueError, match="left no training sample for epoch 4"):
        rule.draw(3, 0, 4, 0, 1)


@pytest.mark.parametrize("kind", ["cache", "dali", "webdataset"])
def test_loaders_train_on_the_method_selection(kind, sampled_dataset):
    exclude = sampled_dataset.mask("train", "clean-subset-20-s0")
    rule = SelectedEpochs(203, exclude)
    loader = build_loader(kind, sampled_dataset, sampling=rule, exclude=exclude, seed=3)
    assert len(loader) == 12  # 183 kept: 12 full batches of 16, selected or not
    chosen = np.zeros(203, dtype=bool)
    chosen[:50] = True
    rule.select(chosen)
    idx = torch.cat([b.idx for b in loader]).numpy()
    assert len(idx) == 192 and chosen[idx].all() and not exclude[idx].any()
    np.testing.assert_array_equal(idx, rule.draw(0, 3, 16, 0, 1, exclude))  # the draw's order, in every mode
