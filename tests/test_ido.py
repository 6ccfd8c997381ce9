"""Tests of IDO (training/methods/ido.py) and its Beta mixture (training/methods/common/beta_mixture.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import betainc
from torch import nn

from support.launch import launch_cpu, worker_env
from support.methods import make_method, make_run

from pipeline.load.batch import Batch
from training.methods.base import Run
from training.methods.common.beta_mixture import EDGE, BetaMixture, normalise_counts, scale_counts
from training.methods.ido import (
    COUNTS_PLOT_DIR, CUR_PRED, MIXTURE_FILE, PREV_PRED, WRONG_EVENT, IDO, LabelWave, ido_loss, prediction_changes,
)
from training.plots import save_figure

ROOT = Path(__file__).resolve().parents[1]


def make_ido(*, n=12, k=3, epochs=3, clean=None, labels=None, **params) -> IDO:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, k, (n,), generator=g) if labels is None else labels
    return make_method("ido", labels, num_classes=k, clean=clean, epochs=epochs, base_lr=1e-3, **params)


def ido_run(method: IDO, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, epoch: int = 0) -> Run:
    """A Run of `model` (SGD lr 0.1 unless `optimizer`) with the method's own store."""
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    return make_run(method, models={"model": model}, optimizers={"model": optimizer}, epoch=epoch)


# ----------------------------------------------------------------------------------------------
# The Beta mixture


def _sample_mixture(rng, params, n):
    """params: per class (a0, b0, a1, b1, clean weight) -> x (C n,), class (C n,), true clean flag."""
    xs, ys, clean = [], [], []
    for c, (a0, b0, a1, b1, w) in enumerate(params):
        is_clean = rng.random(n) < w
        xs.append(np.where(is_clean, rng.beta(a0, b0, n), rng.beta(a1, b1, n)))
        ys.append(np.full(n, c))
        clean.append(is_clean)
    return np.clip(np.concatenate(xs), EDGE, 1 - EDGE), np.concatenate(ys), np.concatenate(clean)


def test_beta_mixture_em_recovers_synthetic_parameters_per_class():
    rng = np.random.default_rng(0)
    truth = [(2.0, 8.0, 7.0, 2.0, 0.6), (1.5, 10.0, 9.0, 1.5, 0.8)]
    x, y, clean = _sample_mixture(rng, truth, 20000)
    mixture = BetaMixture.initial(2).fit(x, y, 100)
    for c, (a0, b0, a1, b1, w) in enumerate(truth):
        np.testing.assert_allclose(mixture.a[c], [a0, a1], rtol=0.12, err_msg=f"class {c} alpha")
        np.testing.assert_allclose(mixture.b[c], [b0, b1], rtol=0.12, err_msg=f"class {c} beta")
        np.testing.assert_allclose(mixture.pi[c], [w, 1 - w], atol=0.03, err_msg=f"class {c} weights")
    post = mixture.posteriors(x, y)
    assert ((post.p > 0.5) == clean).mean() > 0.93  # the posterior separates the components


def test_beta_mixture_first_fit_of_20_iterations_on_separated_components():
    rng = np.random.default_rng(1)
    x, y, _ = _sample_mixture(rng, [(1.5, 10.0, 9.0, 1.5, 0.8)], 20000)
    mixture = BetaMixture.initial(1).fit(x, y, 20)
    np.testing.assert_allclose([mixture.a[0, 0], mixture.b[0, 0], mixture.a[0, 1], mixture.b[0, 1]],
                               [1.5, 10.0, 9.0, 1.5], rtol=0.1)
    refit = BetaMixture.from_dict(mixture.to_dict()).fit(x, y, 1)  # warm start stays put
    np.testing.assert_allclose(refit.a, mixture.a, rtol=0.02)
    assert refit.iterations == 21


def test_beta_mixture_shape_guards_and_degenerate_class():
    x = np.full(50, 0.5)  # all counts equal in a class: variance 0
    mixture = BetaMixture.initial(1).fit(x, np.zeros(50, dtype=int), 3)
    assert np.isfinite(mixture.a).all() and np.isfinite(mixture.b).all()
    assert mixture.b[0, 0] >= 1.02 and mixture.a[0, 1] >= 1.02


