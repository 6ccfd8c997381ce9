"""SOP and MW-Net: SOP's losses and its u/v SGD step through the sample store against hand-computed
values, MW-Net's meta gradient against finite differences of a real SGD step, and 1-epoch end-to-end
runs of both."""

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from state.reader import StateReader
from support.methods import make_method, make_run
from training.config import ConfigError
from training.methods.mwnet import WeightNet, mwnet_meta_gradient
from training.methods.sop import sop_losses
from training.run import main

ROOT = Path(__file__).resolve().parents[1]
MASK = "clean-subset-20-s0"

# ------------------------------------------------------------------ SOP

# Two samples, K = 2.
#  row 0: label 0, logits (0, 0) -> p = (.5, .5); u = .5 -> U = (.25, 0); v = (.3, .4) -> V = (0, .16)
#         q ~ (.75, .34) / 1.09, ce_0 = log(1.09 / .75); argmax ties to class 0 -> hard = (1, 0),
#         residual hard + U - V - y = (.25, -.16), mse_0 = .0881
#         d ce_0 / du = 2u (1/1.09 - 1/.75);  d mse_0 / dv_1 = 2 (-.16)(-2 * .4) = .256, d mse_0 / dv_0 = 0
#  row 1: label 1, logits (log 3, 0) -> p = (.75, .25); u = 0 -> U = 0 (and d/du = 0); v = (.5, .1) -> V = (.25, 0)
#         q ~ (.5, .25) / .75, ce_1 = log 3; hard = (1, 0), residual (.75, -1), mse_1 = 1.5625
#         d mse_1 / dv_0 = 2 (.75)(-2 * .5) = -1.5, d mse_1 / dv_1 = 0
# Batch means halve every per-row gradient.
LOGITS = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
LABELS = torch.tensor([0, 1])
U0 = torch.tensor([0.5, 0.0], dtype=torch.float64)
V0 = torch.tensor([[0.3, 0.4], [0.5, 0.1]], dtype=torch.float64)
GRAD_U = torch.tensor([(1 / 1.09 - 1 / 0.75) / 2, 0.0], dtype=torch.float64)
GRAD_V = torch.tensor([[0.0, 0.256 / 2], [-1.5 / 2, 0.0]], dtype=torch.float64)


def _onehot(labels: torch.Tensor, k: int = 2) -> torch.Tensor:
    return nn.functional.one_hot(labels, k).to(torch.float64)


def test_sop_losses_match_hand_computed_values():
    ce, mse, _ = sop_losses(LOGITS, _onehot(LABELS), U0, V0)
    assert ce.item() == pytest.approx((math.log(1.09 / 0.75) + math.log(3.0)) / 2)
    assert mse.item() == pytest.approx((0.0881 + 1.5625) / 2)


def test_sop_ce_trains_network_and_u_and_mse_trains_v_only():
    logits, u, v = LOGITS.clone().requires_grad_(True), U0.clone().requires_grad_(True), V0.clone().requires_grad_(True)
    ce, mse, _ = sop_losses(logits, _onehot(LABELS), u, v)
    d_ce = torch.autograd.grad(ce, (logits, u, v), retain_graph=True, allow_unused=True)
    d_mse = torch.autograd.grad(mse, (logits, u, v), allow_unused=True)
    assert d_ce[0].abs().sum() > 0 and d_ce[2] is None  # v is stop-gradient in ce
    torch.testing.assert_close(d_ce[1], GRAD_U)
    assert d_mse[0] is None and d_mse[1] is None  # the one-hot prediction and U are stop-gradient in mse
    torch.testing.assert_close(d_mse[2], GRAD_V)


def test_sop_u_stops_moving_once_its_square_reaches_one():
    u = torch.tensor([2.0, 0.5], dtype=torch.float64, requires_grad=True)  # u^2 = 4 is clamped to 1
    ce, _, _ = sop_losses(LOGITS, _onehot(LABELS), u, V0)
    (grad,) = torch.autograd.grad(ce, u)
    assert grad[0] == 0.0


def test_sop_step_updates_only_the_batch_rows_of_u_and_v_in_the_store():
    method = make_method("sop", [0] * 5, num_classes=2, lr_u=10.0, lr_v=3.0)
    run = make_run(method)
    assert run.store["u"].tolist() == pytest.approx([1e-8] * 5)  # initial value: init_scale
    idx = torch.tensor([3, 1])
    run.store.set("u", idx, U0.float())
    run.store.set("v", idx, V0.float())
    terms = method.loss(LOGITS.float(), LABELS, SimpleNamespace(idx=idx), run)
    assert terms["loss"].requires_grad  # the trainer backpropagates it into the network
    u, v = run.store["u"], run.store["v"]
    expected_u = U0 - 10.0 * GRAD_U  # SGD: u <- u - lr_u d(ce)/du
    expected_v = V0 - 3.0 * GRAD_V
    np.testing.assert_allclose(u[[3, 1]], expected_u.numpy(), rtol=1e-5)
    np.testing.assert_allclose(v[[3, 1]], expected_v.numpy(), rtol=1e-5)
    assert u[3] > 0.5 and v[1, 0] > 0.5  # the label row's u grows; v grows where the net disagrees
    np.testing.assert_array_equal(u[[0, 2, 4]], np.float32(1e-8))  # rows outside the batch are untouched
    np.testing.assert_array_equal(v[[0, 2, 4]], np.float32(1e-8))


