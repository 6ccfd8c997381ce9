"""Experiment trackers through Accelerate (`log_with`): TensorBoard, Weights & Biases, MLflow, Aim.

metrics.jsonl stays the source of truth; a tracker gets copies: the resolved config as
hyperparameters, every epoch's row (metrics and method diagnostics) at step = epoch, and the PNG
figures of the method's epoch reports (written by the trainer under <run>/method/), as images where
the backend takes images. Only the main process logs (Accelerate's trackers are main-process only).

Local files stay in <run>/tracking/: TensorBoard's events, Aim's repository (.aim; `aim up --repo
<run>/tracking` shows it, `aim storage --repo ... reindex` makes a finished run listable without the
UI), W&B's run folder (online or, with WANDB_MODE=offline, for a later `wandb sync`) and MLflow's
SQLite database mlflow.db with its artifacts, unless MLFLOW_TRACKING_URI names a server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import ConfigError

TRACKING_DIR = "tracking"
BACKENDS = ("none", "tensorboard", "wandb", "mlflow", "aim")


def default_backend() -> str:
    """tensorboard where the package is importable (a dependency of noisyflow), else none."""
    return "tensorboard" if importlib.util.find_spec("tensorboard") is not None else "none"


def check_backend(backend: str) -> None:
    if backend != "none" and importlib.util.find_spec(backend) is None:
        raise ConfigError(f"tracking.backend={backend} needs the {backend} package (pip install {backend}); "
                          f"or set tracking.backend=none")


def hparams(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """The nested config flattened to dotted keys with scalar values (TensorBoard's hparams accept only
    bool, int, float and str): lists, dicts left empty and None become their JSON text."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def init_kwargs(backend: str, folder: Path) -> dict:
    """Per-backend arguments that keep the tracker's local files in the run folder (TensorBoard and Aim
    get it as Accelerate's project_dir)."""
    if backend == "wandb":
        return {"wandb": {"dir": str(folder)}}
    if backend == "mlflow":
        return {"mlflow": {"logging_dir": str(folder)}}
    return {}


class Tracking:
    """The run's trackers: `start` once, `log_epoch` after every epoch, `finish` at the end."""

    def __init__(self, accelerator, backend: str, figures_dir: Path):
        self.accelerator = accelerator
        self.backend = backend
        self.figures_dir = figures_dir
        self._logged: dict[Path, float] = {}  # figure -> modification time when it was last logged

    @property
    def active(self) -> bool:
        return self.backend != "none"

    def start(self, project: str, config: dict, folder: Path) -> None:
        if not self.active:
            return
        if self.backend == "mlflow" and "MLFLOW_TRACKING_URI" not in os.environ and self.accelerator.is_main_process:
            import mlflow  # its default store is a database in the working directory: keep it in the run

            folder.mkdir(parents=True, exist_ok=True)
            mlflow.set_tracking_uri(f"sqlite:///{(folder / 'mlflow.db').resolve()}")
        self.accelerator.init_trackers(project, config=hparams(config), init_kwargs=init_kwargs(self.backend, folder))

    def log_epoch(self, row: dict) -> None:
        """The row's numbers at step = its epoch, then every figure new or rewritten since the last call."""
        if not self.active:
            return
        step = row["epoch"]
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.accelerator.log(numbers, step=step)
        if self.accelerator.is_main_process:
            for path in sorted(self.figures_dir.rglob("*.png")) if self.figures_dir.is_dir() else []:
                mtime = path.stat().st_mtime
                if self._logged.get(path) != mtime:
                    self._log_figure(path, step)
                    self._logged[path] = mtime

    def _log_figure(self, path: Path, step: int) -> None:
        # one tag per figure: a per-epoch series (ido_counts/epoch-0005.png) is its folder's tag at its step
        name = re.sub(r"/epoch-\d+$", "", path.relative_to(self.figures_dir).with_suffix("").as_posix())
        tracker = self.accelerator.get_tracker(self.backend, unwrap=False)
        if self.backend == "mlflow":  # no image API: the PNG becomes an artifact
            tracker.log_artifact(str(path), artifact_path="figures")
            return
        image = np.asarray(Image.open(path).convert("RGB"))  # (H, W, 3) uint8
        if self.backend == "tensorboard":
            tracker.log_images({name: image[None]}, step=step, dataformats="NHWC")
        elif self.backend == "wandb":
            tracker.log_images({name: [image]}, step=step)
        else:  # aim
            tracker.log_images({name: image}, step=step)

    def finish(self) -> None:
        if self.active:
            self.accelerator.end_training()