def test_posteriors_follow_the_spec_formulas():
    mixture = BetaMixture(a=np.array([[1.5, 6.0]]), b=np.array([[6.0, 1.5]]), pi=np.array([[0.7, 0.3]]))
    x = np.array([0.05, 0.5, 0.95])
    post = mixture.posteriors(x, np.zeros(3, dtype=int))
    from scipy.stats import beta as beta_dist

    lik0 = np.maximum(0.7 * beta_dist.pdf(x, 1.5, 6.0), 1e-6)
    lik1 = np.maximum(0.3 * beta_dist.pdf(x, 6.0, 1.5), 1e-6)
    np.testing.assert_allclose(post.p, lik0 / (lik0 + lik1), rtol=1e-10)
    np.testing.assert_allclose(post.p + post.q, 1.0)
    np.testing.assert_allclose(post.f0, betainc(1.5, 6.0, x))
    np.testing.assert_allclose(post.eps, post.p * post.f0 + (1 - post.q) * (1 - betainc(6.0, 1.5, x)))
    assert post.p[0] > 0.9 > 0.1 > post.p[2]


def test_counts_above_the_fit_max_are_outside_both_components():
    mixture = BetaMixture(a=np.array([[1.5, 6.0]]), b=np.array([[6.0, 1.5]]), pi=np.array([[0.7, 0.3]]))
    x = scale_counts(np.array([0, 4, 5, 9]), np.zeros(4, dtype=int), np.array([0.0]), np.array([4.0]))
    assert x[1] < 1 < x[2]
    post = mixture.posteriors(x, np.zeros(4, dtype=int))
    np.testing.assert_array_equal(post.p[2:], 0.0)
    np.testing.assert_array_equal(post.q[2:], 0.0)
    np.testing.assert_array_equal(post.eps[2:], 0.0)
    assert post.p[0] > 0.9 and post.q[1] > 0.9


def test_normalise_counts_is_classwise_with_equal_counts_at_half():
    counts = np.array([0, 5, 10, 3, 3, 7, 100])
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    active = np.array([True] * 6 + [False])  # the last one is held out
    x = normalise_counts(counts, labels, 3, active=active)
    expected = np.array([0.0, 0.5, 1.0, 0.5, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(x, expected * (1 - 2e-6) + 1e-6)
    x_global = normalise_counts(counts[:3], np.array([0, 1, 2]), 3, classwise=False)
    np.testing.assert_allclose(x_global, np.array([0.0, 0.5, 1.0]) * (1 - 2e-6) + 1e-6)


# ----------------------------------------------------------------------------------------------
# The loss


@pytest.mark.parametrize("entropy", ["batch", "per_sample"])
def test_ido_loss_equals_a_hand_computed_value(entropy):
    u = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    v = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1])
    p, eps = torch.tensor([0.9, 0.2]), torch.tensor([0.1, 0.5])

    def softmax(z):
        e = [math.exp(t) for t in z]
        return [t / sum(e) for t in e]

    weighted, confidences, weighted_entropies, per_sample = 0.0, [], [], 0.0
    for i in range(2):
        ui, vi, y = u[i].tolist(), v[i].tolist(), int(labels[i])
        ce = -math.log(softmax(ui)[y]) - math.log(softmax(vi)[y])
        mse = sum((a - b) ** 2 for a, b in zip(ui, vi)) / 3
        mean_p = [min(max((a + b) / 2, 1e-4), 1 - 1e-4) for a, b in zip(softmax(ui), softmax(vi))]
        c, h = max(mean_p), -sum(t * math.log(t) for t in mean_p)
        weighted += (float(p[i]) * ce + float(eps[i]) * mse) / 2
        confidences.append(c)
        weighted_entropies.append((1 - float(p[i])) * h)
        per_sample += (1 - float(p[i])) * c * h / 2
    ent = sum(confidences) / 2 * sum(weighted_entropies) / 2 if entropy == "batch" else per_sample
    out = ido_loss(u, v, labels, p, eps, entropy)
    assert out["loss"].item() == pytest.approx(weighted + ent, rel=1e-6)
    assert out["entropy"].item() == pytest.approx(ent, rel=1e-6)
    assert (out["ce"] + out["consistency"] + out["entropy"]).item() == pytest.approx(weighted + ent, rel=1e-6)


