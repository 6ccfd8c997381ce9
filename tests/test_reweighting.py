"""Reweighting methods: the surrogate's maths on hand examples, L2RW's meta gradient against finite
differences, the weight diagnostics, and 1-epoch end-to-end runs of both methods."""

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from support.launch import launch_cpu
from training.config import ConfigError
from training.evaluation import auroc
from training.methods.l2rw import L2RW
from training.methods.common.reweighting import (
    alpha0_at, class_balanced_mean, class_mean_kernel, class_scores, clean_centres, l2rw_meta_gradient,
    l2rw_weights, label_signed, row_shift, surrogate_scores, surrogate_weights, weight_diagnostics,
)
from training.run import main

ROOT = Path(__file__).resolve().parents[1]
MASK = "clean-subset-20-s0"

# ------------------------------------------------------------------ the weight rule


def test_surrogate_weights_all_nonnegative_gives_ones():
    d = torch.tensor([0.0, 0.3, 2.0, 0.0])
    assert surrogate_weights(d).tolist() == [1.0, 1.0, 1.0, 1.0]


def test_surrogate_weights_nonpositive_gives_zero_and_positive_scales_by_smallest_negative():
    # smallest |d| among negatives = 0.5: w = min(1, 0.5 + 0.5 d / 0.5) = min(1, 0.5 + d) for d > 0
    d = torch.tensor([-2.0, -0.5, 0.0, 0.1, 0.25, 0.5, 3.0])
    torch.testing.assert_close(surrogate_weights(d), torch.tensor([0.0, 0.0, 0.0, 0.6, 0.75, 1.0, 1.0]))


def test_surrogate_weights_one_negative_sets_the_scale():
    d = torch.tensor([-4.0, 1.0, 2.0, 6.0])
    torch.testing.assert_close(surrogate_weights(d), torch.tensor([0.0, 0.625, 0.75, 1.0]))


# ------------------------------------------------------------------ centring, kernel, row shift, modulation


def _imbalanced():
    # class 0: three samples at (2, 0); class 1: one sample at (0, 2); class 2: two samples at (0, -2) and (0, -4)
    features = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, -2.0], [0.0, -4.0]])
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    return features, labels


def test_class_balanced_mean_weights_each_class_equally():
    features, labels = _imbalanced()
    mu = class_balanced_mean(features, labels, 3)
    # class means (2, 0), (0, 2), (0, -3) -> their mean (2/3, -1/3); the plain mean would be (1, -2/3)
    torch.testing.assert_close(mu, torch.tensor([2 / 3, -1 / 3]))
    assert not torch.allclose(mu, features.mean(dim=0))
    mu2, centred = clean_centres(features, labels, 3)
    torch.testing.assert_close(mu2, mu)
    torch.testing.assert_close(centred.mean(dim=0), torch.zeros(2))  # centred class means balance out


def test_class_scores_equal_the_literal_kernel_class_means():
    torch.manual_seed(0)
    clean = torch.randn(40, 8, dtype=torch.float64)
    clean_labels = torch.cat([torch.zeros(25), torch.ones(10), torch.full((5,), 2)]).long()  # imbalanced
    x = torch.randn(7, 8, dtype=torch.float64)
    literal = class_mean_kernel(x, clean, clean_labels, 3)  # (7, 3) through the (7, 40) kernel
    mu, centred = clean_centres(clean, clean_labels, 3)
    torch.testing.assert_close(class_scores(x, mu, centred), literal)
    # by hand for one entry: mean over class-1 clean j of <x_0 - mu, F_j - mu>
    by_hand = torch.stack([(x[0] - mu) @ (clean[j] - mu) for j in range(25, 35)]).mean()
    torch.testing.assert_close(literal[0, 1], by_hand)


def test_clean_centres_missing_class_names_the_fix():
    features, labels = _imbalanced()
    with pytest.raises(ValueError, match=r"no sample of class\(es\) \[3\].*--clean-subset"):
        clean_centres(features, labels, 4)


def test_row_shift_subtracts_the_second_largest_class_mean():
    scores = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 5.0], [-1.0, -3.0, -2.0]])
    torch.testing.assert_close(row_shift(scores), torch.tensor([[1.0, -1.0, 0.0], [-5.0, 0.0, 0.0],
                                                                [1.0, -1.0, 0.0]]))


