"""Meta label correction (MLC, MLC-D, EBOMLC): the losses and the barrier against hand-computed and
finite-difference values, the inner SGD step against torch's, the main model after one EBOMLC step,
the options that select the first readings, the MLC meta gradient against finite differences,
main-model pass counts, and tiny end-to-end runs."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from PIL import Image
from torch.func import functional_call

from pipeline.load.batch import Batch
from training.methods import METHODS, build_method
from training.methods.base import MethodContext
from training.methods.common.meta_label import (META, InnerSGD, MetaLabelNet, dynamic_barrier, lower_loss,
                                                soft_cross_entropy)
from training.methods.ebomlc import EBOMLCConfig, ebomlc_direction, mixture_ce, mixture_nll
from training.methods.mlc import mlc_gradients
from training.methods.mlc_d import MLCDConfig, mlc_d_direction
from training.models.tiny_cnn import TinyCNN
from training.plots import save_figure
from training.run import main
from support.launch import launch_cpu
from support.methods import make_method, make_run

ROOT = Path(__file__).resolve().parents[1]
MASK = "clean-subset-20-s0"
C = 10


# ------------------------------------------------------------------ losses and barrier maths


def test_dynamic_barrier_zero_when_aligned_positive_when_opposed():
    q = torch.tensor([1.0, 2.0, 0.0])
    aligned = dynamic_barrier(torch.dot(3 * q, q), q.dot(q), delta=0.25, eps=0.0)
    assert aligned == 0.0  # F already decreases Q fast enough: no barrier
    opposed = dynamic_barrier(torch.dot(-q, q), q.dot(q), delta=0.25, eps=0.0)
    assert opposed == pytest.approx(1.25)  # delta + 1
    orthogonal = dynamic_barrier(torch.dot(torch.tensor([0.0, 0.0, 5.0]), q), q.dot(q), delta=0.25, eps=0.0)
    assert orthogonal == pytest.approx(0.25)
    # bf16 inputs are computed in float32
    beta = dynamic_barrier(torch.tensor(-5.0, dtype=torch.bfloat16), torch.tensor(5.0, dtype=torch.bfloat16), 0.25, 0)
    assert beta.dtype == torch.float32 and beta == pytest.approx(1.25)


def test_mixture_ce_mixes_logits_with_meta_probabilities_and_has_the_closed_form_gradients():
    torch.manual_seed(0)
    b, rho = 5, 0.2
    f = torch.randn(b, C, dtype=torch.float64, requires_grad=True)
    g = torch.randn(b, C, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, C, (b,))
    loss = mixture_ce(f, g, y, rho)
    # by hand: z = rho f + (1 - rho) softmax(g);  loss = mean(logsumexp(z) - z_y)
    p_g = torch.exp(g - torch.logsumexp(g, 1, keepdim=True)).detach()
    z = rho * f.detach() + (1 - rho) * p_g
    rows = torch.arange(b)
    expected = (torch.logsumexp(z, 1) - z[rows, y]).mean()
    torch.testing.assert_close(loss, expected)
    grad_f, grad_g = torch.autograd.grad(loss, (f, g))
    r = (torch.exp(z - torch.logsumexp(z, 1, keepdim=True)) - F.one_hot(y, C)) / b  # dloss/dz
    torch.testing.assert_close(grad_f, rho * r)  # grad_w F is proportional to rho
    jac_r = p_g * (r - (p_g * r).sum(1, keepdim=True))  # softmax Jacobian (diag(p) - p p^T) applied to r
    torch.testing.assert_close(grad_g, (1 - rho) * jac_r)
    # g can lift the label's logit by at most 1 - rho: a confident wrong f stays costly
    wrong = torch.zeros(1, C, dtype=torch.float64)
    wrong[0, 3] = 50.0
    copying = torch.full((1, C), -50.0, dtype=torch.float64)
    copying[0, 1] = 50.0  # g puts all its mass on the label
    assert mixture_ce(wrong, copying, torch.tensor([1]), rho) > 9.0  # about rho * 50 - (1 - rho)
    assert mixture_nll(wrong, copying, torch.tensor([1]), rho) < 0.3  # -log(1 - rho): copying pays off
    torch.testing.assert_close(mixture_ce(f, g, y, 1.0), F.cross_entropy(f, y))


def test_mixture_nll_with_rho_one_is_cross_entropy_and_stays_finite():
    torch.manual_seed(0)
    f, g, y = torch.randn(6, C), torch.randn(6, C), torch.randint(0, C, (6,))
    torch.testing.assert_close(mixture_nll(f, g, y, 1.0), F.cross_entropy(f, y))
    mixed = mixture_nll(f, g, y, 0.2)
    expected = -torch.log(0.2 * f.softmax(1)[torch.arange(6), y] + 0.8 * g.softmax(1)[torch.arange(6), y]).mean()
    torch.testing.assert_close(mixed, expected)
    extreme = torch.full((1, C), -1e4)
    extreme[0, 0] = 1e4  # main model's probability of the label underflows to 0
    assert torch.isfinite(mixture_nll(extreme, torch.zeros(1, C), torch.tensor([1]), 0.2))


def test_lower_loss_mixes_the_clean_half_by_count():
    torch.manual_seed(0)
    logits, target = torch.randn(6, C), torch.randn(6, C).softmax(1)
    mix_logits, mix_labels = torch.randn(2, C), torch.tensor([4, 7])
    noisy = -(target * logits.log_softmax(1)).sum(1).mean()
    clean = -(mix_logits.log_softmax(1)[torch.arange(2), mix_labels]).mean()
    torch.testing.assert_close(lower_loss(logits, target), noisy)
    torch.testing.assert_close(lower_loss(logits, target, mix_logits, mix_labels), (6 * noisy + 2 * clean) / 8)


@pytest.mark.parametrize("nesterov", [False, True])
def test_inner_sgd_is_the_main_optimiser_next_step_and_leaves_its_state_alone(nesterov):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
    for step in range(3):  # the first without a momentum buffer, then with one
        inner = InnerSGD.of(opt, model)
        assert len(inner.buffers) == (0 if step == 0 else 2)
        buffers = {n: opt.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters() if step}
        grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
        predicted = inner.step({n: p.detach().clone() for n, p in model.named_parameters()}, grads)
        for n, p in model.named_parameters():
            if step:
                assert torch.equal(opt.state[p]["momentum_buffer"], buffers[n])  # read, not updated
            p.grad = grads[n].clone()
        opt.step()
        for n, p in model.named_parameters():
            torch.testing.assert_close(predicted[n], p.detach())
    plain = InnerSGD.of(torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.1), model)
    assert (plain.lr, plain.weight_decay, plain.momentum) == (0.01, 0.1, 0.0)  # plain SGD at Adam's lr and wd


def test_meta_model_starts_from_the_official_initialisation():
    torch.manual_seed(0)
    meta = MetaLabelNet(C, 64, 128, 128)
    bound = math.sqrt(6 / (C + 128))  # xavier-uniform on the (C, 128) embedding
    assert meta.embed.weight.abs().max() <= bound and meta.embed.weight.std() > 0.5 * bound / math.sqrt(3)
    for layer in (m for m in meta.mlp if isinstance(m, nn.Linear)):
        assert torch.count_nonzero(layer.bias) == 0
        expected_std = math.sqrt(2 / (layer.in_features + layer.out_features))  # xavier-normal
        assert layer.weight.std().item() == pytest.approx(expected_std, rel=0.15)
    run = _method("ebomlc")[1]
    assert run.optimizers[META].param_groups[0]["amsgrad"] is True


# ------------------------------------------------------------------ directions


def _models(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = TinyCNN(C, width=8).to(dtype)
    meta = MetaLabelNet(C, model.fc.in_features, 16, 16).to(dtype)
    return model, meta


def _batches(dtype=torch.float32, b=8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 3, 16, 16, generator=g, dtype=dtype)
    xc = torch.randn(b, 3, 16, 16, generator=g, dtype=dtype)
    return x, torch.randint(0, C, (b,), generator=g), xc, torch.randint(0, C, (b,), generator=g)


def test_ebomlc_with_rho_one_reduces_to_one_step_mlc_d_direction():
    x, y, xc, yc = _batches()
    inner = InnerSGD(lr=0.1, weight_decay=5e-4)
    cfg_e = EBOMLCConfig(rho=1.0, xi=1.0, delta=50.0)  # large delta: beta > 0
    cfg_d = MLCDConfig(inner_steps=1, delta=50.0)
    model, meta = _models()
    e = ebomlc_direction(model, meta, x, y, xc, yc, inner=inner, config=cfg_e)
    model, meta = _models()
    d = mlc_d_direction(model, meta, x, y, xc, yc, inner=inner, config=cfg_d)
    assert d.beta > 0  # the barrier is active, so the comparison covers grad Q too
    torch.testing.assert_close(e.beta, d.beta)
    torch.testing.assert_close(e.w, d.w)
    torch.testing.assert_close(e.a, d.a)
    # with the paper's rho the clean batch also moves the meta model
    model, meta = _models()
    mixed = ebomlc_direction(model, meta, x, y, xc, yc, inner=inner, config=EBOMLCConfig())
    assert not torch.allclose(mixed.a, d.a)


@pytest.mark.parametrize("w1_grad, min_cosine", [("bome", 0.98), ("full", 0.95)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_barrier_maths_stay_float32_under_reduced_precision_autocast(dtype, w1_grad, min_cosine):
    """Forwards run in bf16/fp16 (CPU autocast here; CUDA autocast is the same code path), while the
    flat gradients, their inner products, norms and beta are float32 and track the fp32 step.
    The full grad_w Q is a difference of two nearby gradients, so it keeps less of their relative
    precision (measured cosine 0.976 in bf16, 0.979 in fp16, against 0.998 for bome)."""
    x, y, xc, yc = _batches()
    kwargs = dict(inner=InnerSGD(lr=0.1, weight_decay=5e-4), config=EBOMLCConfig(delta=50.0, w1_grad=w1_grad))
    model, meta = _models()
    exact = ebomlc_direction(model, meta, x, y, xc, yc, **kwargs)
    model, meta = _models()
    seen = []
    model.fc.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    mixed = ebomlc_direction(model, meta, x, y, xc, yc, autocast=lambda: torch.autocast("cpu", dtype=dtype),
                             **kwargs)
    assert dtype in seen  # the forwards really ran in reduced precision
    for name in ("w", "a", "beta", "upper", "lower", "q"):
        assert getattr(mixed, name).dtype == torch.float32, name
    assert torch.isfinite(mixed.w).all() and torch.isfinite(mixed.a).all() and mixed.beta > 0
    cosine = F.cosine_similarity(mixed.w, exact.w, dim=0)
    assert cosine > min_cosine and mixed.beta.item() == pytest.approx(exact.beta.item(), rel=0.1)


class _FeatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.features(x))


def _tiny_problem(seed=0):
    """float64 _FeatNet + meta net and a noisy (8), clean (6) and clean-half (4) batch of 3 classes."""
    torch.manual_seed(seed)
    model, meta = _FeatNet().double(), MetaLabelNet(3, 6, 4, 5).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    xc, yc = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    xm, ym = torch.randn(4, 4, dtype=torch.float64), torch.randint(0, 3, (4,))
    return model, meta, (x, y), (xc, yc), (xm, ym)


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.mark.parametrize("w1_grad, upper_mix, with_mix", [("full", "logits", False), ("full", "logits", True),
                                                           ("bome", "logits", False), ("full", "probs", False)])
def test_ebomlc_direction_matches_the_formulas_by_hand(w1_grad, upper_mix, with_mix):
    """lambda = grad F + xi beta grad Q with w1 = w - lr (grad_w G + wd w), grad Q = grad G(w) -
    grad G(w1) over (w, a) ("full"; "bome" keeps grad_w G(w) in w), beta from Eq. 11, F the chosen
    mixture; one entry of grad_w Q also against central finite differences of G."""
    model, meta, (x, y), (xc, yc), mix = _tiny_problem()
    lr, wd, rho, xi, delta = 0.3, 0.01, 0.2, 0.5, 5.0
    cfg = EBOMLCConfig(w1_grad=w1_grad, upper_mix=upper_mix, delta=delta, barrier_eps=0.0)
    got = ebomlc_direction(model, meta, x, y, xc, yc, inner=InnerSGD(lr=lr, weight_decay=wd), config=cfg,
                           mix=mix if with_mix else None)
    names, w = zip(*model.named_parameters())
    a = list(meta.parameters())

    def g_loss(weights):  # G(weights, a) on the noisy batch (+ clean half); g sees h(x) at w
        target = meta(model.features(x).detach(), y).softmax(1)
        params = dict(zip(names, weights))
        noisy = soft_cross_entropy(functional_call(model, params, (x,)), target)
        if not with_mix:
            return noisy
        clean = F.cross_entropy(functional_call(model, params, (mix[0],)), mix[1])
        return (8 * noisy + 4 * clean) / 12

    g0 = torch.autograd.grad(g_loss(w), w)
    w1 = [(p - lr * (g + wd * p)).detach().requires_grad_(True) for p, g in zip(w, g0)]
    g1 = torch.autograd.grad(g_loss(w1), w1)
    q_w = _flat(g0) - _flat(g1) if w1_grad == "full" else _flat(g0)
    q_a = _flat(torch.autograd.grad(g_loss([p.detach() for p in w]) - g_loss([p.detach() for p in w1]), a))
    feats_c = model.features(xc)
    upper_fn = mixture_ce if upper_mix == "logits" else mixture_nll
    f = torch.autograd.grad(upper_fn(model.fc(feats_c), meta(feats_c.detach(), yc), yc, rho), list(w) + a)
    f_w, f_a = _flat(f[:len(w)]), _flat(f[len(w):])
    beta = max(delta - f_w.dot(q_w) / (q_w.dot(q_w) + q_a.dot(q_a)), 0.0)
    assert beta > 0
    torch.testing.assert_close(got.beta, beta)
    torch.testing.assert_close(got.w, f_w + xi * beta * q_w)
    torch.testing.assert_close(got.a, f_a + xi * beta * q_a)
    torch.testing.assert_close(got.q, (g_loss(w) - g_loss(w1)).detach())
    for n, p in zip(names, w1):
        torch.testing.assert_close(got.w_hat[n], p.detach())
    # one entry of grad_w Q against finite differences of G at w and at w1 (w1 held as its own point)
    h, i = 1e-6, 5  # entry 5 of the first weight matrix

    def bumped(weights, sign):
        first = weights[0].detach().clone().view(-1)
        first[i] += sign * h
        return [first.view_as(weights[0])] + [p.detach() for p in weights[1:]]

    with torch.no_grad():
        fd = (g_loss(bumped(w, 1)) - g_loss(bumped(w, -1))) / (2 * h)
        if w1_grad == "full":
            fd = fd - (g_loss(bumped(w1, 1)) - g_loss(bumped(w1, -1))) / (2 * h)
    assert q_w[i].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-9)


def test_mlc_d_takes_k_inner_steps_and_subtracts_the_gradient_at_w_k():
    model, meta, (x, y), (xc, yc), _ = _tiny_problem(seed=1)
    lr, k = 0.3, 3
    got = mlc_d_direction(model, meta, x, y, xc, yc, inner=InnerSGD(lr=lr),
                          config=MLCDConfig(inner_steps=k, delta=50.0))
    names, w = zip(*model.named_parameters())
    target = meta(model.features(x).detach(), y).softmax(1).detach()

    def grad_g(weights):
        return torch.autograd.grad(soft_cross_entropy(functional_call(model, dict(zip(names, weights)), (x,)),
                                                      target), weights)

    g0 = grad_g(list(w))
    w_k = [p.detach().requires_grad_(True) for p in w]
    for _ in range(k):
        w_k = [(p - lr * g).detach().requires_grad_(True) for p, g in zip(w_k, grad_g(w_k))]
    q_w = _flat(g0) - _flat(grad_g(w_k))
    f_w = _flat(torch.autograd.grad(F.cross_entropy(model(xc), yc), w))
    torch.testing.assert_close(got.w, f_w + got.beta * q_w)
    assert got.beta > 0  # a large delta keeps the barrier on, so grad_w Q shows in the direction
    assert torch.count_nonzero(got.a) > 0  # g learns only through beta grad_a Q
@pytest.mark.parametrize("with_mix, momentum", [(False, 0.0), (True, 0.9)])
def test_mlc_meta_gradient_matches_finite_differences(with_mix, momentum):
    model, meta, (x, y), (xc, yc), mix = _tiny_problem()
    lr, wd = 0.5, 0.01
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    if momentum:  # give the optimiser a momentum buffer, which the look-ahead must use
        model(x).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    buffers = {n: opt.state[p].get("momentum_buffer") for n, p in model.named_parameters()}
    got = mlc_gradients(model, meta, x, y, xc, yc, inner=InnerSGD.of(opt, model), mix=mix if with_mix else None)

    def lower(meta_params):
        feats = model.features(x)
        target = functional_call(meta, meta_params, (feats.detach(), y)).softmax(1)
        noisy = soft_cross_entropy(model.fc(feats), target)
        if not with_mix:
            return noisy
        return (8 * noisy + 4 * F.cross_entropy(model(mix[0]), mix[1])) / 12

    def meta_loss(meta_params):
        params = dict(model.named_parameters())
        grads = torch.autograd.grad(lower(meta_params), list(params.values()))
        ahead = {}
        for (n, p), g in zip(params.items(), grads):
            d = g + wd * p
            ahead[n] = p - lr * (d if buffers[n] is None else momentum * buffers[n] + d)
        return F.cross_entropy(functional_call(model, ahead, (xc,)), yc).item()

    base = {n: p.detach().clone() for n, p in meta.named_parameters()}
    offsets, start = {}, 0
    for n, p in base.items():
        offsets[n] = start
        start += p.numel()
    h = 1e-6
    for name, flat_index in (("mlp.4.weight", 7), ("mlp.0.weight", 3), ("embed.weight", 2 * 4 + 1)):
        plus, minus = dict(base), dict(base)
        bump = torch.zeros_like(base[name]).view(-1)
        bump[flat_index] = h
        plus[name] = base[name] + bump.view_as(base[name])
        minus[name] = base[name] - bump.view_as(base[name])
        fd = (meta_loss(plus) - meta_loss(minus)) / (2 * h)
        assert abs(fd) > 1e-8, "pick an entry the meta loss depends on"
        assert got.a[offsets[name] + flat_index].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)
    # the main model's gradient is the plain grad_w L_s(w, a) at the original weights
    plain = torch.autograd.grad(lower(base), list(model.parameters()))
    torch.testing.assert_close(got.w, _flat(plain))


# ------------------------------------------------------------------ the methods' steps


class _StubClean:
    """CleanSubset stand-in: a fixed clean batch and clean labels for idx 0..N-1."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def next_batch(self):
        return Batch(images=self.images, idx=torch.arange(len(self.images)))


