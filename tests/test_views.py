"""Tests of the training views (weak / weak2 / strong): the RandAugment ops of pipeline/load/transforms.py and
make_loader(..., views=...) in cache mode, DALI stream mode and the fallback."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from pipeline.format.dataset import Dataset
from pipeline.load import transforms as T
from pipeline.load.loader import dali_available, make_loader

from support.datasets import make_dataset
from support.loader_data import build_loader as _build

KINDS = ["cache", "dali", "webdataset"]
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
    assert out.amin(dim=(2, 3)).eq(0).all() and out.amax(dim=(2, 3)).ge(254).all()  # PIL's float64 can give 254
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


def _pil(image):
    from PIL import Image

    return Image.fromarray(image.permute(1, 2, 0).numpy())


def _assert_matches_pil(out, refs, what):
    for i, ref in enumerate(refs):
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), np.asarray(ref)), f"{what}: sample {i} differs from PIL"


def test_autocontrast_invert_posterize_match_pil():
    from PIL import ImageOps

    images = _images(4, lo=40, hi=120)
    _assert_matches_pil(T.autocontrast(images), [ImageOps.autocontrast(_pil(x)) for x in images], "autocontrast")
    _assert_matches_pil(T.invert(images), [ImageOps.invert(_pil(x)) for x in images], "invert")
    bits = torch.tensor([4, 5, 7, 8])
    _assert_matches_pil(T.posterize(images, bits), [ImageOps.posterize(_pil(x), int(b)) for x, b in zip(images, bits)],
                        "posterize")


def test_solarize_and_solarize_add_match_pil():
    from PIL import Image, ImageOps

    images = _images(3)
    thresholds = torch.tensor([231, 180, 154])
    _assert_matches_pil(T.solarize(images, thresholds),
                        [ImageOps.solarize(_pil(x), int(t)) for x, t in zip(images, thresholds)], "solarize")
    addends = torch.tensor([11, -44, 99])
    refs = [ImageOps.solarize(Image.fromarray(np.clip(x.permute(1, 2, 0).numpy().astype(int) + int(a), 0, 255)
                                              .astype(np.uint8)), 128) for x, a in zip(images, addends)]
    _assert_matches_pil(T.solarize_add(images, addends), refs, "solarize_add")


@pytest.mark.parametrize("side", [32, 224])
def test_geometric_ops_match_pil_pixel_for_pixel(side):
    from PIL import Image

    images = _images(3, side=side)
    for degrees in (-30, -7, 3, 12, 27):
        _assert_matches_pil(T.rotate(images, float(degrees)), [_pil(x).rotate(degrees) for x in images],
                            f"rotate {degrees}")
    for shear in (-0.04, 0.01, 0.09):
        _assert_matches_pil(T.shear_x(images, shear),
                            [_pil(x).transform((side, side), Image.AFFINE, (1, shear, 0, 0, 1, 0)) for x in images],
                            f"shear_x {shear}")
        _assert_matches_pil(T.shear_y(images, shear),
                            [_pil(x).transform((side, side), Image.AFFINE, (1, 0, 0, shear, 1, 0)) for x in images],
                            f"shear_y {shear}")
    for shift in (-4, 1):
        _assert_matches_pil(T.translate(images, shift, 0.0),
                            [_pil(x).transform((side, side), Image.AFFINE, (1, 0, shift, 0, 1, 0)) for x in images],
                            f"translate_x {shift}")
        _assert_matches_pil(T.translate(images, 0.0, shift),
                            [_pil(x).transform((side, side), Image.AFFINE, (1, 0, 0, 0, 1, shift)) for x in images],
                            f"translate_y {shift}")


def test_cutout_matches_the_authors_pil_rectangle():
    from PIL import ImageDraw

    images = _images(4)
    size, cx, cy = torch.tensor([4, 4, 0, 1]), torch.tensor([0.5, 17.3, 10.7, 31.9]), torch.tensor([31.9, 5.2, 3.1, 0.2])
    refs = []
    for x, s, px, py in zip(images, size.tolist(), cx.tolist(), cy.tolist()):
        ref = _pil(x)
        x0, y0 = int(max(0, px - s / 2)), int(max(0, py - s / 2))
        ImageDraw.Draw(ref).rectangle((x0, y0, int(min(32, x0 + s)), int(min(32, y0 + s))), (127, 127, 127))
        refs.append(ref)
    _assert_matches_pil(T.cutout(images, size, cx, cy), refs, "cutout")


def test_op_values_follow_the_authors_levels():
    level = torch.tensor([1, 4, 9])
    np.testing.assert_allclose(T.op_value("brightness", level).numpy(), [0.28, 0.82, 1.72])
    assert T.op_value("posterize", level).tolist() == [4, 5, 7]
    assert T.op_value("rotate", level).tolist() == [3, 12, 27]
    assert T.op_value("solarize", level).tolist() == [25, 102, 230]  # threshold 256 - value
    assert T.op_value("solarize_add", level).tolist() == [11, 44, 99]
    np.testing.assert_allclose(T.op_value("translate_x", level).numpy(), [0.005, 0.02, 0.045])


def test_final_cutout_covers_the_expected_fraction():
    """int(0.15 * 32) = 4: x0 = int(max(0, cx - 2)) for cx ~ U[0, 32) and PIL fills x0..min(x0 + 4, 31),
    a width of 5 except at the right edge: E[width] = (3 * 5 + 27 * 5 + 4 + 3) / 32 = 157 / 32 px,
    so the mean grey fraction is (157 / 32)^2 / 32^2 = 2.351 %."""
    images = torch.zeros(4000, 3, 32, 32, dtype=torch.uint8)
    config = T.RandAugmentConfig(n=0)
    out = T.randaugment(images, config, _gen())
    grey = (out[:, 0] == T.CUTOUT_GREY).float().mean(dim=(1, 2))  # (B,) fraction per image
    expected = (157 / 32) ** 2 / 1024
    assert abs(grey.mean().item() - expected) < 4 * grey.std().item() / 4000 ** 0.5
    assert grey.max().item() == 25 / 1024 and grey.min().item() > 0  # 5 x 5 at most, never empty


def test_randaugment_applies_each_drawn_op_with_probability_half():
    images = _images(2000)
    config = T.RandAugmentConfig(n=1, magnitude=5, ops=("invert",), cutout=0.0)
    out = T.randaugment(images, config, _gen())
    inverted = (out == 255 - images).flatten(1).all(dim=1)
    assert torch.equal(out[~inverted], images[~inverted])
    assert abs(inverted.float().mean().item() - 0.5) < 0.04


def test_randaugment_levels_exclude_the_magnitude():
    """numpy.random.randint(1, m) as in the authors' code: with m = 2 every level is 1 (rotate 3 degrees)."""
    images = _images(200, side=32)
    config = T.RandAugmentConfig(n=1, magnitude=2, prob=1.0, ops=("rotate",), cutout=0.0)
    out = T.randaugment(images, config, _gen())
    plus, minus = T.rotate(images, 3.0), T.rotate(images, -3.0)
    assert all(torch.equal(out[i], plus[i]) or torch.equal(out[i], minus[i]) for i in range(200))


