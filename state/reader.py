"""Read a run's sample-store snapshots for analysis or export (no training objects needed).

    reader = StateReader("runs/cifar10-alr")          # the run dir or its state.zarr
    reader.versions()                                  # complete versions, oldest first
    soft = reader.array("soft_target", tag="epoch-0050")   # numpy (N, K)
    reader.summary()                                   # names, shapes, dtypes, stats of CURRENT
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from state import persist

STATE_DIRNAME = "state.zarr"


class StateReader:
    """Read-only access to <run>/state.zarr at any complete version."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if path.name != STATE_DIRNAME and (path / STATE_DIRNAME).is_dir():
            path = path / STATE_DIRNAME
        if not path.is_dir():
            raise FileNotFoundError(f"no sample-store state at {path}: pass a run directory holding "
                                    f"{STATE_DIRNAME}/ or the {STATE_DIRNAME} directory itself")
        self.path = path

    def versions(self) -> list[persist.VersionInfo]:
        return persist.list_versions(self.path)

    def current(self) -> str | None:
        return persist.read_current(self.path)

    def attrs(self, tag: str | None = None) -> dict[str, Any]:
        attrs, _ = persist.read_snapshot(self.path, tag, names=[])
        return attrs

    def arrays(self, tag: str | None = None, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """{name: numpy array} of version `tag` (None: CURRENT)."""
        return persist.read_snapshot(self.path, tag, names=names)[1]

    def array(self, name: str, tag: str | None = None) -> np.ndarray:
        return self.arrays(tag, names=[name])[name]

    def summary(self, tag: str | None = None, names: list[str] | None = None) -> list[dict[str, Any]]:
        return summarize(self.arrays(tag, names=names))


def summarize(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One row per array: name, shape, dtype, bytes, min, max, mean, and for (N, K) arrays the mean row sum."""
    rows = []
    for name, arr in arrays.items():
        row = {"name": name, "shape": tuple(arr.shape), "dtype": str(arr.dtype), "bytes": int(arr.nbytes)}
        if arr.size:
            row.update(min=float(arr.min()), max=float(arr.max()), mean=float(arr.mean(dtype=np.float64)))
            if arr.ndim == 2:
                row["mean_row_sum"] = float(arr.sum(axis=1, dtype=np.float64).mean())
        rows.append(row)
    return rows
