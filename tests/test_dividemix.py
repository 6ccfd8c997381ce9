"""Tests of DivideMix (training/methods/dividemix.py): the loss mixture against a known one, the target
formulas by hand, MixMatch's lambda', the co-divide exchange, and end-to-end runs in 1 and 2 processes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from support import methods
from support.launch import launch_cpu
from support.methods import make_run
from pipeline.load.batch import Batch
from state.reader import StateReader
from test_training import _args
from training.methods import dividemix
from training.methods.dividemix import (CLEAN_PROB, co_guess, co_refine, fit_gmm, linear_rampup, min_max,
                                        mixmatch, mixture_clean_probability, negative_entropy, semi_loss,
                                        uniform_prior_penalty)
from training.run import main
from training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
K = 3


def make_method(labels, lambda_u=25, **params):
    """DivideMix on K = 3 classes, its networks linear on (3, 2, 2) images, SGD at lr 0.1."""
    return methods.make_method("dividemix", labels, num_classes=K, epochs=5, base_lr=0.1,
                               build_model=lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, K)),
                               lambda_u=lambda_u, **params)


# ----------------------------------------------------------------------------------------------
# Co-divide


def _known_mixture(n=4000, seed=0):
    """70 % N(0.15, 0.05^2) (clean: small losses), 30 % N(0.7, 0.12^2); returns (x, true posterior of the first)."""
    rng = np.random.default_rng(seed)
    first = rng.random(n) < 0.7
    x = np.where(first, rng.normal(0.15, 0.05, n), rng.normal(0.7, 0.12, n))
    a, b = 0.7 * norm.pdf(x, 0.15, 0.05), 0.3 * norm.pdf(x, 0.7, 0.12)
    return x, a / (a + b), first


def test_gmm_with_the_authors_settings_recovers_a_known_mixture_and_its_posterior():
    x, true_posterior, _ = _known_mixture()
    means, variances, weights = fit_gmm(x)  # reg_covar 5e-4, tol 1e-2, max_iter 10
    order = np.argsort(means)
    np.testing.assert_allclose(means[order], [0.15, 0.7], atol=0.01)
    np.testing.assert_allclose(weights[order], [0.7, 0.3], atol=0.02)
    np.testing.assert_allclose(variances[order], [0.05 ** 2 + 5e-4, 0.12 ** 2 + 5e-4], rtol=0.15)
    posterior = dividemix.gmm_posterior(x, means, variances, weights)[:, order[0]]
    assert np.abs(posterior - true_posterior).mean() < 0.01


def test_clean_probability_is_the_posterior_of_the_smaller_loss_component_after_normalising():
    x, _, first = _known_mixture()
    # an affine change of the losses: the same after min-max
    prob = mixture_clean_probability(min_max(3.0 * x + 2.0))
    np.testing.assert_allclose(prob, mixture_clean_probability(min_max(x)), atol=1e-9)
    assert ((prob > 0.5) == first).mean() > 0.97 and prob[first].mean() > 0.9


# ----------------------------------------------------------------------------------------------
# Loss history (the authors' 5-epoch average at 90 % symmetric noise)

# Hand-made per-epoch losses (6 samples, columns "model" and "peer"), each column spanning exactly [0, 1],
# so min-max normalisation leaves them as they are and the means can be written down.
EPOCH_LOSSES = [torch.tensor([[0.0, 1.0], [0.25, 0.0], [0.5, 0.75], [1.0, 0.5], [0.125, 0.25], [0.75, 0.5]]),
                torch.tensor([[0.5, 0.5], [0.0, 1.0], [1.0, 0.0], [0.25, 0.25], [0.75, 0.125], [0.5, 0.75]]),
                torch.tensor([[1.0, 0.0], [0.75, 0.5], [0.0, 1.0], [0.5, 0.75], [0.25, 0.5], [0.125, 0.25]]),
                torch.tensor([[0.25, 0.75], [1.0, 0.25], [0.5, 0.5], [0.0, 1.0], [0.75, 0.0], [0.5, 0.125]])]


def _divide(method, run, epoch, losses, fitted):
    """One co-divide at `epoch` on hand-made raw losses (6, 2); appends what each mixture was fitted to."""
    run.epoch = epoch
    run.eval_train = lambda fn: (torch.arange(losses.shape[0]), losses)
    before = len(fitted)
    method.on_epoch_start(run)
    assert len(fitted) == before + 2  # one mixture per network


@pytest.fixture
def fitted(monkeypatch):
    """What fit_gmm is given, one (n,) array per call."""
    seen = []

    def spy(x, **kwargs):
        seen.append(np.array(x, dtype=np.float64))
        return fit_gmm(x, **kwargs)

    monkeypatch.setattr(dividemix, "fit_gmm", spy)
    return seen


def _history_method(loss_history, n=6):
    return make_method([i % K for i in range(n)], warmup_epochs=0, loss_history=loss_history)


def test_loss_history_of_one_gives_exactly_the_one_epoch_division(fitted):
    method = _history_method(1, n=40)
    run = make_run(method)
    assert run.store.names == [CLEAN_PROB]  # nothing more to keep or checkpoint
    rng = np.random.default_rng(0)
    for epoch in range(3):
        losses = torch.from_numpy(np.abs(rng.normal(1.0, 1.0, (40, 2)))).float()  # raw, not normalised
        _divide(method, run, epoch, losses, fitted)
        expected = np.stack([mixture_clean_probability(min_max(losses[:, j].double().numpy())) for j in range(2)],
                            axis=1)
        np.testing.assert_array_equal(run.store[CLEAN_PROB], expected.astype(np.float32))
        np.testing.assert_array_equal(fitted[-2], dividemix.min_max(losses[:, 0].double().numpy()))


def test_loss_history_of_three_fits_the_mixture_to_the_mean_of_the_last_three_epochs(fitted):
    method = _history_method(3)
    run = make_run(method)
    for epoch in range(3):
        _divide(method, run, epoch, EPOCH_LOSSES[epoch], fitted)
        mean = torch.stack(EPOCH_LOSSES[: epoch + 1]).double().mean(dim=0).numpy()  # (6, 2): what exists so far
        for j in range(2):
            np.testing.assert_allclose(fitted[-2 + j], mean[:, j], rtol=0, atol=1e-12)
    # e.g. sample 0 of "model" at the third division: (0 + 0.5 + 1) / 3
    assert fitted[-2][0] == pytest.approx(0.5)
    np.testing.assert_array_equal(run.store[dividemix.LOSS_HISTORY],
                                  torch.stack(EPOCH_LOSSES[2::-1], dim=1).numpy())  # (6, 3, 2), newest first


def test_loss_history_averages_each_epochs_normalised_losses_not_the_raw_ones(fitted):
    # the authors normalise every epoch's vector before it joins the history: a later epoch with losses
    # ten times larger (plus 3) must weigh no more than the first, and the mean is not normalised again
    method = _history_method(2)
    run = make_run(method)
    _divide(method, run, 0, EPOCH_LOSSES[0], fitted)
    _divide(method, run, 1, 10 * EPOCH_LOSSES[1] + 3, fitted)
    expected = ((EPOCH_LOSSES[0] + EPOCH_LOSSES[1]).double() / 2).numpy()
    for j in range(2):
        np.testing.assert_allclose(fitted[-2 + j], expected[:, j], rtol=0, atol=1e-6)


def test_loss_history_drops_the_oldest_epoch_beyond_its_length(fitted):
    method = _history_method(2)
    run = make_run(method)
    for epoch in range(4):
        _divide(method, run, epoch, EPOCH_LOSSES[epoch], fitted)
    last_two = ((EPOCH_LOSSES[2] + EPOCH_LOSSES[3]).double() / 2).numpy()  # epochs 0 and 1 are gone
    for j in range(2):
        np.testing.assert_allclose(fitted[-2 + j], last_two[:, j], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(run.store[dividemix.LOSS_HISTORY],
                                  torch.stack([EPOCH_LOSSES[3], EPOCH_LOSSES[2]], dim=1).numpy())


def test_loss_history_survives_a_checkpoint_and_resume(fitted, tmp_path):
    """The history lives in the sample store: the trainer snapshots it, the checkpoint names the snapshot,
    and --resume loads it (store.state_dict -> load_state_dict), beside the method's own state_dict."""
    method = _history_method(3)
    run = make_run(method)
    for epoch in range(2):
        _divide(method, run, epoch, EPOCH_LOSSES[epoch], fitted)
    run.store.snapshot(tmp_path / "state.zarr", "epoch-0001")
    resumed = _history_method(3)
    resumed_run = make_run(resumed)
    resumed_run.store.load_state_dict(run.store.state_dict())
    resumed.load_state_dict(method.state_dict())
    _divide(method, run, 2, EPOCH_LOSSES[2], fitted)
    uninterrupted = fitted[-2:]
    _divide(resumed, resumed_run, 2, EPOCH_LOSSES[2], fitted)
    for j in range(2):
        np.testing.assert_array_equal(fitted[-2 + j], uninterrupted[j])
    np.testing.assert_allclose(fitted[-2], torch.stack(EPOCH_LOSSES[:3]).double().mean(dim=0)[:, 0].numpy(),
                               rtol=0, atol=1e-12)  # all three epochs, two of them from before the resume
    np.testing.assert_array_equal(resumed_run.store[CLEAN_PROB], run.store[CLEAN_PROB])


