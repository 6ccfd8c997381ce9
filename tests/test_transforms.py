"""Tests of pipeline/load/transforms.py: the batched augmentation ops of the cache loader and the fallback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.load import transforms as T


def _images(b=16, side=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, side, side), dtype=torch.uint8, generator=g)  # (B, 3, S, S)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_normalise_maps_mean_to_zero_and_std_to_one():
    config = T.cifar10()
    mean_image = torch.tensor([m * 255 for m in config.mean]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert T.normalise(mean_image, config).abs().max() < 1e-5
    images = _images(64)
    out = T.normalise(images, config)
    expected = (images.float() / 255 - torch.tensor(config.mean).view(1, 3, 1, 1)) / torch.tensor(config.std).view(1, 3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_random_crop_flip_outputs_are_windows_of_the_padded_input():
    images = _images(12)
    out = T.random_crop_flip(images, size=32, pad=4, generator=_gen())
    assert out.shape == (12, 3, 32, 32) and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(12):
        candidates = [
            window
            for y in range(9)
            for x in range(9)
            for window in (padded[i, :, y : y + 32, x : x + 32], padded[i, :, y : y + 32, x : x + 32].flip(-1))
        ]
        assert any(torch.equal(out[i], c) for c in candidates), f"sample {i} is no crop/flip of its input"


def test_random_crop_flip_covers_offsets_and_flips_half():
    images = torch.zeros(4000, 3, 2, 2, dtype=torch.uint8)
    images[:, :, :, 1] = 1  # left pixel 0, right pixel 1: a flip swaps them
    out = T.random_crop_flip(images, size=2, pad=0, generator=_gen())
    flipped = (out[:, 0, 0, 0] == 1).float().mean().item()
    assert 0.45 < flipped < 0.55
    marked = torch.zeros(2000, 3, 8, 8, dtype=torch.uint8)
    marked[:, :, 0, 0] = 255  # top-left corner: it lands at (4 - oy, 4 - ox) or its mirror
    crops = T.random_crop_flip(marked, size=8, pad=4, generator=_gen(1))
    positions = {tuple(p.tolist()) for p in (crops[:, 0] == 255).nonzero()[:, 1:]}
    assert len(positions) >= 40  # 5 x 5 offsets keep the corner, x2 mirror: all show up in 2000 draws


def test_random_crop_flip_is_determined_by_the_generator_seed():
    images = _images()
    a = T.random_crop_flip(images, 32, 4, _gen(7))
    b = T.random_crop_flip(images, 32, 4, _gen(7))
    c = T.random_crop_flip(images, 32, 4, _gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_resized_crop_flip_shapes_and_range():
    images = _images(8, side=64)
    out = T.random_resized_crop_flip(images, size=24, generator=_gen())
    assert out.shape == (8, 3, 24, 24) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255
    constant = torch.full((4, 3, 64, 64), 77, dtype=torch.uint8)
    assert torch.allclose(T.random_resized_crop_flip(constant, 24, _gen()), torch.tensor(77.0))


def test_random_resized_crop_flip_varies_between_samples():
    ramp = torch.arange(64, dtype=torch.uint8).view(1, 1, 1, 64).expand(32, 3, 64, 64).contiguous()
    out = T.random_resized_crop_flip(ramp, 16, _gen())
    widths = out[:, 0, 8, -1] - out[:, 0, 8, 0]  # signed horizontal extent of each crop
    assert (widths > 0).any() and (widths < 0).any()  # some mirrored, some not
    assert widths.abs().std() > 1  # crop scales differ


def test_apply_cifar_eval_is_normalise_only():
    config = T.cifar10()
    images = _images()
    torch.testing.assert_close(T.apply(images, config, train=False, generator=None), T.normalise(images, config))


def test_apply_train_needs_a_generator():
    with pytest.raises(ValueError, match="Generator"):
        T.apply(_images(), T.cifar10(), train=True, generator=None)


def test_apply_train_stats_of_uniform_pixels():
    config = T.cifar10()
    out = T.apply(_images(256), config, train=True, generator=_gen())
    assert out.shape == (256, 3, 32, 32) and out.dtype == torch.float32
    # uniform pixels have mean 127.5 -> (0.5 - m) / s; zero padding pulls it down by <= 25 %
    for c in range(3):
        uniform = (127.5 / 255 - config.mean[c]) / config.std[c]
        zero = -config.mean[c] / config.std[c]
        assert zero < out[:, c].mean() < uniform + 0.05


def test_apply_imagenet_eval_center_crops_the_cached_square():
    config = T.imagenet(size=24, resize=28)
    images = _images(4, side=28)
    out = T.apply(images, config, train=False, generator=None)
    torch.testing.assert_close(out, T.normalise(images[:, :, 2:26, 2:26], config))


def test_to_fixed_size_resizes_shorter_side_and_center_crops():
    wide = torch.zeros(3, 40, 80, dtype=torch.uint8)
    wide[:, :, 30:50] = 200  # a band at the horizontal centre
    out = T.to_fixed_size(wide, 20)
    assert out.shape == (3, 20, 20) and out.dtype == torch.uint8
    assert out[:, :, 8:12].float().mean() > 150 and out[:, :, :2].float().mean() < 50


def test_config_rejects_resize_below_size():
    with pytest.raises(ValueError, match="resize"):
        T.imagenet(size=224, resize=200)


def test_config_rejects_unknown_kind_and_is_keyword_only():
    with pytest.raises(ValueError, match="kind"):
        T.TransformConfig(kind="mnist", size=28, mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(TypeError):
        T.TransformConfig("cifar", 32, (0, 0, 0), (1, 1, 1))


def test_cifar_upscale_resizes_the_finished_batch_in_every_path():
    """upscale=224: the 32 px result (train, eval, both views) bilinearly upsampled, same draws."""
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    small, big = T.cifar10(), T.cifar10(upscale=224)
    for train in (True, False):
        expected = F.interpolate(T.apply(images, small, train=train, generator=torch.Generator().manual_seed(1)),
                                 size=(224, 224), mode="bilinear", align_corners=False)
        got = T.apply(images, big, train=train, generator=torch.Generator().manual_seed(1))
        assert got.shape == (4, 3, 224, 224) and torch.allclose(got, expected, atol=1e-5)
    weak, views = T.train_views(images, big, ("weak", "strong"), generator=torch.Generator().manual_seed(2),
                                generators={"strong": torch.Generator().manual_seed(3)})
    assert weak.shape == views["strong"].shape == (4, 3, 224, 224)
    with pytest.raises(ValueError, match="upscale"):
        T.imagenet(upscale=256)


def test_strong_magnitude_reaches_the_strong_view():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)

    def strong(config):
        _, views = T.train_views(images, config, ("strong",), generator=torch.Generator().manual_seed(0),
                                 generators={"strong": torch.Generator().manual_seed(1)})
        return views["strong"]

    explicit = T.train_views(images, T.cifar10(), ("strong",), generator=torch.Generator().manual_seed(0),
                             generators={"strong": torch.Generator().manual_seed(1)},
                             augment=T.RandAugmentConfig(magnitude=5))[1]["strong"]
    assert torch.equal(strong(T.cifar10(strong_magnitude=5)), explicit)
    assert not torch.equal(strong(T.cifar10(strong_magnitude=10)), explicit)
