"""Trackers through Accelerate: each backend's local files hold the epoch metrics (read back with the
backend's own reader and compared with metrics.jsonl), the config as hyperparameters and the
method's figures."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from accelerate import Accelerator
from matplotlib.figure import Figure

from support.wandb_log import wandb_history
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


def _epoch_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train_with(backend: str, tiny_dataset, tmp_path) -> tuple[Path, list[dict]]:
    """A 2-epoch IDO run (it draws a figure every epoch) logged to `backend`; (tracking folder, rows)."""
    pytest.importorskip(backend, reason=f"{backend} is an optional tracker: pip install -e .[trackers]")
    args = _args(tiny_dataset, tmp_path, f"tracking.backend={backend}", "tracking.project=p", "method.name=ido",
                 "method.params.stage1_epochs=1")
    assert main(args) == 0
    return tmp_path / "r" / "tracking", _epoch_rows(tmp_path / "r")


@pytest.mark.slow
def test_wandb_offline_run_holds_every_epoch_metric_and_figure(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    folder, rows = _train_with("wandb", tiny_dataset, tmp_path)
    (run_dir,) = (folder / "wandb").glob("offline-run-*")
    history = wandb_history(next(run_dir.glob("run-*.wandb")))
    logged = [h for h in history if "test_acc" in h]
    assert [h["_step"] for h in logged] == [1, 2]
    np.testing.assert_allclose([h["test_acc"] for h in logged], [r["test_acc"] for r in rows], rtol=1e-6)
    assert list((run_dir / "files" / "media" / "images").glob("ido_counts_*.png"))


@pytest.mark.slow
def test_mlflow_run_is_kept_in_the_run_folder(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    folder, rows = _train_with("mlflow", tiny_dataset, tmp_path)
    from mlflow.tracking import MlflowClient

    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("p").experiment_id])
    logged = client.get_metric_history(run.info.run_id, "test_acc")
    assert [m.step for m in logged] == [1, 2]
    np.testing.assert_allclose([m.value for m in logged], [r["test_acc"] for r in rows], rtol=1e-6)
    assert run.data.params["method.name"] == "ido"
    figures = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
    assert any(path.endswith(".png") for path in figures)


@pytest.mark.slow
def test_aim_repository_holds_every_epoch_metric_and_figure(tiny_dataset, tmp_path):
    folder, rows = _train_with("aim", tiny_dataset, tmp_path)
    aim_cli = Path(sys.executable).with_name("aim")  # index the finished run, as the UI would
    subprocess.run([str(aim_cli), "storage", "--repo", str(folder), "reindex", "-y"], check=True, capture_output=True)
    from aim import Repo

    repo = Repo(str(folder))
    (run,) = list(repo.iter_runs())
    assert run["hparams"]["method.name"] == "ido"
    (test_acc,) = [m for m in run.metrics() if m.name == "test_acc"]
    steps, values = test_acc.values.sparse_list()
    np.testing.assert_allclose(values, [r["test_acc"] for r in rows], rtol=1e-6)
    images = [s for s in repo.query_images("images.name == 'ido_counts'").iter()]
    assert images and images[0].values.sparse_list()[0] == [1, 2]


def test_unavailable_backend_names_the_package(tiny_dataset, tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
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
