"""Meta label correction (MLC, MLC-D, EBOMLC): barrier maths, reductions between the methods, the MLC
meta gradient against finite differences, main-model pass counts, and tiny end-to-end runs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from PIL import Image
from torch.func import functional_call

from pipeline.batch import Batch
from training.methods import METHODS, build_method
from training.methods.base import MethodContext
from training.methods.ebomlc import EBOMLCConfig
from training.methods.meta_label import (META, MetaLabelNet, barrier_direction, dynamic_barrier, mixture_nll,
                                         soft_cross_entropy)
from training.methods.mlc import mlc_gradients
from training.methods.mlc_d import MLCDConfig
from training.models.tiny_cnn import TinyCNN
from launch import launch_cpu
from training.run import main

ROOT = Path(__file__).resolve().parents[1]
MASK = "clean-subset-20-s0"
C = 10


# ------------------------------------------------------------------ barrier maths


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
    cfg_e = EBOMLCConfig(rho=1.0, xi=1.0, barrier_eps=1e-4, delta=50.0)  # large delta: beta > 0
    cfg_d = MLCDConfig(inner_steps=1, barrier_eps=1e-4, delta=50.0)
    model, meta = _models()
    e = barrier_direction(model, meta, x, y, xc, yc, lr=0.1, weight_decay=5e-4, config=cfg_e, rho=1.0, xi=1.0)
    model, meta = _models()
    d = barrier_direction(model, meta, x, y, xc, yc, lr=0.1, weight_decay=5e-4, config=cfg_d, rho=None, xi=1.0)
    assert d.beta > 0  # the barrier is active, so the comparison covers grad Q too
    torch.testing.assert_close(e.beta, d.beta)
    torch.testing.assert_close(e.w, d.w)
    torch.testing.assert_close(e.a, d.a)
    # with the paper's rho the clean batch also moves the meta model
    model, meta = _models()
    mixed = barrier_direction(model, meta, x, y, xc, yc, lr=0.1, weight_decay=5e-4, config=EBOMLCConfig(),
                              rho=0.2, xi=0.5)
    assert not torch.allclose(mixed.a, d.a)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_barrier_maths_stay_float32_under_reduced_precision_autocast(dtype):
    """Forwards run in bf16/fp16 (CPU autocast here; CUDA autocast is the same code path), while the
    flat gradients, their inner products, norms and beta are float32 and track the fp32 step."""
    x, y, xc, yc = _batches()
    kwargs = dict(lr=0.1, weight_decay=5e-4, config=EBOMLCConfig(delta=50.0), rho=0.2, xi=0.5)
    model, meta = _models()
    exact = barrier_direction(model, meta, x, y, xc, yc, **kwargs)
    model, meta = _models()
    seen = []
    model.fc.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    mixed = barrier_direction(model, meta, x, y, xc, yc, autocast=lambda: torch.autocast("cpu", dtype=dtype),
                              **kwargs)
    assert dtype in seen  # the forwards really ran in reduced precision
    for name in ("w", "a", "beta", "upper", "lower", "q"):
        assert getattr(mixed, name).dtype == torch.float32, name
    assert torch.isfinite(mixed.w).all() and torch.isfinite(mixed.a).all() and mixed.beta > 0
    cosine = F.cosine_similarity(mixed.w, exact.w, dim=0)
    assert cosine > 0.98 and mixed.beta.item() == pytest.approx(exact.beta.item(), rel=0.1)


def test_barrier_w1_grad_full_subtracts_the_gradient_at_w1():
    x, y, xc, yc = _batches(torch.float64)
    out = {}
    for reading in ("bome", "full"):
        model, meta = _models(torch.float64)
        cfg = EBOMLCConfig(w1_grad=reading, delta=100.0)  # large delta: beta > 0, so grad_w Q shows in w
        out[reading] = barrier_direction(model, meta, x, y, xc, yc, lr=0.1, weight_decay=0.0, config=cfg,
                                         rho=0.2, xi=0.5)
    assert not torch.allclose(out["full"].w, out["bome"].w)
    # by hand: bome's w-direction is grad_w F + xi beta grad_w G(w); full's lacks xi beta grad_w G(w1)
    model, meta = _models(torch.float64)
    feats = model.features(x)
    target = meta(feats.detach(), y).softmax(1).detach()
    params = list(model.parameters())
    g0 = torch.autograd.grad(soft_cross_entropy(model.fc(feats), target), params)
    w1 = {n: (p - 0.1 * g).detach() for (n, p), g in zip(model.named_parameters(), g0)}
    w1 = {n: w.requires_grad_(True) for n, w in w1.items()}
    g1 = torch.autograd.grad(soft_cross_entropy(functional_call(model, w1, (x,)), target), list(w1.values()))
    g1 = torch.cat([g.reshape(-1) for g in g1])
    coef_full = 0.5 * out["full"].beta
    g0 = torch.cat([g.reshape(-1) for g in g0])
    f_w_full = out["full"].w - coef_full * (g0 - g1)
    f_w_bome = out["bome"].w - 0.5 * out["bome"].beta * g0
    torch.testing.assert_close(f_w_full, f_w_bome)  # the same grad_w F underneath


class _FeatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.features(x))


def test_mlc_meta_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = _FeatNet().double()
    meta = MetaLabelNet(3, 6, 4, 5).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    xc, yc = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    lr, wd = 0.5, 0.01
    got = mlc_gradients(model, meta, x, y, xc, yc, lr=lr, weight_decay=wd)

    def meta_loss(meta_params):
        feats = model.features(x)
        target = functional_call(meta, meta_params, (feats.detach(), y)).softmax(1)
        params = dict(model.named_parameters())
        grads = torch.autograd.grad(soft_cross_entropy(model.fc(feats), target), list(params.values()))
        ahead = {n: p - lr * (g + wd * p) for (n, p), g in zip(params.items(), grads)}
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
    # the main model's gradient is the plain grad_w G(w, a) at the original weights
    feats = model.features(x)
    target = meta(feats.detach(), y).softmax(1)
    plain = torch.autograd.grad(soft_cross_entropy(model.fc(feats), target), list(model.parameters()))
    torch.testing.assert_close(got.w, torch.cat([g.reshape(-1) for g in plain]))


# ------------------------------------------------------------------ the methods' steps


class _StubClean:
    """CleanSubset stand-in: a fixed clean batch and clean labels for idx 0..N-1."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def next_batch(self):
        return Batch(images=self.images, idx=torch.arange(len(self.images)))