def _method(name, **params):
    """(method on TinyCNN with SGD, its Run with the clean batch of _batches, the noisy batch, its labels)."""
    method = make_method(name, torch.zeros(16, dtype=torch.long), num_classes=C, epochs=1, base_lr=0.1,
                         build_model=lambda: TinyCNN(C, width=8),
                         build_optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
                         **params)
    x, y, xc, yc = _batches()
    torch.manual_seed(0)
    run = make_run(method, clean=_StubClean(xc, torch.cat([yc, y])))
    return method, run, Batch(images=x, idx=torch.arange(8, 16)), y


@pytest.mark.parametrize("main_lower_step", [True, False])
def test_ebomlc_step_moves_the_main_model_from_w1_or_from_w(main_lower_step):
    """Default: the main model keeps the SGD step to w1 = w - lr (grad_w G + wd w) and takes the
    barrier step from there; false (Algorithm 2 literally): the barrier step from w."""
    method, run, batch, labels = _method("ebomlc", main_lower_step=main_lower_step)
    model = run.models["model"]
    x, _, xc, yc = _batches()
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    reference, ref_meta = copy.deepcopy(model), copy.deepcopy(run.models[META])  # for the direction and w1
    d = ebomlc_direction(reference, ref_meta, x, labels, xc, yc, inner=InnerSGD(lr=0.1, weight_decay=5e-4),
                         config=method.config)
    method.train_step(batch, labels, run)
    # w1 by hand
    feats = reference.features(x)
    target = ref_meta(feats.detach(), labels).softmax(1).detach()
    g0 = torch.autograd.grad(soft_cross_entropy(reference.fc(feats), target), list(reference.parameters()))
    offset = 0
    for (n, p), g in zip(model.named_parameters(), g0):
        w1 = w[n] - 0.1 * (g + 5e-4 * w[n])
        start = w1 if main_lower_step else w[n]
        step = d.w[offset: offset + p.numel()].view_as(p)  # first SGD step: buffer = grad + wd * w
        torch.testing.assert_close(p.detach(), start - 0.1 * (step + 5e-4 * start), rtol=1e-5, atol=1e-6)
        offset += p.numel()