def test_randaugment_config_rejects_bad_values():
    with pytest.raises(ValueError, match="magnitude"):
        T.RandAugmentConfig(magnitude=11)
    with pytest.raises(ValueError, match="magnitude"):
        T.RandAugmentConfig(magnitude=1)
    with pytest.raises(ValueError, match="unknown ops"):
        T.RandAugmentConfig(ops=("identity",))


# ----------------------------------------------------------------------------------------------
# train_views


def test_train_views_weak_is_a_reflect_padded_crop_flip_and_strong_differs():
    images = _images(32)
    config = T.cifar10()
    weak, views = T.train_views(images, config, VIEWS, generator=_gen(1), generators={"strong": _gen(2)})
    expected = T.random_crop_flip(images, 32, 4, _gen(1), padding_mode="reflect")
    assert torch.equal(weak, T.normalise(expected, config))
    plain = T.apply(images, config, train=True, generator=_gen(1))  # the same draws, zero padding
    assert torch.equal(weak[:, :, 4:-4, 4:-4], plain[:, :, 4:-4, 4:-4]) and not torch.equal(weak, plain)
    assert views["weak"] is weak
    assert views["strong"].shape == weak.shape and views["strong"].dtype == torch.float32
    assert not torch.equal(views["strong"], weak)


def test_train_views_without_augment_gives_the_eval_transform_as_weak():
    images = _images(8)
    config = T.cifar10(augment=False)
    weak, views = T.train_views(images, config, VIEWS, generator=_gen(1), generators={"strong": _gen(2)})
    assert torch.equal(weak, T.apply(images, config, train=False, generator=None))
    assert not torch.equal(views["strong"], weak)


