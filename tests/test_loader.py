"""Tests of the loaders (pipeline/load/loader.py, cache_loader.py, dali_loader.py, webdataset_loader.py).

Each loader kind is checked for the epoch contract: every idx exactly once per epoch over all
processes, the same len() in every process, no padding duplicates, `exclude` respected.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.format.dataset import Dataset
from pipeline.load import transforms as T
from pipeline.load.epochs import SeedPurpose, batch_bounds, derive_seed, epoch_plan, part_bounds, steps_per_epoch
from pipeline.load.loader import dali_available, make_loader
from pipeline.load.webdataset_loader import WebDatasetLoader

from support.datasets import make_dataset
from support.launch import launch_cpu
from support.loader_data import build_loader as build

REPO = Path(__file__).resolve().parents[1]
KINDS = ["cache", "dali", "webdataset"]
needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia.dali is not installed (stream mode uses the fallback)")


@pytest.fixture(scope="session")
def loader_dataset(tiny_dataset) -> Dataset:
    """tests/conftest.py's tiny_dataset: 200 train samples in shards of 64, the 20-sample clean subset."""
    return Dataset(tiny_dataset)


@pytest.fixture(scope="session")
def odd_dataset(tmp_path_factory) -> Dataset:
    """An imagenet-kind dataset: 37 train images 40 px high and 48 wide (not square, not the output size)."""
    return Dataset(make_dataset(tmp_path_factory.mktemp("loader"), "odd", {"train": 37}, side=(40, 48), per_shard=10))


def epoch_idx(loader) -> list[int]:
    return [i for batch in loader for i in batch.idx.tolist()]


# ----------------------------------------------------------------------------------------------
# The per-process split


def test_steps_per_epoch_5001_samples_2_processes_batch_100():
    assert part_bounds(5001, 2, 0) == (0, 2500) and part_bounds(5001, 2, 1) == (2500, 5001)
    assert steps_per_epoch(5001, 2, 100) == 25
    (_, _), small = epoch_plan(5001, 100, 0, 2)
    (_, _), large = epoch_plan(5001, 100, 1, 2)
    assert len(small) == len(large) == 25
    assert small[-1] == (2400, 2500) and large[-1] == (2400, 2501)  # the surplus sample joins the last batch


@pytest.mark.parametrize("n", [1, 7, 100, 101, 199, 5000, 5001, 5003])
@pytest.mark.parametrize("processes", [1, 2, 3, 8])
@pytest.mark.parametrize("batch_size", [1, 16, 100])
def test_epoch_plan_covers_every_sample_once_in_equal_steps(n, processes, batch_size):
    if n < processes:
        return
    steps, covered = set(), []
    for r in range(processes):
        (start, stop), bounds = epoch_plan(n, batch_size, r, processes)
        steps.add(len(bounds))
        assert bounds[0][0] == 0 and bounds[-1][1] == stop - start
        assert all(hi - lo == batch_size for lo, hi in bounds[:-1])
        assert 1 <= bounds[-1][1] - bounds[-1][0] <= batch_size + 1
        covered += [start + i for lo, hi in bounds for i in range(lo, hi)]
    assert len(steps) == 1
    assert sorted(covered) == list(range(n))


def test_batch_bounds_zero_steps_is_empty():
    assert batch_bounds(0, 0, 10) == []


# ----------------------------------------------------------------------------------------------
# The seeds


def test_seed_streams_of_purposes_and_processes_never_coincide():
    """Issue 11: with `1 + process_index` as its purpose, the fallback loader's process 2 seeded its
    augmentation with its shuffle seed. Every (purpose, process) is now a stream of its own."""
    seeds = [derive_seed(7, 3, purpose, r) for purpose in SeedPurpose for r in range(64)]
    assert len(set(seeds)) == len(seeds) == 64 * len(SeedPurpose)
    assert derive_seed(7, 3, SeedPurpose.AUGMENT, 2) != derive_seed(7, 3, SeedPurpose.SHUFFLE)
    assert derive_seed(7, 3, SeedPurpose.SHUFFLE) == derive_seed(7, 3, SeedPurpose.SHUFFLE, 0)


def test_derive_seed_gives_the_seeds_process_0_drew_before_purposes_had_names():
    """A run's data order and augmentation are part of its result (DESIGN.md rule 7): these are the values
    the three-word derive_seed(3, 2, purpose) gave, and the four-word one of the strong view of process 1."""
    assert [derive_seed(3, 2, purpose) for purpose in (SeedPurpose.ORDER, SeedPurpose.AUGMENT, SeedPurpose.DALI,
                                                        SeedPurpose.SHUFFLE)] == [
        5737856171534892084, 4404663168949438663, 6736112310584518698, 5961938461114066393]
    assert derive_seed(3, 2, SeedPurpose.STRONG, 1) == 295895841164943656