def _method(name, out_dir, **params):
    ctx = MethodContext(num_classes=C, num_samples=16, noisy_labels=torch.zeros(16, dtype=torch.long),
                        clean_labels=None, epochs=1, base_lr=0.1, build_model=lambda: TinyCNN(C, width=8),
                        build_optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
                        out_dir=out_dir, is_main_process=True)
    method = build_method(name, params, ctx)
    torch.manual_seed(0)
    models = method.build_models()
    optimizers = method.build_optimizers(models)
    x, y, xc, yc = _batches()
    method.clean = _StubClean(xc, torch.cat([yc, y]))
    return method, models, optimizers, Batch(images=x, idx=torch.arange(8, 16)), y


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
    ("ebomlc", {}, 3, 2),
    ("ebomlc", {"w1_grad": "full"}, 3, 3),
    ("mlc_d", {"delta": 50.0}, 7, 6),  # k = 5: k + 2 forwards, k + 1 backwards (delta: beta > 0, a moves)
    ("mlc", {}, 2, 2),  # noisy at w and clean at w'; the backward with graph and the meta backward
])
def test_train_step_counts_main_model_passes(name, params, forwards, backwards, tmp_path):
    method, models, optimizers, batch, labels = _method(name, tmp_path, **params)
    counts = _count_main_passes(models["model"])
    before = [p.detach().clone() for p in models["model"].parameters()]
    meta_before = [p.detach().clone() for p in models[META].parameters()]
    out = method.train_step(batch, labels, models, optimizers, Accelerator(cpu=True), epoch=0)
    assert counts == {"forward": forwards, "backward": backwards}
    assert out.logits.shape == (8, C) and torch.isfinite(out.terms["loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, models["model"].parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(meta_before, models[META].parameters()))
    assert all(p.grad is None for m in models.values() for p in m.parameters())  # gradients cleared
    row = method.on_epoch_end(0)
    assert 0.0 <= row["meta_label_acc"] <= 1.0 and row["upper_loss"] > 0 and row["lower_loss"] > 0
    assert ("beta_mean" in row) == (name != "mlc")
    heat = np.load(tmp_path / "corrected_vs_true.npy")
    assert heat.shape == (C, C) and heat.sum() == 8
    with Image.open(tmp_path / "corrected_vs_true.png") as image:
        assert image.format == "PNG" and image.width > 200


def test_meta_label_methods_reject_bad_params(tmp_path):
    ctx = MethodContext(num_classes=C, num_samples=4, noisy_labels=torch.zeros(4, dtype=torch.long), clean_labels=None,
                        epochs=1, base_lr=0.1, build_model=lambda: TinyCNN(C), build_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                        out_dir=tmp_path, is_main_process=True)
    with pytest.raises(ValueError, match="method.params.rho"):
        build_method("ebomlc", {"rho": 0.0}, ctx)
    with pytest.raises(ValueError, match="method.params.w1_grad"):
        build_method("mlc_d", {"w1_grad": "exact"}, ctx)
    with pytest.raises(ValueError, match="method.params.xi"):
        build_method("mlc", {"xi": 0.5}, ctx)  # MLC has no barrier


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