def test_sop_reports_how_u_squared_separates_wrong_labels():
    # rows 2, 3 wrong; row 4's clean label unknown
    method = make_method("sop", [0, 1, 1, 0, 1], clean=[0, 1, 0, 1, -1], num_classes=2, lr_u=1.0, lr_v=1.0)
    run = make_run(method)
    run.store.set("u", torch.arange(5), torch.tensor([0.1, 0.2, 0.9, 2.0, 5.0]))
    out = method.on_epoch_end(run).metrics
    assert out["sop_u2_right"] == pytest.approx((0.01 + 0.04) / 2, rel=1e-5)
    assert out["sop_u2_wrong"] == pytest.approx((0.81 + 1.0) / 2, rel=1e-5)  # u^2 capped at 1 as in the loss
    assert out["sop_u2_auroc"] == 1.0


# ------------------------------------------------------------------ MW-Net


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()


def test_mwnet_meta_gradient_matches_finite_differences():
    """d L_clean / d Theta through one SGD step on mean_i V(ce_i; Theta) ce_i, checked against a real
    torch.optim.SGD step (with weight decay) at perturbed weighting-MLP parameters."""
    net = _tiny_net()
    torch.manual_seed(1)
    vnet = WeightNet(hidden=5).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    xv, yv = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    lr, wd = 0.5, 0.01
    ce = nn.functional.cross_entropy(net(x), y, reduction="none")
    grads = mwnet_meta_gradient(net, vnet, ce, xv, yv, lr, wd)

    def clean_loss_after_step(theta: nn.Module) -> float:
        stepped = copy.deepcopy(net)
        opt = torch.optim.SGD(stepped.parameters(), lr=lr, weight_decay=wd)
        losses = nn.functional.cross_entropy(stepped(x), y, reduction="none")
        with torch.no_grad():
            weights = theta(losses)
        (weights * losses).mean().backward()
        opt.step()
        with torch.no_grad():
            return float(nn.functional.cross_entropy(stepped(xv), yv))

    def fd(name: str, i: int, h: float = 1e-6) -> float:
        shifted = []
        for sign in (1, -1):
            theta = copy.deepcopy(vnet)
            with torch.no_grad():
                theta.get_parameter(name).view(-1)[i] += sign * h
            shifted.append(clean_loss_after_step(theta))
        return (shifted[0] - shifted[1]) / (2 * h)

    checked = 0
    for (name, _), grad in zip(vnet.named_parameters(), grads):
        for i in range(min(grad.numel(), 3)):
            assert grad.view(-1)[i].item() == pytest.approx(fd(name, i), rel=1e-4, abs=1e-10)
            checked += 1
    assert checked == 10 and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in net.parameters())  # the meta step leaves the model's .grad alone


def test_weight_net_maps_losses_to_weights_in_the_open_unit_interval():
    vnet = WeightNet(hidden=100)
    assert sum(p.numel() for p in vnet.parameters()) == 100 + 100 + 100 + 1  # 1 -> 100 -> 1
    w = vnet(torch.tensor([0.0, 0.5, 3.0, 20.0]))
    assert w.shape == (4,) and ((w > 0) & (w < 1)).all()


def test_mwnet_refuses_several_processes_and_fp16_at_its_epoch_start():
    method = make_method("mwnet", [0, 1])
    with pytest.raises(ConfigError, match="one process only.*surrogate"):
        method.on_epoch_start(make_run(method, accelerator=SimpleNamespace(num_processes=2, mixed_precision="no")))
    with pytest.raises(ConfigError, match="bf16"):
        method.on_epoch_start(make_run(method, accelerator=SimpleNamespace(num_processes=1, mixed_precision="fp16")))


# ------------------------------------------------------------------ end to end


def _run(dataset: Path, out: Path, *extra: str) -> dict:
    args = ["--config", str(ROOT / "training/configs/demo_cpu.yaml"), f"data.root={dataset.parent}",
            f"data.name={dataset.name}", f"out_dir={out}", "run_name=r", "data.batch_size=32",
            "data.eval_batch_size=64", "epochs=1", *extra]
    assert main(args) == 0
    return json.loads((out / "r" / "results.json").read_text())


def test_sop_one_epoch_end_to_end(tiny_dataset, tmp_path):
    row = _run(tiny_dataset, tmp_path, "method.name=sop")["history"][0]
    for key in ("sop_u2_right", "sop_u2_wrong", "sop_u2_auroc", "test_acc"):
        assert key in row, key
    state = StateReader(tmp_path / "r" / "state.zarr")
    u, v = state.array("u"), state.array("v")
    assert u.shape == (200,) and v.shape == (200, 10)
    assert (u != np.float32(1e-8)).all() and (v != np.float32(1e-8)).any()  # every sample was stepped once


def test_mwnet_one_epoch_end_to_end(tiny_dataset, tmp_path):
    row = _run(tiny_dataset, tmp_path, "method.name=mwnet", f"data.clean_subset={MASK}",
               "data.clean_batch_size=10")["history"][0]
    for key in ("weight_right", "weight_wrong", "weight_auroc", "test_acc"):
        assert key in row, key
    weight = StateReader(tmp_path / "r" / "state.zarr").array("weight")
    mask = np.load(tiny_dataset / "labels" / "train" / "masks" / f"{MASK}.npy")
    assert (weight[mask] == -1).all()  # the clean subset is never weighted
    assert ((weight[~mask] > 0) & (weight[~mask] < 1)).all()  # every noisy sample got a sigmoid weight
