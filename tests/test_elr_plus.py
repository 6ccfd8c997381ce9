"""ELR+ (training/methods/elr_plus.py): the ramps, the weight averaging, one step of both networks
against the formulas written out here, and a short end-to-end run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from support.methods import make_method, make_run
from test_training import _args
from pipeline.load.batch import Batch
from training.methods.elr_plus import EMA, TARGETS, average_weights, sigmoid_rampup
from training.run import main


def test_sigmoid_rampup_runs_from_exp_minus_5_to_1():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == sigmoid_rampup(500, 100) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0  # no ramp


def test_average_weights_moves_only_the_parameters():
    ema, model = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        ema.weight.fill_(1.0)
        model.weight.fill_(3.0)
        model.running_mean.fill_(5.0)
    average_weights(ema, model, 0.75)
    torch.testing.assert_close(ema.weight, torch.full((2,), 1.5))  # 0.75 * 1 + 0.25 * 3
    torch.testing.assert_close(ema.running_mean, torch.zeros(2))  # buffers are the copy's own


def _clamped(logits):
    return F.softmax(logits, dim=1).clamp(1e-4, 1 - 1e-4)


def test_step_trains_each_network_on_mixup_with_targets_from_the_peers_average():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 0, 1])
    method = make_method("elr_plus", labels, base_lr=1.0, lam=3.0, beta=0.7, ema_step=10)
    run = make_run(method)
    nets = {n: nn.Linear(2, 3) for n in run.models}  # the reference copies
    for n, ref in nets.items():
        ref.load_state_dict(run.models[n].state_dict())
    x = torch.randn(5, 2)
    np.random.seed(7)
    torch.manual_seed(7)
    out = method.train_step(Batch(images=x, idx=torch.arange(5)), labels, run)

    np.random.seed(7)
    torch.manual_seed(7)
    y = F.one_hot(labels, 3).float()
    for n, peer in (("model", "peer"), ("peer", "model")):
        with torch.no_grad():
            p = _clamped(nets[EMA[peer]](x))
            target = 0.3 * p / p.sum(dim=1, keepdim=True)  # beta * 0 + (1 - beta) * normalised
        np.testing.assert_allclose(run.store[TARGETS[n]], target.numpy(), rtol=1e-5)
        lam = float(np.random.beta(1.0, 1.0))
        lam = max(lam, 1 - lam)
        perm = torch.randperm(5)
        mx, my, mt = (lam * v + (1 - lam) * v[perm] for v in (x, y, target))
        logits = nets[n](mx)
        loss = -(my * F.log_softmax(logits, dim=1)).sum(1).mean() \
            + 3.0 * torch.log(1 - (mt * _clamped(logits)).sum(1)).mean()
        loss.backward()
        with torch.no_grad():
            for r in nets[n].parameters():
                r -= r.grad  # SGD, lr 1
            decay = math.exp(-5 * (1 - 2 / 10) ** 2) * 0.997  # step 1: the ramp at s + 1 = 2
            for e, r in zip(nets[EMA[n]].parameters(), nets[n].parameters()):
                e.mul_(decay).add_(r, alpha=1 - decay)
        for name in (n, EMA[n]):
            for got, want in zip(run.models[name].parameters(), nets[name].parameters()):
                torch.testing.assert_close(got.detach(), want.detach())
        if n == "model":
            assert out.terms["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    torch.testing.assert_close(out.logits, nets["model"](x).detach())  # the metrics: network 1, un-mixed
    assert method.state_dict() == {"step_count": 1}


def test_ema_copies_have_no_optimiser_and_start_as_their_networks():
    method = make_method("elr_plus", [0, 1, 2])
    models = method.build_models()
    assert set(method.build_optimizers(models)) == {"model", "peer"}
    for n in ("model", "peer"):
        for a, b in zip(models[n].parameters(), models[EMA[n]].parameters()):
            torch.testing.assert_close(a, b)
    assert not torch.equal(models["model"].weight, models["peer"].weight)


def test_elr_plus_trains_end_to_end_and_resumes(tiny_dataset, tmp_path):
    args = _args(tiny_dataset, tmp_path, "epochs=2", "method.name=elr_plus", "method.params.ema_step=20")
    assert main(args) == 0
    row = json.loads((tmp_path / "r" / "results.json").read_text())["history"][-1]
    assert np.isfinite(row["train_loss"]) and 0 <= row["test_acc"] <= 1
    assert {"corrected", "broken", "ema_decay"} <= set(row)
    assert main([*_args(tiny_dataset, tmp_path, "epochs=3", "method.name=elr_plus", "method.params.ema_step=20"),
                 "--resume"]) == 0
    history = json.loads((tmp_path / "r" / "results.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[2]["ema_decay"] > row["ema_decay"]


@pytest.mark.slow
def test_elr_plus_in_two_processes_fills_both_target_histories(tiny_dataset, tmp_path):
    """Two CPU processes (DDP over gloo): the averaged copies are wrapped but never backpropagated, and
    each process's target updates reach the shared store: after an epoch every sample has both targets."""
    from state.reader import StateReader
    from support.launch import launch_cpu
    from test_training import ROOT

    args = _args(tiny_dataset, tmp_path, "cpu=true", "method.name=elr_plus", "method.params.ema_step=10")
    proc = launch_cpu(2, ROOT / "training/run.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["hardware"]["num_processes"] == 2 and np.isfinite(results["history"][-1]["train_loss"])
    arrays = StateReader(tmp_path / "r").arrays()
    for name in TARGETS.values():
        assert (arrays[name].sum(axis=1) > 0).all(), name  # every row updated at least once