def test_derive_seed_refuses_an_integer_that_is_no_purpose():
    with pytest.raises(ValueError):
        derive_seed(3, 2, max(SeedPurpose) + 1)


# ----------------------------------------------------------------------------------------------
# The epoch contract, per loader kind


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("train", [True, False])
def test_loader_yields_every_idx_once_per_epoch(kind, train, loader_dataset):
    loader = build(kind, loader_dataset, train=train)
    n = loader_dataset.num_samples("train")
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader)
        idx = [i for b in batches for i in b.idx.tolist()]
        assert sorted(idx) == list(range(n))
        assert loader.num_samples == n
        for b in batches:
            assert b.images.shape == (len(b.idx), 3, 32, 32) and b.images.dtype == torch.float32
            assert b.idx.dtype == torch.int64 and b.idx.dim() == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("processes", [2, 3])
def test_loader_processes_split_the_epoch_in_equal_steps(kind, processes, loader_dataset):
    n = loader_dataset.num_samples("train")
    for epoch in range(2):
        seen, lens = [], set()
        for r in range(processes):
            loader = build(kind, loader_dataset, batch_size=16, process_index=r, num_processes=processes)
            loader.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == len(loader)
            lens.add(len(loader))
            seen += [i for b in batches for i in b.idx.tolist()]
        assert len(lens) == 1
        assert sorted(seen) == list(range(n)), f"epoch {epoch}: duplicates or gaps across processes"


@pytest.mark.parametrize("kind", KINDS)
def test_loader_epochs_have_different_orders(kind, loader_dataset):
    loader = build(kind, loader_dataset)
    first, second = epoch_idx(loader), epoch_idx(loader)  # the epoch advances by itself
    assert first != second
    loader.set_epoch(0)
    assert epoch_idx(loader) == first


@pytest.mark.parametrize("kind", KINDS)
def test_loader_exclude_leaves_out_masked_idx(kind, loader_dataset):
    n = loader_dataset.num_samples("train")
    exclude = np.zeros(n, dtype=bool)
    exclude[np.random.default_rng(0).choice(n, 25, replace=False)] = True
    seen = []
    for r in range(2):
        loader = build(kind, loader_dataset, exclude=exclude, process_index=r, num_processes=2)
        assert loader.num_samples == n - 25
        seen += epoch_idx(loader)
    assert sorted(seen) == np.flatnonzero(~exclude).tolist()


SUBSET = "clean-subset-20-s0"  # 20 of the 200 train samples


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("train", [True, False])
def test_loader_small_kept_subset_gives_the_same_batches_in_every_mode(processes, train, loader_dataset):
    """The clean meta subset (everything else excluded) is read by idx: every mode yields the cache
    mode's idx batches, epoch_plan's sizes (never an empty batch), every kept idx once per epoch."""
    kept = loader_dataset.mask("train", SUBSET)
    expected_sizes = {1: [8, 8, 4], 2: [8, 2]}[processes]  # 20 split in parts of 20 or 10, batches of 8
    batches = {}
    for kind in KINDS:
        for r in range(processes):
            loader = build(kind, loader_dataset, exclude=~kept, batch_size=8, train=train, process_index=r,
                           num_processes=processes, seed=4)
            assert loader.num_samples == 20 and len(loader) == len(expected_sizes)
            batches[kind, r] = [[b.idx.tolist() for b in loader] for _ in range(2)]  # two epochs
    for kind, r in batches:
        assert batches[kind, r] == batches["cache", r], f"{kind} process {r}"
    for epoch in range(2):
        assert all([len(b) for b in batches["cache", r][epoch]] == expected_sizes for r in range(processes))
        seen = [i for r in range(processes) for b in batches["cache", r][epoch] for i in b]
        assert sorted(seen) == np.flatnonzero(kept).tolist()
    if train:
        assert batches["cache", 0][0] != batches["cache", 0][1]  # reshuffled each epoch


