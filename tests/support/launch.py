"""Starting real multi-process CPU runs from tests.

`accelerate launch --cpu --num_processes 2` starts ONE process unless mpirun is set up; the
torchrun path (`--multi_gpu`) with ACCELERATE_USE_CPU=1 gives N CPU processes talking over gloo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_cpu(num_processes: int, script: Path, *args: str, cwd: Path | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `script args` in `num_processes` CPU processes through `accelerate launch`."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
           "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
           "--dynamo_backend", "no", str(script), *args]
    env = {**worker_env(), "ACCELERATE_USE_CPU": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def worker_env() -> dict[str, str]:
    """The environment of a worker script: the repository importable, one OpenMP thread."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
