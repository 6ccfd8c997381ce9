"""tools/demo.sh (`make demo`): converts the shipped subset, trains CE then SELC, prints one table, plots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_trains_ce_and_selc_and_writes_the_table_and_plot(tmp_path):
    env = {**os.environ, "PY": sys.executable, "WARMUP": "1"}
    proc = subprocess.run([str(ROOT / "tools/demo.sh"), str(tmp_path / "data"), str(tmp_path / "run"), "epochs=2",
                           "optim.milestones=[1]"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| ce |", "| selc |"))]
    assert len(rows) == 2 and "selc (alr, lam=0)" in rows[1]
    assert (tmp_path / "run" / "test_accuracy.png").stat().st_size > 1000
    assert (tmp_path / "data" / "cifar10-demo" / "labels" / "train" / "masks" / "clean-subset-100-s0.npy").is_file()