def test_entropy_batch_couples_the_samples_and_per_sample_does_not():
    """p = 1 for sample 0 removes its own entropy weight; only the batch form (mean c times mean
    (1 - p) H, the authors' broadcast) still lets its confidence scale the others' terms."""
    u = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    v = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 0])
    p = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    u2 = u.clone()
    u2[0] = torch.tensor([9.0, -9.0, 0.0, 0.0])  # sample 0 becomes confident
    v2 = v.clone()
    v2[0] = u2[0]
    zero = torch.zeros(5)
    per = [ido_loss(a, b, labels, p, zero, "per_sample")["entropy"].item() for a, b in ((u, v), (u2, v2))]
    batch = [ido_loss(a, b, labels, p, zero, "batch")["entropy"].item() for a, b in ((u, v), (u2, v2))]
    assert per[0] == pytest.approx(per[1])
    assert batch[1] > batch[0] * 1.05
    assert batch[0] != pytest.approx(per[0], rel=1e-3)


# ----------------------------------------------------------------------------------------------
# Label wave


def test_prediction_changes_counts_only_samples_seen_twice():
    prev = np.array([-1, 0, 1, 2, 2])
    cur = np.array([1, 0, 2, 2, -1])
    assert prediction_changes(prev, cur) == 1


def test_label_wave_turns_at_the_first_non_decrease():
    wave = LabelWave()
    assert [wave.observe(e, pc) for e, pc in [(1, 9), (2, 5), (3, 5), (4, 1)]] == [False, False, True, False]
    assert wave.base_epoch == 2


def test_label_wave_picks_the_right_epoch_and_keeps_a_real_copy():
    n = 10
    method = make_ido(n=n, epochs=8, stage1_epochs=6)
    model = nn.Linear(1, 1)
    run = ido_run(method, model)
    # predictions per epoch; PC from epoch 1: 6, 4, 2, 3 (stops decreasing at epoch 4 -> base = epoch 3), 0
    preds = [np.zeros(n, dtype=np.int32)]
    for changes in (6, 4, 2, 3, 0):
        nxt = preds[-1].copy()
        nxt[:changes] = (nxt[:changes] + 1) % 3
        preds.append(nxt)
    idx = torch.arange(n)
    pcs, bases = [], []
    for epoch, pred in enumerate(preds):
        with torch.no_grad():
            model.weight.fill_(float(epoch))  # the weights "at the end of epoch" carry its number
        run.store.set(CUR_PRED, idx, torch.from_numpy(pred))
        run.epoch = epoch
        row = method.on_epoch_end(run).metrics
        np.testing.assert_array_equal(run.store[PREV_PRED], pred)  # prev := cur for the next epoch
        pcs.append(row.get("prediction_changes"))
        bases.append(row.get("base_epoch"))
    assert pcs == [None, 6, 4, 2, 3, 0]
    assert method.wave.base_epoch == 3 and bases[-1] == 4  # 1-based in the metrics
    assert method.base_weights["weight"].item() == 3.0
    with torch.no_grad():
        model.weight.fill_(42.0)
    assert method.base_weights["weight"].item() == 3.0  # a copy, not the live tensor
    assert method.mixture is not None  # the first fit ran at the end of stage 1 (epoch index 5)


def test_stage2_starts_from_the_base_weights_with_a_fresh_optimiser():
    method = make_ido(n=4, k=2, epochs=3, stage1_epochs=1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    model(torch.ones(1, 3, 1, 1)).sum().backward()
    optimizer.step()  # leaves momentum buffers
    assert optimizer.state
    method.base_weights = {k: torch.full_like(v, 0.25) for k, v in model.state_dict().items()}
    run = ido_run(method, model, optimizer)
    run.store.set(CUR_PRED, torch.arange(4), torch.zeros(4, dtype=torch.int32))
    method.on_epoch_end(run)  # first fit
    images = torch.rand(4, 3, 1, 1)
    batch = Batch(images=images, idx=torch.arange(4), views={"weak": images, "strong": images + 1})
    state_sizes = []
    real_step = optimizer.step
    optimizer.step = lambda: (state_sizes.append(len(optimizer.state)), real_step())
    run.epoch = 1
    method.on_epoch_start(run)
    method.train_step(batch, method.ctx.noisy_labels, run)
    assert all(torch.all(v == 0.25) for v in model.state_dict().values())  # lr 0: still the base weights
    assert state_sizes == [0]  # the momentum buffers were cleared before the first stage-2 step
    assert method.stage2_started


def test_stage2_begins_at_the_first_epoch_start_after_a_resume_past_stage1():
    """A resume with stage1_epochs lowered below the epochs done: stage 2 begins at the next epoch's
    start, fitting the mixture it never got, and the epoch's report carries that fit and the refit."""
    method = make_ido(n=4, k=2, epochs=4, stage1_epochs=1)
    run = ido_run(method, nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), epoch=2)
    run.store.set(CUR_PRED, torch.arange(4), torch.zeros(4, dtype=torch.int32))
    method.on_epoch_start(run)
    assert method.stage2_started and [r["epoch"] for r in method.mixture_history] == [1]
    report = method.on_epoch_end(run)
    assert [json.loads(line)["epoch"] for line in report.texts[MIXTURE_FILE].splitlines()] == [1, 3]


