"""tools/gpu_check.sh --dry-run: every stage of the GPU check, a few steps each, on the CPU and the demo subset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def dry_run(tmp_path, **env):
    out = tmp_path / "out"
    env = {**os.environ, "WORK": str(tmp_path / "work"), "PY": sys.executable, "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run([str(ROOT / "tools/gpu_check.sh"), "--dry-run", str(out)], env=env, capture_output=True,
                          text=True, timeout=900)
    return out, done


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_result(tmp_path, demo_archive):
    out, done = dry_run(tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.log", "loader.md", "runs.json", "runs.md", "trainer.json", "trainer.md"]
    trainer = json.loads((out / "trainer.json").read_text())
    assert set(trainer["images_per_s"]) == {"trainer", "bare", "synthetic"}
    assert trainer["bare_over_trainer"] > 0 and trainer["synthetic_over_bare"] > 0
    runs = json.loads((out / "runs.json").read_text())
    assert list(runs) == ["ce", "alr", "selc"] and all(0 <= r["last_test_acc"] <= 1 for r in runs.values())
    assert runs["selc"]["config"]["method"]["params"]["lam"] == 0.0
    assert "| cache |" in (out / "loader.md").read_text()


@pytest.mark.slow
def test_gpu_check_cut_off_keeps_the_finished_recipes(tmp_path, demo_archive):
    # a recipe that fails stands for a check killed by the machine's time limit: what finished is kept
    out, done = dry_run(tmp_path, METHODS="ce no_such_method")
    assert done.returncode != 0
    assert "cifar10_fast_no_such_method.yaml" in done.stdout + done.stderr
    assert list(json.loads((out / "runs.json").read_text())) == ["ce"]
    assert "| ce |" in (out / "runs.md").read_text()