def _count_main_passes(model: nn.Module) -> dict[str, int]:
    """Counts forwards through the main model's first conv and backwards that reach its output."""
    counts = {"forward": 0, "backward": 0}
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))

    def on_forward(module, inputs, output):
        counts["forward"] += 1
        if output.requires_grad:
            output.register_hook(lambda grad: counts.__setitem__("backward", counts["backward"] + 1))

    first.register_forward_hook(on_forward)
    return counts


@pytest.mark.parametrize("name, params, forwards, backwards", [
    ("ebomlc", {}, 3, 3),  # noisy at w and w1, clean at w; grad G(w), grad G(w1), grad F
    ("ebomlc", {"w1_grad": "bome", "upper_mix": "probs", "main_lower_step": False}, 3, 2),  # the first reading
    ("ebomlc", {"clean_in_lower": True}, 5, 5),  # + the clean half at w and at w1
    ("mlc_d", {}, 7, 7),  # k = 5: k + 2 forwards and backwards (grad Q's both terms)
    ("mlc", {}, 3, 3),  # noisy and clean half at w, clean at w'; the backward with graph and the meta backward
    ("mlc", {"clean_in_lower": False}, 2, 2),
])
def test_train_step_counts_main_model_passes(name, params, forwards, backwards, tmp_path):
    method, run, batch, labels = _method(name, **params)
    models = run.models
    counts = _count_main_passes(models["model"])
    before = [p.detach().clone() for p in models["model"].parameters()]
    meta_before = [p.detach().clone() for p in models[META].parameters()]
    out = method.train_step(batch, labels, run)
    assert counts == {"forward": forwards, "backward": backwards}
    assert out.logits.shape == (8, C) and torch.isfinite(out.terms["loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, models["model"].parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(meta_before, models[META].parameters()))
    assert all(p.grad is None for m in models.values() for p in m.parameters())  # gradients cleared
    report = method.on_epoch_end(run)
    row = report.metrics
    assert 0.0 <= row["meta_label_acc"] <= 1.0 and row["upper_loss"] > 0 and row["lower_loss"] > 0
    assert ("beta_mean" in row) == (name != "mlc")
    heat = report.arrays["corrected_vs_true.npy"]
    assert heat.shape == (C, C) and heat.sum() == 8
    save_figure(report.figures["corrected_vs_true.png"], tmp_path / "corrected_vs_true.png")  # as the trainer does
    with Image.open(tmp_path / "corrected_vs_true.png") as image:
        assert image.format == "PNG" and image.width > 200


def test_meta_label_methods_reject_bad_params():
    ctx = MethodContext(num_classes=C, num_samples=4, noisy_labels=torch.zeros(4, dtype=torch.long), clean_labels=None,
                        epochs=1, base_lr=0.1, build_model=lambda: TinyCNN(C),
                        build_optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with pytest.raises(ValueError, match="method.params.rho"):
        build_method("ebomlc", {"rho": 0.0}, ctx)
    with pytest.raises(ValueError, match="method.params.w1_grad"):
        build_method("mlc_d", {"w1_grad": "exact"}, ctx)
    with pytest.raises(ValueError, match="method.params.upper_mix"):
        build_method("ebomlc", {"upper_mix": "sum"}, ctx)
    with pytest.raises(ValueError, match="method.params.main_lower_step"):
        build_method("mlc_d", {"main_lower_step": True}, ctx)  # MLC-D restores w: the authors' step_mlcbome
    with pytest.raises(ValueError, match="method.params.xi"):
        build_method("mlc", {"xi": 0.5}, ctx)  # MLC has no barrier


def test_clean_in_lower_with_one_clean_image_names_the_fix():
    method, run, batch, labels = _method("mlc")
    run.clean = _StubClean(torch.randn(1, 3, 16, 16), torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match="data.clean_batch_size"):
        method.train_step(batch, labels, run)


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlc", "mlc_d", "ebomlc"])
def test_run_meta_label_method_one_epoch_writes_results(name, tiny_dataset, tmp_path):
    assert name in METHODS
    args = ["--config", str(ROOT / "training/configs/demo_cpu.yaml"), f"data.root={tiny_dataset.parent}",
            f"data.name={tiny_dataset.name}", f"out_dir={tmp_path}", "run_name=r", "data.batch_size=32",
            "data.clean_batch_size=8", "data.eval_batch_size=64", "epochs=1", f"method.name={name}",
            f"data.clean_subset={MASK}"]
    if name == "mlc_d":
        args.append("method.params.inner_steps=2")
    assert main(args) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    row = results["history"][0]
    assert row["train_samples"] == 200 - 20  # the clean subset is left out of the noisy stream
    for key in ("meta_label_acc", "meta_fixed", "meta_broken", "upper_loss", "lower_loss", "test_acc"):
        assert key in row, key
    if name != "mlc":
        assert row["beta_min"] <= row["beta_mean"] <= row["beta_max"]


@pytest.mark.slow
def test_ebomlc_in_two_processes_reduces_gradients_and_diagnostics(tiny_dataset, tmp_path):
    """Two real CPU processes (gloo): the run finishes, and the per-epoch diagnostics and heatmap are
    sums over both processes' batches (each process alone saw about half of the 180 noisy images)."""
    proc = launch_cpu(2, ROOT / "training/run.py", "--config", str(ROOT / "training/configs/demo_cpu.yaml"),
                      f"data.root={tiny_dataset.parent}", f"data.name={tiny_dataset.name}", f"out_dir={tmp_path}",
                      "run_name=r", "data.batch_size=16", "data.clean_batch_size=8", "data.eval_batch_size=64",
                      "epochs=1", "cpu=true", "method.name=ebomlc", f"data.clean_subset={MASK}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    row = results["history"][0]
    assert results["hardware"]["num_processes"] == 2 and row["train_samples"] == 180
    heat = np.load(tmp_path / "r" / "method" / "corrected_vs_true.npy")
    assert heat.sum() == 180  # every noisy image once, from both processes
    assert row["beta_min"] <= row["beta_mean"] <= row["beta_max"] and np.isfinite(row["upper_loss"])