def test_stage2_without_views_names_the_trainer_fix():
    method = make_ido(n=4, k=2, epochs=2, stage1_epochs=1)
    run = ido_run(method, nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))
    run.store.set(CUR_PRED, torch.arange(4), torch.zeros(4, dtype=torch.int32))
    method.on_epoch_end(run)
    run.epoch = 1
    method.on_epoch_start(run)
    batch = Batch(images=torch.rand(4, 3, 1, 1), idx=torch.arange(4))
    with pytest.raises(RuntimeError, match="views=method.needs.views"):
        method.train_step(batch, method.ctx.noisy_labels, run)


def test_config_rejects_a_run_without_stage_2():
    with pytest.raises(ValueError, match="stage1_epochs"):
        make_ido(epochs=3, stage1_epochs=3)


# ----------------------------------------------------------------------------------------------
# Wrong events on a tiny deterministic run


def test_wrong_event_counts_equal_an_independent_count(tmp_path):
    n, k, batch_size = 12, 3, 4
    clean = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(5))
    method = make_ido(n=n, k=k, epochs=4, clean=clean, stage1_epochs=2)
    labels_all = method.ctx.noisy_labels
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, k))
    run = ido_run(method, model, torch.optim.SGD(model.parameters(), lr=0.5))
    g = torch.Generator().manual_seed(1)
    expected = np.zeros(n, dtype=np.int64)
    figures = {}
    for epoch in range(4):
        run.epoch = epoch
        method.on_epoch_start(run)
        order = torch.randperm(n, generator=g)
        for lo in range(0, n, batch_size):
            idx = order[lo:lo + batch_size]
            weak, strong = torch.randn(len(idx), 3, 4, 4, generator=g), torch.randn(len(idx), 3, 4, 4, generator=g)
            labels = labels_all[idx]
            with torch.no_grad():  # the independent count, on the weights before this step
                wrong = (model(weak).argmax(1) != labels).long()
                if epoch >= 2:
                    wrong += (model(strong).argmax(1) != labels).long()
            expected[idx.numpy()] += wrong.numpy()
            batch = Batch(images=weak, idx=idx, views={"weak": weak, "strong": strong})
            out = method.train_step(batch, labels, run)
            assert out.logits.shape == (len(idx), k) and torch.isfinite(out.terms["loss"])
        report = method.on_epoch_end(run)
        assert (MIXTURE_FILE in report.texts) == (epoch >= 1)  # a fit from the end of stage 1 on
        figures.update(report.figures)
    row = report.metrics
    np.testing.assert_array_equal(run.store[WRONG_EVENT], expected)
    assert run.store[WRONG_EVENT].dtype == np.int32
    assert expected.max() > 0 and "we_auroc" in row and "p_auroc" in row and 0 <= row["we_auroc"] <= 1
    lines = report.texts[MIXTURE_FILE].splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [2, 3, 4]  # first fit after stage 1, then refits
    first = json.loads(lines[0])
    assert first["iterations"] == 20 and np.asarray(first["params"]).shape == (k, 2, 3)
    assert sorted(figures) == [f"{COUNTS_PLOT_DIR}/epoch-{e:04d}.png" for e in range(1, 5)]
    last = tmp_path / "last.png"
    save_figure(figures[f"{COUNTS_PLOT_DIR}/epoch-0004.png"], last)
    with Image.open(last) as image:
        assert image.format == "PNG" and image.width > 200


