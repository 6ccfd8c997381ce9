"""Run outputs (DESIGN "<out>/<run>/"): config.yaml, metrics.jsonl, results.json, checkpoints/.

Files are replaced atomically (write a temp file, then os.replace), so an interrupted run never
leaves a half-written one in place of a good one."""

from __future__ import annotations

import io
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch


def write_atomic(path: Path, data: str | bytes) -> None:
    """Writes a temp file beside `path` (its folder made if missing), then renames it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)


def write_array(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    write_atomic(path, buf.getvalue())


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def write_metrics(path: Path, rows: list[dict]) -> None:
    """metrics.jsonl holds one JSON row per finished epoch; rewritten whole so a resume never duplicates rows."""
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hardware(num_processes: int) -> dict:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "gpus": gpus,
        "num_processes": num_processes,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
