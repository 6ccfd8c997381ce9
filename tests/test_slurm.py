"""tools/slurm/train.sbatch: the per-node `accelerate launch` command lines for a faked SLURM allocation
(DRY_RUN=1), and a real 2-"node" CPU run on this machine through a stand-in srun."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from support.launch import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "slurm" / "train.sbatch"

# stand-ins for SLURM's tools: scontrol expands the node list; srun starts one local task per node
SCONTROL = """#!/bin/bash
[[ "$1 $2 $3" == "show hostnames $SLURM_JOB_NODELIST" ]] || { echo "scontrol: unexpected $*" >&2; exit 1; }
printf '%s\\n' {hosts}
"""
SRUN = """#!/bin/bash
while [[ $1 == --* ]]; do shift; done
pids=()
for ((n = 0; n < SLURM_JOB_NUM_NODES; n++)); do SLURM_NODEID=$n SLURM_PROCID=$n "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


def fake_slurm(bin_dir: Path, hosts: list[str]) -> Path:
    bin_dir.mkdir()
    for name, text in (("scontrol", SCONTROL.replace("{hosts}", " ".join(hosts))), ("srun", SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run_script(env: dict, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env={**os.environ, **env}, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def parse_launch(line: str) -> tuple[int, dict[str, str], list[str]]:
    """'node R: accelerate launch --opt value ... training/run.py ...' -> (R, options, the script and its args)."""
    node, _, command = line.partition(": ")
    words = shlex.split(command)
    assert words[:3] == ["accelerate", "launch", "--multi_gpu"]
    script = words.index("training/run.py")
    options = dict(zip(words[3:script:2], words[4:script:2]))
    return int(node.removeprefix("node ")), options, words[script:]


@pytest.mark.parametrize("nodes, env, per_node", [
    (2, {"SLURM_GPUS_ON_NODE": "4"}, 4),
    (3, {"SLURM_GPUS_ON_NODE": "8", "GPUS_PER_NODE": "2", "MAIN_PORT": "6123"}, 2),  # GPUS_PER_NODE wins
])
def test_dry_run_prints_each_nodes_launch_with_its_rank_and_the_first_host(tmp_path, nodes, env, per_node):
    hosts = [f"gpu-a{17 + i}" for i in range(nodes)]
    bin_dir = fake_slurm(tmp_path / "bin", hosts)
    proc = run_script({"PATH": f"{bin_dir}:{os.environ['PATH']}", "DRY_RUN": "1", "SLURM_JOB_NUM_NODES": str(nodes),
                       "SLURM_JOB_NODELIST": f"gpu-a[17-{16 + nodes}]", **env},
                      "training/configs/cifar10_ce.yaml", "data.root=/shared/data", "run_name=with space")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == nodes
    launches = sorted(parse_launch(line) for line in lines)  # the nodes' tasks run at once: any line order
    for rank, (node, options, script) in enumerate(launches):
        assert node == rank and options["--machine_rank"] == str(rank)
        assert options["--num_machines"] == str(nodes)
        assert options["--num_processes"] == str(nodes * per_node)
        assert options["--main_process_ip"] == "gpu-a17"
        assert options["--main_process_port"] == env.get("MAIN_PORT", "29500")
        assert script == ["training/run.py", "--config", "training/configs/cifar10_ce.yaml", "data.root=/shared/data",
                          "run_name=with space"]


def test_outside_an_allocation_says_to_submit_with_sbatch():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(SCRIPT), "cfg.yaml"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "not inside a SLURM allocation: submit with sbatch" in proc.stderr


@pytest.mark.slow  # two accelerate launchers, one CPU process each, one epoch of the tiny dataset (~30 s)
def test_two_nodes_on_localhost_train_one_epoch_together(tiny_dataset, tmp_path):
    bin_dir = fake_slurm(tmp_path / "bin", ["127.0.0.1", "127.0.0.1"])
    venv_bin = Path(sys.executable).parent  # where `accelerate` is
    env = {"PATH": f"{bin_dir}:{venv_bin}:{os.environ['PATH']}", "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "1",
           "SLURM_JOB_NODELIST": "localhost", "MAIN_PORT": str(free_port()), "ACCELERATE_USE_CPU": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = run_script(env, str(ROOT / "training/configs/demo_cpu.yaml"), f"data.root={tiny_dataset.parent}",
                      f"data.name={tiny_dataset.name}", f"out_dir={tmp_path}", "run_name=r", "epochs=1", "cpu=true",
                      "data.batch_size=32", "data.eval_batch_size=64", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["hardware"]["num_processes"] == 2
    assert results["history"][0]["train_samples"] == 200  # each sample once over both "nodes"