@pytest.mark.slow
def test_two_processes_give_the_counts_of_one_process(tmp_path):
    """tests/support/ido_counts_worker.py: the same global batches split over 2 DDP processes (a linear model,
    so the split changes no statistics) must count, fit and weight exactly as one process does."""
    worker = ROOT / "tests" / "support" / "ido_counts_worker.py"
    single = subprocess.run([sys.executable, str(worker), str(tmp_path)], capture_output=True, text=True,
                            env=worker_env(), timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    double = launch_cpu(2, worker, str(tmp_path))
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = np.load(tmp_path / "ido-1.npz"), np.load(tmp_path / "ido-2.npz")
    assert one["counts"].sum() > 0 and one["base_epoch"] >= 1  # the label wave turned inside stage 1
    for key in ("counts", "base_epoch"):
        np.testing.assert_array_equal(two[key], one[key], err_msg=key)
    for key in ("p", "eps", "mixture"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_state_dict_round_trip_restores_the_mixture_and_base():
    method = make_ido(n=6, k=2, epochs=3, stage1_epochs=1)
    run = ido_run(method, nn.Linear(1, 2))
    run.store.set(CUR_PRED, torch.arange(6), torch.zeros(6, dtype=torch.int32))
    method.on_epoch_end(run)
    method.base_weights = {"w": torch.ones(2)}
    other = make_ido(n=6, k=2, epochs=3, stage1_epochs=1)
    other.load_state_dict(method.state_dict())
    np.testing.assert_array_equal(other.mixture.a, method.mixture.a)
    assert torch.equal(other.base_weights["w"], torch.ones(2)) and other.mixture_history == method.mixture_history


# ----------------------------------------------------------------------------------------------
# End to end through training/run.py


def _run_args(dataset: Path, out: Path) -> list[str]:
    return [
        "--config", str(ROOT / "training/configs/demo_cpu.yaml"),
        f"data.root={dataset.parent}", f"data.name={dataset.name}", f"out_dir={out}", "run_name=r",
        "data.batch_size=32", "data.eval_batch_size=64", "epochs=2", "optim.schedule=constant",
        "method.name=ido", "method.params.stage1_epochs=1",
    ]


def _check_run(out: Path) -> None:
    run = out / "r"
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == "ido" and results["epochs"] == 2
    first, second = results["history"]
    assert "we_auroc" in first and "p_auroc" in first and "ido_p_mean" in second
    assert len((run / "method" / "ido_mixture.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_ido_run_end_to_end(tiny_dataset, tmp_path):
    from training.run import main

    assert main(_run_args(tiny_dataset, tmp_path)) == 0
    _check_run(tmp_path)


def _stage2_loss(view_forward: str) -> float:
    method = make_ido(n=4, k=2, epochs=2, stage1_epochs=1, view_forward=view_forward)
    torch.manual_seed(0)
    run = ido_run(method, nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))  # no BatchNorm: both ways give the same logits
    run.store.set(CUR_PRED, torch.arange(4), torch.zeros(4, dtype=torch.int32))
    method.on_epoch_end(run)
    run.epoch = 1
    method.on_epoch_start(run)
    g = torch.Generator().manual_seed(1)
    weak, strong = torch.rand(4, 3, 1, 1, generator=g), torch.rand(4, 3, 1, 1, generator=g)
    batch = Batch(images=weak, idx=torch.arange(4), views={"weak": weak, "strong": strong})
    return method.train_step(batch, method.ctx.noisy_labels, run).terms["loss"].item()


def test_view_forward_concat_and_separate_agree_without_batchnorm():
    assert _stage2_loss("concat") == pytest.approx(_stage2_loss("separate"), rel=1e-6)


def test_stage2_cosine_lr_decays_per_epoch_to_the_minimum():
    method = make_ido(epochs=6, stage1_epochs=2, stage2_schedule="cosine", stage2_min_lr=1e-4)
    base = method.ctx.base_lr
    assert method.lr_factor(1.5, 0.7) == 0.7  # stage 1 follows the configured schedule
    lrs = [base * method.lr_factor(epoch + 0.5, 1.0) for epoch in range(2, 6)]
    assert lrs[0] == pytest.approx(base)
    assert lrs[2] == pytest.approx(1e-4 + (base - 1e-4) * 0.5)  # half-way through stage 2
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] > 1e-4


class Probe(nn.Module):
    """A backbone + head `fc`, like the registry's models."""

    def __init__(self, k: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3, 3))
        self.fc = nn.Linear(3, k)

    def forward(self, x):
        return self.fc(self.body(x))


def test_stage2_weights_come_from_the_live_counts_after_adding_the_batch():
    """Between refits p and eps follow the counts: the batch's wrong events are added first, and a
    sample pushed above its class's max of the last fit loses its CE weight in the same step."""
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    method = make_ido(n=8, k=2, epochs=3, labels=labels, stage1_epochs=1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():  # always predicts class 0: the label-1 samples are wrong in both views
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([5.0, 0.0]))
    run = ido_run(method, model, torch.optim.SGD(model.parameters(), lr=0.0))
    store, idx = run.store, torch.arange(8)
    store.add(WRONG_EVENT, idx, torch.tensor([0, 1, 2, 6, 0, 1, 2, 6], dtype=torch.int32))
    store.set(CUR_PRED, idx, torch.zeros(8, dtype=torch.int32))
    method.on_epoch_end(run)  # first fit, ranges per class = [0, 6]
    fitted_p = method._p.clone()
    run.epoch = 1
    method.on_epoch_start(run)
    batch_idx = torch.tensor([3, 7])  # both at their class max; 7 gets +2, 3 is right (+0)
    images = torch.rand(2, 3, 1, 1)
    batch = Batch(images=images, idx=batch_idx, views={"weak": images, "strong": images})
    seen = {}
    real = method.live_posteriors
    method.live_posteriors = lambda s, i: seen.setdefault("pe", real(s, i))
    method.train_step(batch, labels[batch_idx], run)
    p, eps = seen["pe"]
    np.testing.assert_array_equal(store[WRONG_EVENT][[3, 7]], [6, 8])
    assert p[1].item() == 0.0 and eps[1].item() == 0.0 and fitted_p[7].item() > 0  # above the max: no CE weight
    assert p[0].item() == pytest.approx(fitted_p[3].item(), rel=1e-6)  # unchanged count, unchanged p
    store.add(WRONG_EVENT, torch.tensor([1]), torch.tensor([4], dtype=torch.int32))  # 1 -> 5 of 6, no refit
    assert real(store, torch.tensor([1]))[0].item() < fitted_p[1].item() - 0.05


def test_frozen_stage1_updates_only_the_head():
    method = make_ido(n=4, k=2, epochs=2, stage1_epochs=1, stage1_frozen=True)
    torch.manual_seed(0)
    model = Probe(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = ido_run(method, model, torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1))
    batch = Batch(images=torch.rand(4, 3, 1, 1), idx=torch.arange(4))
    method.train_step(batch, method.ctx.noisy_labels, run)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("body."))
    assert not torch.equal(after["fc.weight"], before["fc.weight"])