# ----------------------------------------------------------------------------------------------
# Targets, MixMatch, losses


def test_co_refinement_mixes_label_and_prediction_by_w_then_sharpens_by_hand():
    # w y + (1 - w) p = 0.6 [0, 1, 0] + 0.4 [0.5, 0.3, 0.2] = [0.2, 0.72, 0.08]; squared (T = 0.5), normalised
    out = co_refine(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([0.6]), torch.tensor([[0.5, 0.3, 0.2]]), 0.5)
    total = 0.2 ** 2 + 0.72 ** 2 + 0.08 ** 2
    np.testing.assert_allclose(out.numpy(), [[0.04 / total, 0.5184 / total, 0.0064 / total]], rtol=1e-5)


def test_co_guessing_averages_both_networks_then_sharpens_by_hand():
    out = co_guess(torch.tensor([[0.6, 0.4]]), torch.tensor([[0.2, 0.8]]), 0.5)  # mean [0.4, 0.6]
    np.testing.assert_allclose(out.numpy(), [[0.16 / 0.52, 0.36 / 0.52]], rtol=1e-5)


@pytest.mark.parametrize("lam,used", [(0.2, 0.8), (0.7, 0.7), (0.5, 0.5)])
def test_mixmatch_uses_the_larger_of_lambda_and_one_minus_lambda(lam, used):
    inputs = torch.tensor([[1.0], [10.0], [100.0]])
    targets = torch.eye(3)
    perm = torch.tensor([2, 0, 1])
    mixed_x, mixed_t = mixmatch(inputs, targets, lam, perm)
    np.testing.assert_allclose(mixed_x[:, 0].numpy(), [used * 1 + (1 - used) * 100, used * 10 + (1 - used) * 1,
                                                       used * 100 + (1 - used) * 10], rtol=1e-6)
    assert (mixed_t.diagonal() >= 0.5).all()  # every row stays nearest its own sample
    np.testing.assert_allclose(mixed_t.sum(dim=1).numpy(), 1.0, rtol=1e-6)