def test_label_signed_modulation_by_hand():
    shifted = torch.tensor([[1.0, -1.0, 0.0], [-3.0, 0.0, 2.0]])
    labels = torch.tensor([0, 1])
    # alpha0 = 0: the label's own shifted score
    assert label_signed(shifted, labels, 0.0).tolist() == [1.0, 0.0]
    # alpha0 = 0.5: row 0: 1 - 0.5 * (-1 + 0) = 1.5; row 1: 0 - 0.5 * (-3 + 2) = 0.5
    assert label_signed(shifted, labels, 0.5).tolist() == [1.5, 0.5]


def test_surrogate_scores_keep_only_the_clean_argmax_when_alpha0_is_zero():
    features, labels = _imbalanced()
    mu, centred = clean_centres(features, labels, 3)
    x = torch.tensor([[3.0, 0.0], [3.0, 0.0]])  # near class 0
    d = surrogate_scores(x, torch.tensor([0, 2]), mu, centred, alpha0=0.0)
    assert d[0] > 0 and d[1] < 0
    assert surrogate_weights(d)[1] == 0.0


def test_alpha0_schedule():
    assert alpha0_at(0, 10, 40) == pytest.approx(1 / 9)
    assert alpha0_at(39, 10, 40) == pytest.approx(1 / 9)
    assert alpha0_at(40, 10, 40) == 0.0
    assert alpha0_at(2, 14, 5, alpha0=1 / 13) == pytest.approx(1 / 13)


# ------------------------------------------------------------------ L2RW


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()


def test_l2rw_meta_gradient_matches_finite_differences():
    """g_i = -d L_clean(after one SGD step on sum_i eps_i ce_i) / d eps_i at eps = 0, checked against a real
    torch.optim.SGD step (with weight decay) on perturbed eps."""
    net = _tiny_net()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    xv, yv = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    lr, wd = 0.5, 0.01
    ce = nn.functional.cross_entropy(net(x), y, reduction="none")
    g = l2rw_meta_gradient(net, ce, xv, yv, lr, wd)

    def clean_loss_after_step(eps: torch.Tensor) -> float:
        stepped = copy.deepcopy(net)
        opt = torch.optim.SGD(stepped.parameters(), lr=lr, weight_decay=wd)
        (eps * nn.functional.cross_entropy(stepped(x), y, reduction="none")).sum().backward()
        opt.step()
        with torch.no_grad():
            return float(nn.functional.cross_entropy(stepped(xv), yv))

    h = 1e-5
    for i in range(8):
        e = torch.zeros(8, dtype=torch.float64)
        e[i] = h
        fd = (clean_loss_after_step(e) - clean_loss_after_step(-e)) / (2 * h)
        assert g[i].item() == pytest.approx(-fd, rel=1e-4, abs=1e-9)
    assert (g > 0).any() and (g < 0).any()  # the example exercises the clipping


def test_l2rw_meta_gradient_keeps_the_forward_usable_for_the_update():
    net = _tiny_net()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    ce = nn.functional.cross_entropy(net(x), y, reduction="none")
    g = l2rw_meta_gradient(net, ce, torch.randn(4, 4, dtype=torch.float64), torch.randint(0, 3, (4,)), 0.1)
    assert all(p.grad is None for p in net.parameters())  # the meta step leaves .grad alone
    (l2rw_weights(g) * ce).sum().backward() if l2rw_weights(g) is not None else ce.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_l2rw_weights_clip_normalise_and_skip():
    w = l2rw_weights(torch.tensor([-1.0, 0.0, 1.0, 3.0]))
    assert w.tolist() == [0.0, 0.0, 0.25, 0.75]
    assert l2rw_weights(torch.tensor([-1.0, 0.0, -2.0])) is None


def test_l2rw_refuses_several_processes_and_fp16_at_its_epoch_start():
    method = L2RW(L2RW.Config(), SimpleNamespace())
    with pytest.raises(ConfigError, match="one process only.*surrogate"):
        method.on_epoch_start(SimpleNamespace(accelerator=SimpleNamespace(num_processes=2, mixed_precision="no")))
    with pytest.raises(ConfigError, match="bf16"):
        method.on_epoch_start(SimpleNamespace(accelerator=SimpleNamespace(num_processes=1, mixed_precision="fp16")))


# ------------------------------------------------------------------ diagnostics


def test_auroc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=60).astype(float)  # many ties
    positives = rng.random(60) < 0.4
    pos, neg = scores[positives], scores[~positives]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert auroc(scores, positives) == pytest.approx(pairwise)
    assert auroc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert auroc([4, 3, 2, 1], [False, False, True, True]) == 0.0
    assert np.isnan(auroc([1, 2], [True, True]))