@pytest.mark.parametrize("kind", ["dali", "webdataset"])
def test_stream_modes_read_by_idx_draw_the_cache_modes_augmentation_in_every_process(kind, loader_dataset):
    """SeedPurpose.AUGMENT is one stream per process whatever the mode: reading the clean subset by idx,
    a stream mode's training batches are the cache mode's, crops and flips included."""
    kept = loader_dataset.mask("train", SUBSET)
    level = 1 / (255 * min(T.CIFAR10_STD))  # one pixel level in normalised units
    for r in range(3):
        cache, stream = ([b for b in build(k, loader_dataset, exclude=~kept, batch_size=8, process_index=r,
                                           num_processes=3, seed=4)] for k in ("cache", kind))
        assert len(cache) == len(stream)
        for a, b in zip(cache, stream):
            assert torch.equal(a.idx, b.idx)
            # DALI's decoder may differ from torchvision's by a few levels (the eval test below); another
            # crop or flip would differ by far more
            assert (a.images - b.images).abs().max() < 8 * level


@pytest.mark.parametrize("kind", ["dali", "webdataset"])
def test_stream_loader_with_most_of_the_split_kept_streams_and_drops(kind, loader_dataset):
    """The noisy stream with the subset held out reads the whole split in file order and drops the
    excluded idx: batch i holds the kept idx of file positions [16 i, 16 i + 16)."""
    exclude = loader_dataset.mask("train", SUBSET)
    loader = build(kind, loader_dataset, exclude=exclude, train=False, batch_size=16)
    assert loader.streams and loader.num_samples == 180 and len(loader) == 13  # ceil(200 / 16)
    expected = [[i for i in range(lo, min(lo + 16, 200)) if not exclude[i]] for lo in range(0, 200, 16)]
    assert [b.idx.tolist() for b in loader] == expected
    shuffled = [len(b.idx) for b in build(kind, loader_dataset, exclude=exclude, batch_size=16)]
    assert sum(shuffled) == 180 and max(shuffled) <= 16 and len(shuffled) == 13


@pytest.mark.parametrize("kind", ["dali", "webdataset"])
def test_stream_loader_reads_by_idx_up_to_half_the_split_kept(kind, loader_dataset):
    exclude = np.zeros(200, dtype=bool)
    exclude[:100] = True
    assert not build(kind, loader_dataset, exclude=exclude).streams  # 100 kept: by idx
    exclude[0] = False
    assert build(kind, loader_dataset, exclude=exclude).streams  # 101 kept: streaming


def test_cache_loader_is_deterministic_for_a_seed(loader_dataset):
    a = list(build("cache", loader_dataset, seed=5))
    b = list(build("cache", loader_dataset, seed=5))
    c = list(build("cache", loader_dataset, seed=6))
    assert all(torch.equal(x.idx, y.idx) and torch.equal(x.images, y.images) for x, y in zip(a, b))
    assert not torch.equal(a[0].idx, c[0].idx)


@needs_dali
def test_cache_and_stream_decode_the_same_pixels_for_eval(loader_dataset):
    def by_idx(kind):
        loader = build(kind, loader_dataset, train=False, batch_size=64)
        images = torch.cat([b.images for b in loader])
        order = torch.cat([b.idx for b in loader]).argsort()
        return images[order]

    cache, stream, fallback = by_idx("cache"), by_idx("dali"), by_idx("webdataset")
    # both use libjpeg-turbo but may differ in IDCT / upsampling: a few levels of 255 at most
    level = 1 / (255 * min(T.CIFAR10_STD))  # one pixel level in normalised units
    assert (cache - stream).abs().mean() < 1 * level
    assert (cache - stream).abs().max() < 8 * level
    assert torch.equal(cache, fallback)  # same decoder, same code path


@needs_dali
def test_dali_train_augmentation_stats(loader_dataset):
    loader = build("dali", loader_dataset, train=True, batch_size=64)
    eval_images = torch.cat([b.images for b in build("dali", loader_dataset, train=False, batch_size=64)])
    images = torch.cat([b.images for b in loader])
    zero = -torch.tensor(T.CIFAR10_MEAN) / torch.tensor(T.CIFAR10_STD)  # a zero-padded pixel
    border = images[:, :, 0, :]  # the top row is padding whenever the crop moved down
    is_pad = torch.isclose(border, zero.view(1, 3, 1)).all(dim=1).all(dim=1)
    assert 0.2 < is_pad.float().mean() < 0.7  # offset 0..3 of 0..8 rows -> 4/9 in expectation
    assert abs(images.mean() - eval_images.mean()) < 0.3


