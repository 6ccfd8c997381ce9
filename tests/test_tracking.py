"""Trackers through Accelerate: the TensorBoard backend's event files hold the epoch metrics, the
config as hyperparameters and the method's figures."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from accelerate import Accelerator
from matplotlib.figure import Figure

from test_training import _args
from training.plots import save_figure
from training.run import main
from training.tracking import Tracking, hparams

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="the tensorboard package is a dependency: pip install -e .")


def _events(folder: Path):
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_tensorboard_backend_logs_every_epoch_metric(tiny_dataset, tmp_path):
    assert main(_args(tiny_dataset, tmp_path, "tracking.backend=tensorboard", "tracking.project=p")) == 0
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    events = _events(tmp_path / "r" / "tracking" / "p")
    scalars = set(events.Tags()["scalars"])
    assert {"train_loss", "train_acc_clean", "memorised", "test_acc", "lr"} <= scalars
    for key in ("train_loss", "test_acc"):
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [1, 2]
        np.testing.assert_allclose([e.value for e in logged], [r[key] for r in rows], rtol=1e-6)


def test_unavailable_backend_names_the_package(tiny_dataset, tmp_path, capsys):
    if importlib.util.find_spec("wandb") is not None:  # not a dependency of noisyflow
        pytest.skip("wandb is installed here, so the missing-package error cannot be shown")
    assert main(_args(tiny_dataset, tmp_path, "tracking.backend=wandb")) == 2
    assert "pip install wandb" in capsys.readouterr().err


def test_hparams_are_flat_scalars():
    flat = hparams({"optim": {"lr": 0.1, "milestones": [10, 20]}, "run_name": None, "method": {"params": {}}})
    assert flat == {"optim.lr": 0.1, "optim.milestones": "[10, 20]", "run_name": "null", "method.params": "{}"}


def test_method_figures_are_logged_once_per_change(tmp_path):
    accelerator = Accelerator(cpu=True, log_with="tensorboard", project_dir=tmp_path / "tracking")
    figures = tmp_path / "method"
    tracking = Tracking(accelerator, "tensorboard", figures)
    tracking.start("p", {"seed": 0}, tmp_path / "tracking")

    def draw(epoch):
        fig = Figure(figsize=(2, 2))
        fig.add_subplot().plot([0, epoch])
        save_figure(fig, figures / "counts" / f"epoch-{epoch:04d}.png")

    draw(1)
    tracking.log_epoch({"epoch": 1, "x": 0.5})
    tracking.log_epoch({"epoch": 2, "x": 0.25})  # no new figure: nothing more logged
    draw(3)
    tracking.log_epoch({"epoch": 3, "x": 0.125})
    tracking.finish()
    events = _events(tmp_path / "tracking" / "p")
    assert events.Tags()["images"] == ["counts"]  # one tag for the per-epoch series
    assert [e.step for e in events.Images("counts")] == [1, 3]
    assert [e.step for e in events.Scalars("x")] == [1, 2, 3]