def test_weight_diagnostics_by_hand():
    weight = np.array([1.0, 0.5, 0.0, 0.0, 0.25, -1.0], dtype=np.float32)  # the last row was never weighted
    noisy = np.array([0, 1, 2, 0, 1, 2])
    clean = np.array([0, 1, 1, 1, 2, 0])  # rows 2, 3, 4 (and the skipped 5) are wrong
    out = weight_diagnostics(weight, noisy, clean)
    assert out["weight_right"] == pytest.approx(0.75) and out["weight_wrong"] == pytest.approx(0.25 / 3)
    assert out["weight_zero_wrong"] == pytest.approx(2 / 3) and out["weight_zero_right"] == 0.0
    assert out["weight_auroc"] == 1.0  # every wrong label weighs less than every right one


# ------------------------------------------------------------------ end to end


DIAGNOSTICS = ("weight_right", "weight_wrong", "weight_auroc", "weight_zero_wrong")


def _run(dataset: Path, out: Path, *extra: str) -> dict:
    args = ["--config", str(ROOT / "training/configs/demo_cpu.yaml"), f"data.root={dataset.parent}",
            f"data.name={dataset.name}", f"out_dir={out}", "run_name=r", "data.batch_size=32",
            "data.clean_batch_size=10", "data.eval_batch_size=64", "epochs=1", f"data.clean_subset={MASK}", *extra]
    assert main(args) == 0
    return json.loads((out / "r" / "results.json").read_text())


def _weights(out: Path) -> np.ndarray:
    from state.reader import StateReader

    return StateReader(out / "r" / "state.zarr").array("weight")


def _check_weights(dataset: Path, weight: np.ndarray) -> None:
    mask = np.load(dataset / "labels" / "train" / "masks" / f"{MASK}.npy")
    assert (weight[mask] == -1).all()  # the clean subset is never weighted
    assert (weight[~mask] >= 0).all()  # every training sample was weighted this epoch


@pytest.mark.slow
def test_surrogate_one_epoch_end_to_end(tiny_dataset, tmp_path):
    results = _run(tiny_dataset, tmp_path, "method.name=surrogate", "method.params.val_steps=2",
                   "method.params.skip_epochs=0")
    row = results["history"][0]
    for key in (*DIAGNOSTICS, "surrogate_clean_seconds", "surrogate_alpha0"):
        assert key in row, key
    assert row["surrogate_alpha0"] == pytest.approx(1 / 9)
    assert 0.0 <= row["weight_auroc"] <= 1.0
    _check_weights(tiny_dataset, _weights(tmp_path))


def test_surrogate_weights_are_half_before_skip_epochs(tiny_dataset, tmp_path):
    results = _run(tiny_dataset, tmp_path, "method.name=surrogate", "method.params.val_steps=0",
                   "method.params.skip_epochs=1")
    row = results["history"][0]
    assert row["weight_right"] == row["weight_wrong"] == 0.5 and row["weight_auroc"] == 0.5
    weight = _weights(tmp_path)
    assert set(np.unique(weight).tolist()) == {-1.0, 0.5}


@pytest.mark.slow
def test_l2rw_one_epoch_end_to_end(tiny_dataset, tmp_path):
    results = _run(tiny_dataset, tmp_path, "method.name=l2rw")
    row = results["history"][0]
    for key in (*DIAGNOSTICS, "l2rw_skipped_steps"):
        assert key in row, key
    weight = _weights(tmp_path)
    _check_weights(tiny_dataset, weight)


@pytest.mark.slow
def test_surrogate_two_processes_weights_every_sample_against_the_whole_subset(tiny_dataset, tmp_path):
    """Two CPU processes (gloo): clean features are gathered, so every training sample gets a weight and the
    feature pass checks it saw the whole subset; L2RW refuses with a message naming the limitation."""
    common = ["--config", str(ROOT / "training/configs/demo_cpu.yaml"), f"data.root={tiny_dataset.parent}",
              f"data.name={tiny_dataset.name}", f"out_dir={tmp_path}", "data.batch_size=16",
              "data.clean_batch_size=5", "data.eval_batch_size=64", "epochs=1", "cpu=true",
              f"data.clean_subset={MASK}"]
    proc = launch_cpu(2, ROOT / "training/run.py", *common, "run_name=r", "method.name=surrogate",
                      "method.params.val_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["hardware"]["num_processes"] == 2
    assert all(key in results["history"][0] for key in DIAGNOSTICS)
    _check_weights(tiny_dataset, _weights(tmp_path))
    proc = launch_cpu(2, ROOT / "training/run.py", *common, "run_name=l", "method.name=l2rw")
    assert proc.returncode != 0 and "runs in one process only" in proc.stderr
