"""Tests of the baseline methods GCE, SCE, ELR, Co-teaching and JoCoR
(training/methods/{gce,sce,elr,coteaching,jocor}.py):
each loss against hand-computed values on tiny tensors, then one short end-to-end run of each."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.load.batch import Batch
from support import methods
from support.methods import make_run
from test_training import _args
from training.methods import METHODS
from training.methods.coteaching import SELECTED, keep_ratio, small_loss_exchange
from training.methods.jocor import joint_loss
from training.methods.elr import TARGET, clamped_softmax, elr_regulariser
from training.methods.gce import gce_loss
from training.methods.sce import reverse_cross_entropy
from training.run import main


def make_method(name: str, labels, **params):
    """Method `name` on K = 3 classes, its models nn.Linear(2, 3) trained by SGD at lr 1."""
    return methods.make_method(name, labels, base_lr=1.0, **params)


LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
LABELS = torch.tensor([0, 2])


def softmax_rows(rows):
    """Softmax by hand (math.exp), so the tests do not check torch against itself."""
    out = []
    for row in rows:
        e = [math.exp(v) for v in row]
        out.append([v / sum(e) for v in e])
    return out


P = softmax_rows(LOGITS.tolist())
P_Y = [P[0][0], P[1][2]]


# ----------------------------------------------------------------------------------------------
# GCE


def test_gce_equals_one_minus_p_to_the_q_over_q():
    expected = sum((1 - p ** 0.7) / 0.7 for p in P_Y) / 2
    assert gce_loss(LOGITS, LABELS, 0.7).item() == pytest.approx(expected, rel=1e-6)
    method = make_method("gce", [0, 2])
    assert method.config.q == 0.7
    assert method.loss(LOGITS, LABELS, None, make_run(method))["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_gce_tends_to_ce_as_q_goes_to_zero_and_to_mae_at_q_one():
    ce = sum(-math.log(p) for p in P_Y) / 2
    assert gce_loss(LOGITS, LABELS, 1e-5).item() == pytest.approx(ce, rel=1e-4)
    assert abs(gce_loss(LOGITS, LABELS, 0.7).item() - ce) > 0.1  # far from CE at the paper's q
    assert gce_loss(LOGITS, LABELS, 1.0).item() == pytest.approx(sum(1 - p for p in P_Y) / 2, rel=1e-6)


def test_gce_is_finite_where_the_label_probability_underflows():
    logits = torch.tensor([[200.0, -200.0]], requires_grad=True)
    loss = gce_loss(logits, torch.tensor([1]), 0.7)
    loss.backward()
    assert loss.item() == pytest.approx(1 / 0.7) and torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------------------------
# SCE


def test_sce_reverse_cross_entropy_clamps_log_zero_to_a():
    # RCE = -sum_k p_k log q_k with log 0 := A = -4 and log 1 = 0
    expected = sum(-sum(p * (0.0 if k == y else -4.0) for k, p in enumerate(row))
                   for row, y in zip(P, LABELS.tolist())) / 2
    assert reverse_cross_entropy(LOGITS, LABELS, -4.0).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(sum(4 * (1 - p) for p in P_Y) / 2)


def test_sce_loss_is_alpha_ce_plus_beta_rce_with_per_dataset_weights():
    logits, labels = torch.zeros(1, 3), torch.tensor([1])  # p = 1/3 everywhere
    ce, rce = math.log(3), 4 * (2 / 3)
    cifar10 = make_method("sce", [1])
    assert (cifar10.config.alpha, cifar10.config.beta, cifar10.config.log_zero) == (0.1, 1.0, -4.0)
    out = cifar10.loss(logits, labels, None, make_run(cifar10))
    assert out["loss"].item() == pytest.approx(0.1 * ce + 1.0 * rce, rel=1e-6)
    assert out["rce"].item() == pytest.approx(rce, rel=1e-6)
    cifar100 = make_method("sce", [1], alpha=6.0, beta=0.1)
    out = cifar100.loss(logits, labels, None, make_run(cifar100))
    assert out["loss"].item() == pytest.approx(6.0 * ce + 0.1 * rce, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# ELR


def _clamped_normalised(rows):
    clamped = [[min(max(v, 1e-4), 1 - 1e-4) for v in row] for row in rows]
    return [[v / sum(row) for v in row] for row in clamped]


def test_elr_target_is_an_ema_of_the_clamped_normalised_prediction():
    method = make_method("elr", [0, 2, 1])
    beta, lam = method.config.beta, method.config.lam
    assert (beta, lam) == (0.7, 3.0)
    run = make_run(method)
    batch = Batch(images=torch.zeros(2, 1), idx=torch.tensor([2, 0]))
    first = torch.tensor([[30.0, 0.0, 0.0], [0.0, 1.0, 2.0]])  # row 0 saturates: the clamp matters
    method.loss(first, torch.tensor([1, 0]), batch, run)
    q1 = np.array(_clamped_normalised(softmax_rows(first.tolist())))
    np.testing.assert_allclose(run.store[TARGET][[2, 0]], (1 - beta) * q1, rtol=1e-5)
    np.testing.assert_array_equal(run.store[TARGET][1], 0)  # not in the batch: untouched

    out = method.loss(LOGITS, torch.tensor([1, 0]), batch, run)
    q2 = np.array(_clamped_normalised(P))
    target = beta * (1 - beta) * q1 + (1 - beta) * q2
    np.testing.assert_allclose(run.store[TARGET][[2, 0]], target, rtol=1e-5)
    p = np.clip(np.array(P), 1e-4, 1 - 1e-4)
    ce = (-math.log(P[0][1]) - math.log(P[1][0])) / 2
    reg = np.log(1 - (target * p).sum(axis=1)).mean()
    assert out["loss"].item() == pytest.approx(ce + lam * reg, rel=1e-5)


def test_elr_regulariser_gradient_pulls_the_prediction_towards_the_target():
    target = torch.tensor([[0.1, 0.1, 0.8]])
    logits = torch.tensor([[1.0, 0.5, 0.0]], requires_grad=True)  # the prediction favours class 0
    elr_regulariser(clamped_softmax(logits), target).backward()
    grad = logits.grad[0]
    assert grad[2] < 0 and grad[0] > 0  # descent raises the target's class, lowers the predicted one
    stepped = (logits - 0.5 * logits.grad).detach()
    before = (F.softmax(logits.detach(), 1) * target).sum()
    assert (F.softmax(stepped, 1) * target).sum() > before


def test_elr_reports_label_correction_through_its_soft_targets():
    method = make_method("elr", [0, 2, 1], clean=[0, 1, 1])  # idx 1 is wrong
    run = make_run(method)
    run.store.set(TARGET, torch.arange(3), torch.tensor([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]]))
    metrics = method.on_epoch_end(run).metrics
    assert metrics["corrected"] == 1.0  # idx 1: the target's argmax is its clean label
    assert metrics["broken"] == 1.0  # idx 0 and 2: right labels the targets' argmax contradicts
    assert metrics["soft_label_acc"] == pytest.approx(1 / 3)
    unknown = make_method("elr", [0, 2, 1])  # clean labels unknown: nothing to report
    assert unknown.on_epoch_end(make_run(unknown)).metrics == {}


# ----------------------------------------------------------------------------------------------
# Co-teaching


def test_coteaching_keep_ratio_ramps_down_to_one_minus_the_forget_rate():
    assert keep_ratio(0, 0.4, 10) == 1.0
    assert keep_ratio(5, 0.4, 10) == pytest.approx(0.8)
    assert keep_ratio(10, 0.4, 10) == pytest.approx(0.6)
    assert keep_ratio(50, 0.4, 10) == pytest.approx(0.6)


def test_coteaching_selects_the_lowest_loss_fraction_and_exchanges():
    loss = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])
    peer_loss = torch.tensor([0.1, 0.8, 0.2, 0.9, 0.3, 0.6])
    for_model, for_peer = small_loss_exchange(loss, peer_loss, 0.5)
    assert sorted(for_model.tolist()) == [0, 2, 4]  # the peer's three smallest losses
    assert sorted(for_peer.tolist()) == [1, 3, 5]  # the model's three smallest losses
    assert len(small_loss_exchange(loss, peer_loss, 1.0)[0]) == 6


def test_coteaching_forget_rate_is_required():
    with pytest.raises(ValueError, match="forget_rate"):
        METHODS["coteaching"].Config.model_validate({})


def test_coteaching_step_trains_each_network_on_the_samples_the_other_kept():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    method = make_method("coteaching", labels, forget_rate=0.5, ramp_epochs=2)
    run = make_run(method, epoch=2)
    models = run.models
    before = {name: [p.detach().clone() for p in m.parameters()] for name, m in models.items()}
    x = torch.randn(6, 2)
    ce = {name: F.cross_entropy(m(x), labels, reduction="none").detach() for name, m in models.items()}
    keep_model = torch.topk(ce["model"], 3, largest=False).indices  # keep = 1 - 0.5 at epoch 2
    keep_peer = torch.topk(ce["peer"], 3, largest=False).indices
    assert set(keep_model.tolist()) != set(keep_peer.tolist())  # otherwise the exchange is not tested

    out = method.train_step(Batch(images=x, idx=torch.arange(6)), labels, run)

    for name, trained_on in (("model", keep_peer), ("peer", keep_model)):
        ref = nn.Linear(2, 3)
        with torch.no_grad():
            for r, p in zip(ref.parameters(), before[name]):
                r.copy_(p)
        F.cross_entropy(ref(x[trained_on]), labels[trained_on]).backward()
        for p, p0, r in zip(models[name].parameters(), before[name], ref.parameters()):
            torch.testing.assert_close(p.detach(), p0 - r.grad)  # SGD lr 1: one step on the exchanged samples
    assert out.terms["loss"].item() == pytest.approx(ce["model"][keep_peer].mean().item(), rel=1e-5)
    expected = np.zeros(6)
    expected[keep_model.numpy()] += 1
    expected[keep_peer.numpy()] += 1
    np.testing.assert_array_equal(run.store[SELECTED], expected)


def test_coteaching_selection_auroc_scores_wrong_labels_kept_less():
    noisy, clean = [0, 1, 2, 0, 1, 2, 0], [0, 1, 2, 1, 2, 0, 0]  # idx 3, 4, 5 are wrong
    method = make_method("coteaching", noisy, clean=clean, forget_rate=0.3)
    run = make_run(method, epoch=3)
    run.store.set(SELECTED, torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([2.0, 2.0, 1.0, 0.0, 1.0, 0.0]))
    row = method.on_epoch_end(run).metrics
    assert row["keep_ratio"] == pytest.approx(1 - 0.3 * 0.3)
    # right labels {2, 2, 1} vs wrong {0, 1, 0}: 8 of 9 pairs ordered, 1 tie -> 8.5 / 9; idx 6 unseen
    assert row["selection_auroc"] == pytest.approx(8.5 / 9)
    unknown = make_method("coteaching", noisy, forget_rate=0.3)
    assert "selection_auroc" not in unknown.on_epoch_end(make_run(unknown)).metrics


# ----------------------------------------------------------------------------------------------
# JoCoR


def test_jocor_joint_loss_against_hand_computed_values():
    logits = torch.tensor([[math.log(3.0), 0.0, 0.0]])  # p = (0.6, 0.2, 0.2)
    peer = torch.zeros(1, 3)  # q = uniform
    labels = torch.tensor([1])
    p, q = np.array([0.6, 0.2, 0.2]), np.full(3, 1 / 3)
    kl = (p * np.log(p / q)).sum() + (q * np.log(q / p)).sum()
    ce = -math.log(0.2) - math.log(1 / 3)
    joint, sym_kl = joint_loss(logits, peer, labels, co_lambda=0.9)
    assert sym_kl.item() == pytest.approx(kl, rel=1e-5)
    assert joint.item() == pytest.approx(0.1 * ce + 0.9 * kl, rel=1e-5)
    assert joint_loss(peer, peer, labels, 0.9)[1].item() == pytest.approx(0.0, abs=1e-7)  # agreement costs nothing


def test_jocor_step_updates_both_networks_on_the_same_small_loss_samples():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    method = make_method("jocor", labels, forget_rate=0.5, ramp_epochs=2, co_lambda=0.7)
    run = make_run(method, epoch=2)
    models = run.models
    refs = {name: nn.Linear(2, 3) for name in models}
    for name, ref in refs.items():
        ref.load_state_dict(models[name].state_dict())
    x = torch.randn(6, 2)
    joint = joint_loss(refs["model"](x), refs["peer"](x), labels, 0.7)[0]
    kept = torch.topk(joint.detach(), 3, largest=False).indices  # keep = 1 - 0.5 at epoch 2
    joint[kept].mean().backward()

    out = method.train_step(Batch(images=x, idx=torch.arange(6)), labels, run)

    for name, ref in refs.items():
        for p, r in zip(models[name].parameters(), ref.parameters()):
            torch.testing.assert_close(p.detach(), r.detach() - r.grad)  # SGD lr 1 on the joint loss of the kept
        assert all(r.grad.abs().sum() > 0 for r in ref.parameters())  # the KL terms reach both networks
    assert out.terms["loss"].item() == pytest.approx(joint[kept].mean().item(), rel=1e-5)
    expected = np.zeros(6)
    expected[kept.numpy()] = 1
    np.testing.assert_array_equal(run.store[SELECTED], expected)


# ----------------------------------------------------------------------------------------------
# End to end


@pytest.mark.parametrize("name,params,keys", [
    ("gce", (), ()),
    ("sce", ("method.params.alpha=6.0", "method.params.beta=0.1"), ()),
    ("elr", ("method.params.lam=7", "method.params.beta=0.9"), ("corrected", "broken", "soft_label_acc")),
    ("coteaching", ("method.params.forget_rate=0.36", "method.params.ramp_epochs=1", "epochs=2"),
     ("keep_ratio", "selection_auroc")),
    ("jocor", ("method.params.forget_rate=0.36", "method.params.ramp_epochs=1", "epochs=2"),
     ("keep_ratio", "selection_auroc")),
])
def test_baseline_trains_end_to_end_on_the_tiny_dataset(tiny_dataset, tmp_path, name, params, keys):
    assert main(_args(tiny_dataset, tmp_path, "epochs=1", f"method.name={name}", *params)) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    row = results["history"][-1]
    assert results["method"] == name and np.isfinite(row["train_loss"]) and 0 <= row["test_acc"] <= 1
    for key in keys:
        assert key in row and np.isfinite(row[key])
    if name in ("coteaching", "jocor"):
        assert row["keep_ratio"] == pytest.approx(0.64)


@pytest.mark.slow
def test_coteaching_in_two_processes_selects_within_each_batch_and_syncs_every_sample(tiny_dataset, tmp_path):
    """Two CPU processes: each selects the small-loss part of its own batch (the authors' per-batch rule);
    the selection counts of every sample reach the shared store (no -1 left after an epoch)."""
    from state.reader import StateReader
    from support.launch import launch_cpu
    from test_training import ROOT

    args = _args(tiny_dataset, tmp_path, "cpu=true", "method.name=coteaching", "method.params.forget_rate=0.36",
                 "method.params.ramp_epochs=1")
    proc = launch_cpu(2, ROOT / "training/run.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    row = results["history"][-1]
    assert results["hardware"]["num_processes"] == 2 and 0 <= row["selection_auroc"] <= 1
    assert row["keep_ratio"] == pytest.approx(0.64)
    selected = StateReader(tmp_path / "r").arrays()[SELECTED]
    assert selected.min() >= 0 and selected.max() <= 2  # every sample seen, counted by both networks at most
    assert 0 < (selected == 2).mean() < 1  # some samples dropped by a network, most kept