def test_train_views_strong_is_determined_by_its_generator():
    images = _images(32)
    config = T.cifar10()
    a = T.train_views(images, config, VIEWS, generator=_gen(1), generators={"strong": _gen(2)})[1]["strong"]
    b = T.train_views(images, config, VIEWS, generator=_gen(9), generators={"strong": _gen(2)})[1]["strong"]
    c = T.train_views(images, config, VIEWS, generator=_gen(1), generators={"strong": _gen(3)})[1]["strong"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_train_views_weak2_is_an_independent_weak_draw_from_its_own_generator():
    images = _images(32)
    config = T.cifar10()
    weak, views = T.train_views(images, config, ("weak", "weak2", "strong"), generator=_gen(1),
                                generators={"weak2": _gen(5), "strong": _gen(2)})
    alone, strong_only = T.train_views(images, config, VIEWS, generator=_gen(1), generators={"strong": _gen(2)})
    assert torch.equal(weak, alone) and torch.equal(views["strong"], strong_only["strong"])
    expected = T.normalise(T.random_crop_flip(images, 32, 4, _gen(5), padding_mode="reflect"), config)
    assert torch.equal(views["weak2"], expected) and not torch.equal(views["weak2"], weak)
    with pytest.raises(ValueError, match="weak2 view needs its own"):
        T.train_views(images, config, ("weak", "weak2"), generator=_gen(1), generators={})


def test_train_views_imagenet_kind():
    config = T.imagenet(size=24, resize=28)
    weak, views = T.train_views(_images(8, side=28), config, VIEWS, generator=_gen(), generators={"strong": _gen(1)})
    assert weak.shape == views["strong"].shape == (8, 3, 24, 24)


def test_train_views_rejects_unknown_names():
    with pytest.raises(ValueError, match="views"):
        T.train_views(_images(), T.cifar10(), ("weak", "medium"), generator=_gen(), generators={"strong": _gen()})


# ----------------------------------------------------------------------------------------------
# Loaders


@pytest.fixture(scope="session")
def views_dataset(tmp_path_factory) -> Dataset:
    return Dataset(make_dataset(tmp_path_factory.mktemp("views"), "views", {"train": 48, "test": 24}, side=32,
                                per_shard=32))


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
def test_loader_views_are_deterministic_per_seed_and_keep_the_plain_draws(kind, views_dataset):
    a = list(_build(kind, views_dataset, views=VIEWS, seed=3))
    b = list(_build(kind, views_dataset, views=VIEWS, seed=3))
    c = list(_build(kind, views_dataset, views=VIEWS, seed=4))
    plain = list(_build(kind, views_dataset, seed=3))
    torch.testing.assert_close(_by_idx(a, "strong"), _by_idx(b, "strong"), rtol=0, atol=0)
    assert not torch.equal(_by_idx(a, "strong"), _by_idx(c, "strong"))
    # the weak view takes the plain augmentation's draws; only the padding differs (reflect vs zeros)
    torch.testing.assert_close(_by_idx(a, "images")[..., 4:-4, 4:-4], _by_idx(plain, "images")[..., 4:-4, 4:-4],
                               rtol=0, atol=0)


def test_loader_views_differ_between_epochs(views_dataset):
    loader = _build("cache", views_dataset, views=VIEWS, seed=3)
    first, second = _by_idx(list(loader), "strong"), _by_idx(list(loader), "strong")
    assert not torch.equal(first, second)


def test_loader_views_differ_between_processes():
    """Each process draws its own augmentation stream per extra view (seeded by seed, epoch, view and process)."""
    from pipeline.load.epochs import view_generators

    g0 = view_generators(VIEWS, torch.device("cpu"), 3, 0, 0)["strong"]
    g1 = view_generators(VIEWS, torch.device("cpu"), 3, 0, 1)["strong"]
    assert not torch.equal(torch.rand(8, generator=g0), torch.rand(8, generator=g1))
    assert view_generators(("weak",), torch.device("cpu"), 3, 0, 0) == {}


@pytest.mark.parametrize("kind", KINDS)
def test_loader_weak2_is_a_second_weak_draw_that_changes_no_other_view(kind, views_dataset):
    both = list(_build(kind, views_dataset, views=VIEWS, seed=3))
    three = list(_build(kind, views_dataset, views=("weak", "weak2", "strong"), seed=3))
    for key in ("images", "strong"):
        torch.testing.assert_close(_by_idx(three, key), _by_idx(both, key), rtol=0, atol=0)
    weak2 = _by_idx(three, "weak2")
    assert weak2.shape == _by_idx(three, "images").shape and not torch.equal(weak2, _by_idx(three, "images"))


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
