"""SOP+: the AutoAugment view (levels mapped as the authors' code maps them, seeded draws, the final
cutout), and one training step (network, u and v) against the loss written out here."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import torch
import torch.nn.functional as F

from pipeline.load import transforms as T
from support.methods import make_method, make_run


def _images(n: int, side: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(30, 230, (n, 3, side, side), generator=g, dtype=torch.uint8)  # no op is a no-op here


def _pil(image: torch.Tensor) -> PIL.Image.Image:
    return PIL.Image.fromarray(image.permute(1, 2, 0).numpy())


def _tensor(image: PIL.Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


@pytest.mark.parametrize("name, level, expected", [
    ("posterize", 7, lambda x, s: T.posterize(x, 2)),  # their Posterize2: 4 - int(4 * 7 / 10) bits
    ("solarize", 2, lambda x, s: T.solarize(x, 205)),  # 256 - int(256 * 2 / 10)
    ("rotate", 2, lambda x, s: T.rotate(x, 6 * s)),  # int(30 * 2 / 10) degrees
    ("shear_y", 8, lambda x, s: T.shear_y(x, 0.24 * s)),
    ("translate_x", 9, lambda x, s: T.translate(x, 9 * s, 0.0)),  # 9 px whatever the size
    ("translate_y", 3, lambda x, s: T.translate(x, 0.0, 3 * s)),
    ("contrast", 6, lambda x, s: T.contrast(x, 1.18)),  # 1.8 * 6 / 10 + 0.1
    ("sharpness", 1, lambda x, s: T.sharpness(x, 0.28)),
    ("invert", 7, lambda x, s: 255 - x),
])
def test_policy_levels_map_to_the_authors_values(name, level, expected):
    images = _images(4)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    want = expected(images, sign.view(-1)) if name in ("rotate", "shear_y", "translate_x", "translate_y") else \
        expected(images, None)
    torch.testing.assert_close(T.autoaugment_op(name, level, images, sign), want, rtol=0, atol=0)


def test_two_ops_match_pil_directly():
    image = _images(1, side=32)
    torch.testing.assert_close(T.autoaugment_op("posterize", 7, image, torch.ones(1, dtype=torch.float64))[0],
                               _tensor(PIL.ImageOps.posterize(_pil(image[0]), 2)), rtol=0, atol=0)
    torch.testing.assert_close(T.autoaugment_op("rotate", 2, image, -torch.ones(1, dtype=torch.float64))[0],
                               _tensor(_pil(image[0]).rotate(-6)), rtol=0, atol=0)


def test_autoaugment_is_seeded_and_leaves_the_policys_share_of_images_unchanged():
    images = _images(4000)
    out = T.autoaugment(images, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, T.autoaugment(images, torch.Generator().manual_seed(1)), rtol=0, atol=0)
    assert not torch.equal(out, T.autoaugment(images, torch.Generator().manual_seed(2)))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    unchanged = (out == images).flatten(1).all(dim=1).float().mean().item()
    expected = np.mean([(1 - a[1]) * (1 - b[1]) for a, b in T.AUTOAUGMENT_CIFAR10])  # neither op applied
    assert unchanged == pytest.approx(expected, abs=0.025)


def test_zero_cutout_zeroes_one_clipped_square_of_at_most_16_px_per_image():
    images = torch.ones(500, 3, 32, 32)
    out = T.zero_cutout(images, 16, torch.Generator().manual_seed(0))
    zero = out[:, 0] == 0  # (B, H, W)
    assert torch.equal(out == 0, zero[:, None].expand_as(out))  # every channel alike
    rows, cols = zero.any(dim=2).sum(dim=1), zero.any(dim=1).sum(dim=1)  # (B,) extent of the square
    assert torch.equal(zero.sum(dim=(1, 2)), rows * cols)  # a rectangle
    assert rows.min() >= 8 and rows.max() == 16 and cols.min() >= 8 and cols.max() == 16


def test_autoaugment_view_leaves_the_weak_view_as_it_was():
    images = _images(8, side=32)
    config = T.cifar10()

    def views(names):
        gens = {n: torch.Generator().manual_seed(7) for n in names if n != "weak"}
        return T.train_views(images, config, names, generator=torch.Generator().manual_seed(3), generators=gens)

    weak, out = views(("weak", "autoaugment"))
    torch.testing.assert_close(weak, views(("weak",))[0], rtol=0, atol=0)
    assert out["autoaugment"].shape == weak.shape and out["autoaugment"].dtype == torch.float32
    assert not torch.equal(out["autoaugment"], weak)


def test_sop_plus_step_trains_network_u_and_v_on_the_written_out_loss():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 1])
    lr, lr_u, lr_v, c_weight, b_weight, eps = 0.1, 10.0, 3.0, 0.9, 0.1, 1e-4
    method = make_method("sop_plus", [0, 1, 1, 0], num_classes=2, base_lr=lr, lr_u=lr_u, lr_v=lr_v,
                         consistency=c_weight, balance=b_weight)
    run = make_run(method)
    idx = torch.tensor([2, 0, 1])
    u0 = torch.tensor([0.5, 0.2, 0.0])
    v0 = torch.tensor([[0.3, 0.4], [0.5, 0.1], [0.2, 0.6]])
    run.store.set("u", idx, u0)
    run.store.set("v", idx, v0)
    weak, strong = torch.randn(3, 2), torch.randn(3, 2)
    model = run.models["model"]
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()

    # the loss, written out: SOP on the weak view, class balance on q, KL consistency to the strong view
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    u, v = u0.clone().requires_grad_(True), v0.clone().requires_grad_(True)
    o1, o2 = weak @ w.T + b, strong @ w.T + b
    y = F.one_hot(labels, 2).float()
    big_u = (u[:, None] ** 2 * y).clamp(0, 1)
    big_v = (v ** 2 * (1 - y)).clamp(0, 1)
    q = (o1.softmax(1) + big_u - big_v.detach()).clamp(min=eps)
    q = (q / q.sum(1, keepdim=True)).clamp(min=eps)
    ce = -(y * q.log()).sum(1).mean()
    hard = F.one_hot(o1.argmax(1), 2).float()
    mse = ((hard + big_u.detach() - big_v - y) ** 2).sum(1).mean()
    balance = -(q.mean(0).clamp(eps, 1).log() * 0.5).sum()
    p1 = o1.softmax(1).detach()
    consistency = (p1 * (p1.log() - o2.log_softmax(1))).sum(1).mean()
    total = ce + mse + b_weight * balance + c_weight * consistency
    gw, gb, gu, gv = torch.autograd.grad(total, (w, b, u, v))

    out = method.train_step(SimpleNamespace(idx=idx, views={"weak": weak, "autoaugment": strong}), labels, run)
    assert out.terms["loss"].item() == pytest.approx(total.item(), rel=1e-5)
    torch.testing.assert_close(out.logits, o1.detach())
    torch.testing.assert_close(model.weight.detach(), w0 - lr * gw)
    torch.testing.assert_close(model.bias.detach(), b0 - lr * gb)
    torch.testing.assert_close(torch.from_numpy(run.store["u"][idx.numpy()]), u0 - lr_u * gu)
    torch.testing.assert_close(torch.from_numpy(run.store["v"][idx.numpy()]), v0 - lr_v * gv)
    assert gu[0] != 0  # u moves (ce and the balance term reach it)
    assert run.store["u"][3] == pytest.approx(1e-8)  # rows outside the batch are untouched