def test_batch_entropy_over_processes_equals_the_joint_batch():
    """Two half batches, each with the global means of c and (1 - p) H, averaged as DDP does: the same
    loss and the same gradient as one process with the whole batch (a product of means is not a mean)."""
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(8, 3, generator=g, requires_grad=True), torch.randn(8, 3, generator=g, requires_grad=True)
    labels, p, eps = torch.randint(0, 3, (8,), generator=g), torch.rand(8, generator=g), torch.rand(8, generator=g)
    full = ido_loss(u, v, labels, p, eps, "batch")["loss"]
    full_grads = torch.autograd.grad(full, (u, v))

    probs = ((u.softmax(1) + v.softmax(1)) / 2).clamp(1e-4, 1 - 1e-4).detach()
    global_values = iter([probs.max(1).values.mean(), ((1 - p) * -(probs * probs.log()).sum(1)).mean()] * 2)
    halves = [ido_loss(u[s], v[s], labels[s], p[s], eps[s], "batch", global_mean=lambda x: next(global_values))["loss"]
              for s in (slice(0, 4), slice(4, 8))]
    averaged = sum(halves) / 2
    torch.testing.assert_close(averaged, full)
    for got, want in zip(torch.autograd.grad(averaged, (u, v)), full_grads):
        torch.testing.assert_close(got, want)
    local_only = sum(ido_loss(u[s], v[s], labels[s], p[s], eps[s], "batch")["loss"] for s in (slice(0, 4), slice(4, 8)))
    assert not torch.allclose(local_only / 2, full)  # without the global means the split changes the loss