def test_semi_loss_splits_rows_by_their_own_sample_and_the_prior_is_zero_when_uniform():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    lx, lu = semi_loss(logits, targets, torch.tensor([True, False, True]))
    p0 = math.exp(2) / (math.exp(2) + 1)
    p2 = math.exp(1) / (math.exp(1) + math.exp(-1))
    assert lx.item() == pytest.approx((-math.log(p0) - math.log(1 - p2)) / 2, rel=1e-5)
    assert lu.item() == pytest.approx(0.0, abs=1e-7)  # row 1 predicts its target exactly
    assert semi_loss(logits, targets, torch.zeros(3, dtype=torch.bool))[0].item() == 0.0  # no labelled row
    assert uniform_prior_penalty(torch.tensor([[3.0, 0.0], [0.0, 3.0]])).item() == pytest.approx(0.0, abs=1e-6)
    assert uniform_prior_penalty(torch.tensor([[3.0, 0.0], [3.0, 0.0]])).item() > 0.1


def test_negative_entropy_of_the_warm_up_penalty_by_hand():
    assert negative_entropy(torch.zeros(4, 2)).item() == pytest.approx(-math.log(2), rel=1e-6)  # uniform: lowest
    p = math.exp(2) / (math.exp(2) + 1)
    expected = p * math.log(p) + (1 - p) * math.log(1 - p)
    assert negative_entropy(torch.tensor([[2.0, 0.0]])).item() == pytest.approx(expected, rel=1e-6)


def test_lambda_u_ramps_linearly_over_sixteen_epochs_after_warm_up():
    assert [linear_rampup(e, 10, 16) for e in (5, 10, 18, 26, 40)] == [0.0, 0.0, 0.5, 1.0, 1.0]


# ----------------------------------------------------------------------------------------------
# The step


def test_each_network_trains_on_the_division_the_other_network_made(monkeypatch):
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    method = make_method(labels, warmup_epochs=1)
    own = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9], [0.9, 0.9], [0.1, 0.1]])  # columns: model, peer
    run = make_run(method, epoch=1, steps=1)
    run.store.set(CLEAN_PROB, torch.arange(6), own)
    seen = []

    def spy(logits, targets, labelled):
        seen.append(labelled.clone())
        return semi_loss(logits, targets, labelled)

    monkeypatch.setattr(dividemix, "semi_loss", spy)
    models = run.models
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in models.items()}
    weak = torch.randn(6, 3, 2, 2)
    batch = Batch(images=weak, idx=torch.arange(6), views={"weak": weak, "weak2": weak.flip(-1)})
    out = method.train_step(batch, labels, run)
    model_labelled = own[:, 1] > 0.5  # the peer's mixture divides for the model ...
    peer_labelled = own[:, 0] > 0.5  # ... and the model's for the peer
    assert not torch.equal(model_labelled, peer_labelled)
    assert torch.equal(seen[0], model_labelled.repeat(2)) and torch.equal(seen[1], peer_labelled.repeat(2))
    for n, m in models.items():
        assert any(not torch.equal(p, p0) for p, p0 in zip(m.parameters(), before[n]))
    assert {"loss", "peer_loss", "lx", "lu"} <= set(out.terms) and out.logits.shape == (6, K)