@pytest.mark.parametrize("kind", KINDS)
def test_loader_imagenet_kind_resizes_any_image_size(kind, odd_dataset):
    config = T.imagenet(size=24, resize=28)
    for train in (True, False):
        loader = build(kind, odd_dataset, transform=config, train=train, batch_size=8)
        batches = list(loader)
        assert sorted(i for b in batches for i in b.idx.tolist()) == list(range(37))
        assert all(b.images.shape[1:] == (3, 24, 24) for b in batches)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("preset", ["cifar", "imagenet"])
def test_loader_augment_off_trains_on_the_eval_images(kind, preset, loader_dataset, odd_dataset):
    """data.augment=false: training batches hold exactly the eval transform's pixels, by idx."""
    dataset = loader_dataset if preset == "cifar" else odd_dataset
    config = T.cifar10(augment=False) if preset == "cifar" else T.imagenet(size=24, resize=28, augment=False)

    def by_idx(transform, train):
        batches = list(build(kind, dataset, transform=transform, train=train, batch_size=16))
        images, idx = torch.cat([b.images for b in batches]), torch.cat([b.idx for b in batches])
        return images[idx.argsort()]

    plain = by_idx(config, train=False)
    assert torch.equal(by_idx(config, train=True), plain)
    assert not torch.equal(by_idx(dataclasses.replace(config, augment=True), train=True), plain)


# ----------------------------------------------------------------------------------------------
# Errors


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_make_loader_gpu_device_without_gpu_fails_clearly(loader_dataset):
    for mode in ("stream", "cache"):
        with pytest.raises(RuntimeError, match="device='cpu'"):
            make_loader(loader_dataset, "train", mode=mode, batch_size=8, train=True, transform=T.cifar10(),
                        device=torch.device("cuda"))


def test_make_loader_stream_on_other_device_fails_clearly(loader_dataset):
    with pytest.raises(RuntimeError, match="mode='cache'"):
        make_loader(loader_dataset, "train", mode="stream", batch_size=8, train=True, transform=T.cifar10(),
                    device=torch.device("meta"))


def test_make_loader_rejects_bad_arguments(loader_dataset):
    n = loader_dataset.num_samples("train")
    kw = dict(batch_size=8, train=True, transform=T.cifar10(), device="cpu")
    with pytest.raises(ValueError, match="bool mask"):
        make_loader(loader_dataset, "train", mode="cache", exclude=np.zeros(n - 1, dtype=bool), **kw)
    with pytest.raises(ValueError, match="process_index"):
        make_loader(loader_dataset, "train", mode="cache", process_index=2, num_processes=2, **kw)
    with pytest.raises(ValueError, match="mode"):
        make_loader(loader_dataset, "train", mode="disk", **kw)


def test_make_loader_falls_back_without_dali(loader_dataset, monkeypatch, caplog):
    monkeypatch.setattr("pipeline.load.loader.dali_available", lambda: False)
    with caplog.at_level("WARNING"):
        loader = make_loader(loader_dataset, "train", mode="stream", batch_size=8, train=True,
                             transform=T.cifar10(), device="cpu")
    assert isinstance(loader, WebDatasetLoader)
    assert "fallback" in caplog.text


# ----------------------------------------------------------------------------------------------
# A real two-process run


@pytest.mark.slow
def test_loader_two_real_processes_cover_the_epoch(loader_dataset, tmp_path):
    out = tmp_path / "idx.json"
    done = launch_cpu(2, REPO / "tests" / "support" / "loader_epoch_worker.py", str(loader_dataset.path), str(out), cwd=tmp_path,
                      timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    n = loader_dataset.num_samples("train")
    assert set(result) >= {"cache", "webdataset"} | ({"dali"} if dali_available() else set())
    for mode, record in result.items():
        assert record["lens"][0] == record["lens"][1], mode
        assert record["num_samples"] == n
        for epoch, (a, b) in enumerate(record["epochs"]):
            assert sorted(a + b) == list(range(n)), f"{mode} epoch {epoch}"
            assert not set(a) & set(b)
        assert record["epochs"][0][0] != record["epochs"][1][0], f"{mode}: epochs 0 and 1 in the same order"


@needs_dali
def test_dali_plain_reads_give_the_images_of_memory_mapped_reads(loader_dataset):
    mapped = list(build("dali", loader_dataset, train=False, batch_size=64))
    read = build("dali", loader_dataset, train=False, batch_size=64, mmap=False)
    assert read.dont_use_mmap
    for a, b in zip(mapped, read, strict=True):
        assert torch.equal(a.idx, b.idx) and torch.equal(a.images, b.images)
