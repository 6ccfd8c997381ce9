"""Tests of the two training views (weak / strong): the RandAugment ops of pipeline/transforms.py and
make_loader(..., views=...) in cache mode, DALI stream mode and the fallback."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import transforms as T
from pipeline.dataset import Dataset
from pipeline.loader import dali_available, make_loader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader_data import build_loader as _build  # noqa: E402
from loader_data import make_dataset  # noqa: E402

KINDS = ["cache", "dali", "wds"]
VIEWS = ("weak", "strong")


def _images(b=16, side=32, seed=0, lo=0, hi=256):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (b, 3, side, side), dtype=torch.uint8, generator=g)  # (B, 3, S, S)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# The ops


def test_posterize_keeps_the_top_bits():
    images = _images()
    out = T.posterize(images, 3)
    assert torch.equal(out, images & 0b11100000)
    assert torch.equal(T.posterize(images, 8), images)


def test_solarize_inverts_pixels_at_or_above_the_threshold():
    images = torch.tensor([0, 100, 169, 170, 255], dtype=torch.uint8).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    out = T.solarize(images, 170.0)[0, 0, 0].tolist()
    assert out == [0, 100, 169, 85, 0]


def test_autocontrast_stretches_each_channel_to_the_full_range():
    images = _images(lo=40, hi=120)
    out = T.autocontrast(images)
    assert out.amin(dim=(2, 3)).eq(0).all() and out.amax(dim=(2, 3)).eq(255).all()
    flat = torch.full((1, 3, 4, 4), 77, dtype=torch.uint8)
    assert torch.equal(T.autocontrast(flat), flat)


def test_equalize_flattens_the_histogram():
    images = _images(2, side=128, lo=100, hi=140)  # a narrow band of levels (large: PIL's integer step is exact-ish)
    out = T.equalize(images)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert out.float().std() > 3 * images.float().std()  # spread over [0, 255]
    assert abs(out.float().mean().item() - 127.5) < 12
    constant = torch.full((1, 3, 4, 4), 9, dtype=torch.uint8)
    assert torch.equal(T.equalize(constant), constant)  # step 0: unchanged


def test_equalize_matches_pil():
    from PIL import Image, ImageOps

    images = _images(4)
    out = T.equalize(images)
    for i in range(4):
        ref = np.asarray(ImageOps.equalize(Image.fromarray(images[i].permute(1, 2, 0).numpy())))
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), ref)


@pytest.mark.parametrize("op, enhancer", [("brightness", "Brightness"), ("contrast", "Contrast"),
                                          ("color", "Color"), ("sharpness", "Sharpness")])
def test_blend_ops_match_pil_within_one_level(op, enhancer):
    from PIL import Image, ImageEnhance

    images = _images(4)
    for factor in (0.7, 1.3):
        out = getattr(T, op)(images, torch.full((4,), factor))
        for i in range(4):
            pil = getattr(ImageEnhance, enhancer)(Image.fromarray(images[i].permute(1, 2, 0).numpy())).enhance(factor)
            diff = np.abs(np.asarray(pil).astype(int) - out[i].permute(1, 2, 0).numpy().astype(int))
            assert diff.max() <= 1, f"{op} x{factor}: sample {i} differs by {diff.max()} levels from PIL"


def test_randaugment_identity_only_is_a_copy():
    images = _images()
    out = T.randaugment(images, T.RandAugmentConfig(ops=("identity",)), _gen())
    assert torch.equal(out, images) and out.data_ptr() != images.data_ptr()


def test_randaugment_draws_an_op_per_image():
    images = _images(400)
    config = T.RandAugmentConfig(n=1, magnitude=10, ops=("identity", "solarize"))
    out = T.randaugment(images, config, _gen())
    solarized = T.solarize(images, 170.0)
    changed = (out != images).flatten(1).any(dim=1)
    assert all(torch.equal(out[i], solarized[i]) for i in np.flatnonzero(changed.numpy()))
    assert 0.4 < changed.float().mean() < 0.6  # half drew solarize


def test_randaugment_config_rejects_bad_values():
    with pytest.raises(ValueError, match="magnitude"):
        T.RandAugmentConfig(magnitude=31)
    with pytest.raises(ValueError, match="unknown ops"):
        T.RandAugmentConfig(ops=("rotate",))


# ----------------------------------------------------------------------------------------------
# train_views


def test_train_views_weak_is_the_train_augmentation_and_strong_differs():
    images = _images(32)
    config = T.cifar10()
    weak, views = T.train_views(images, config, VIEWS, generator=_gen(1), strong_generator=_gen(2))
    assert torch.equal(weak, T.apply(images, config, train=True, generator=_gen(1)))
    assert views["weak"] is weak
    assert views["strong"].shape == weak.shape and views["strong"].dtype == torch.float32
    assert not torch.equal(views["strong"], weak)


def test_train_views_strong_is_determined_by_its_generator():
    images = _images(32)
    config = T.cifar10()
    a = T.train_views(images, config, VIEWS, generator=_gen(1), strong_generator=_gen(2))[1]["strong"]
    b = T.train_views(images, config, VIEWS, generator=_gen(9), strong_generator=_gen(2))[1]["strong"]
    c = T.train_views(images, config, VIEWS, generator=_gen(1), strong_generator=_gen(3))[1]["strong"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_train_views_imagenet_kind():
    config = T.imagenet(size=24, resize=28)
    weak, views = T.train_views(_images(8, side=28), config, VIEWS, generator=_gen(), strong_generator=_gen(1))
    assert weak.shape == views["strong"].shape == (8, 3, 24, 24)


def test_train_views_rejects_unknown_names():
    with pytest.raises(ValueError, match="views"):
        T.train_views(_images(), T.cifar10(), ("weak", "medium"), generator=_gen(), strong_generator=_gen())


# ----------------------------------------------------------------------------------------------
# Loaders


@pytest.fixture(scope="session")
def views_dataset(tmp_path_factory) -> Dataset:
    return Dataset(make_dataset(tmp_path_factory.mktemp("views") / "tiny", {"train": 48, "test": 24}, per_shard=32))


def _by_idx(batches, key):
    idx = torch.cat([b.idx for b in batches])
    images = torch.cat([b.views[key] if key != "images" else b.images for b in batches])
    return images[idx.argsort()]


@pytest.mark.parametrize("kind", KINDS)
def test_loader_views_shapes_and_weak_is_images(kind, views_dataset):
    batches = list(_build(kind, views_dataset, views=VIEWS, seed=3))
    assert sorted(i for b in batches for i in b.idx.tolist()) == list(range(48))
    for b in batches:
        assert set(b.views) == set(VIEWS)
        assert b.views["weak"] is b.images
        assert b.views["strong"].shape == b.images.shape and b.views["strong"].dtype == torch.float32
        assert not torch.equal(b.views["strong"], b.images)


@pytest.mark.parametrize("kind", KINDS)
def test_loader_views_are_deterministic_per_seed_and_leave_images_unchanged(kind, views_dataset):
    a = list(_build(kind, views_dataset, views=VIEWS, seed=3))
    b = list(_build(kind, views_dataset, views=VIEWS, seed=3))
    c = list(_build(kind, views_dataset, views=VIEWS, seed=4))
    plain = list(_build(kind, views_dataset, seed=3))
    torch.testing.assert_close(_by_idx(a, "strong"), _by_idx(b, "strong"), rtol=0, atol=0)
    assert not torch.equal(_by_idx(a, "strong"), _by_idx(c, "strong"))
    torch.testing.assert_close(_by_idx(a, "images"), _by_idx(plain, "images"), rtol=0, atol=0)


def test_loader_views_differ_between_epochs(views_dataset):
    loader = _build("cache", views_dataset, views=VIEWS, seed=3)
    first, second = _by_idx(list(loader), "strong"), _by_idx(list(loader), "strong")
    assert not torch.equal(first, second)


def test_loader_views_differ_between_processes():
    """Each process draws its own strong augmentation stream (seeded by seed, epoch and process)."""
    from pipeline.loader import strong_view_generator

    g0 = strong_view_generator(VIEWS, torch.device("cpu"), 3, 0, 0)
    g1 = strong_view_generator(VIEWS, torch.device("cpu"), 3, 0, 1)
    assert not torch.equal(torch.rand(8, generator=g0), torch.rand(8, generator=g1))
    assert strong_view_generator(("weak",), torch.device("cpu"), 3, 0, 0) is None


def test_make_loader_rejects_views_on_eval_and_unknown_names(views_dataset):
    with pytest.raises(ValueError, match="train=False"):
        make_loader(views_dataset, "train", mode="cache", batch_size=8, train=False, transform=T.cifar10(),
                    device="cpu", views=VIEWS)
    with pytest.raises(ValueError, match="views"):
        make_loader(views_dataset, "train", mode="cache", batch_size=8, train=True, transform=T.cifar10(),
                    device="cpu", views=("weak", "weak"))


@pytest.mark.skipif(not dali_available(), reason="nvidia.dali is not installed")
def test_dali_views_need_the_cifar_kind(views_dataset):
    with pytest.raises(ValueError, match="data.loader=cache"):
        make_loader(views_dataset, "train", mode="stream", batch_size=8, train=True,
                    transform=T.imagenet(size=24, resize=28), device="cpu", views=VIEWS)