def test_predict_averages_both_networks_logits():
    method = make_method([0, 1])
    models = {"model": lambda x: torch.tensor([[2.0, 0.0, 0.0]]), "peer": lambda x: torch.tensor([[0.0, 4.0, 0.0]])}
    np.testing.assert_allclose(method.predict(models, torch.zeros(1)).numpy(), [[1.0, 2.0, 0.0]])


# ----------------------------------------------------------------------------------------------
# End to end

RUN = ("method.name=dividemix", "method.params.warmup_epochs=1", "method.params.lambda_u=25", "epochs=2")


def test_one_warm_up_epoch_then_one_dividemix_epoch_on_the_tiny_dataset(tiny_dataset, tmp_path):
    assert main(_args(tiny_dataset, tmp_path, *RUN)) == 0
    history = json.loads((tmp_path / "r" / "results.json").read_text())["history"]
    assert "labelled_frac_model" not in history[0]  # warm-up: no division yet
    row = history[1]
    for key in ("labelled_frac", "labelled_precision", "labelled_recall", "clean_prob_auroc"):
        for net in ("model", "peer"):
            assert 0 <= row[f"{key}_{net}"] <= 1, (key, net)
    assert np.isfinite(row["train_loss"]) and 0 <= row["test_acc"] <= 1
    prob = StateReader(tmp_path / "r" / "state.zarr").array(CLEAN_PROB)
    assert prob.shape == (200, 2) and ((prob >= 0) & (prob <= 1)).all()
    assert not np.array_equal(prob[:, 0], prob[:, 1])  # two networks, two divisions


@pytest.mark.parametrize("placement", ["host", "device"])  # numpy + numba, or torch tables (here on the CPU)
def test_loss_history_runs_end_to_end_and_is_saved_with_the_store(tiny_dataset, tmp_path, placement):
    args = (*RUN, "epochs=3", "method.params.loss_history=2", f"state.placement={placement}")
    assert main(_args(tiny_dataset, tmp_path, *args)) == 0
    history = StateReader(tmp_path / "r" / "state.zarr").array(dividemix.LOSS_HISTORY)
    assert history.shape == (200, 2, 2)  # (N, H, networks): divisions at the starts of epochs 1 and 2
    assert ((history >= 0) & (history <= 1)).all() and not np.array_equal(history[:, 0], history[:, 1])
    assert history[:, 0].min(axis=0).tolist() == [0, 0] and history[:, 0].max(axis=0).tolist() == [1, 1]


@pytest.mark.slow
def test_loss_history_run_resumed_after_a_crash_matches_the_uninterrupted_run(tiny_dataset, tmp_path,
                                                                            monkeypatch):
    args = (*RUN, "epochs=4", "method.params.loss_history=3", "deterministic=true")
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(_args(tiny_dataset, straight, *args)) == 0
    original = Trainer._train_epoch

    def crash_in_fourth_epoch(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt("simulated crash")
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", crash_in_fourth_epoch)
    with pytest.raises(KeyboardInterrupt):
        main(_args(tiny_dataset, broken, *args))
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    assert main(_args(tiny_dataset, broken, *args, "--resume")) == 0
    for name in (CLEAN_PROB, dividemix.LOSS_HISTORY):
        np.testing.assert_array_equal(StateReader(broken / "r" / "state.zarr").array(name),
                                      StateReader(straight / "r" / "state.zarr").array(name))


@pytest.mark.slow
@pytest.mark.parametrize("extra, divisions", [((), 1), (("epochs=3", "method.params.loss_history=2"), 2)])
def test_two_processes_divide_identically(tiny_dataset, tmp_path, extra, divisions):
    """Two real CPU processes (gloo): each gathers every sample's loss once and fits the same mixture
    itself (compared before the store, whose gather would otherwise keep process 0's rows), also when the
    mixture is fitted to the loss history kept in the store."""
    overrides = _args(tiny_dataset, tmp_path, *RUN, "cpu=true", *extra)[2:]  # drop --config: the worker loads demo_cpu
    proc = launch_cpu(2, ROOT / "tests" / "support" / "dividemix_worker.py", str(tmp_path), *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = (np.load(tmp_path / f"rank-{r}.npz") for r in (0, 1))
    assert first["computed"].shape == (2 * divisions, 200)  # one mixture per network and division, all 200 samples
    np.testing.assert_array_equal(first["computed"], second["computed"])
    np.testing.assert_array_equal(first["stored"], second["stored"])
    np.testing.assert_allclose(first["stored"], first["computed"][-2:].T, rtol=1e-6)
