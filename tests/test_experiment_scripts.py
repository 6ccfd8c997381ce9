"""The experiment scripts' run tables are valid configs (a bad entry otherwise fails an hour into a sweep)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from training.config import load_config
from training.methods import method_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools/experiments/memorisation_demo_cpu.sh"


def run_table(script: Path) -> dict[str, list[str]]:
    """The script's `declare -A RUN=( [name]="overrides" ... )` entries: name -> overrides."""
    block = re.search(r"declare -A RUN=\((.*?)\n\)", script.read_text(), re.S)
    assert block, f"{script}: no RUN table"
    return {name: overrides.split() for name, overrides in re.findall(r'\[([\w-]+)\]="([^"]*)"', block.group(1))}


RUNS = run_table(SCRIPT)
# the script adds these per label set (its realised noise rate)
PER_SET = {"coteaching": ["method.params.forget_rate=0.4"], "jocor": ["method.params.forget_rate=0.4"]}


def test_run_table_is_found_and_ordered_runs_exist():
    order = re.search(r"ORDER=\((.*?)\)", SCRIPT.read_text(), re.S).group(1).split()
    assert len(RUNS) >= 20 and set(order) == set(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_every_run_is_a_valid_config(name, tmp_path):
    config = load_config(ROOT / "training/configs/demo_memorisation_cpu.yaml",
                         [*RUNS[name], *PER_SET.get(name, []), f"out_dir={tmp_path}", "data.root=data"])
    method_config(config.method.name, config.method.params)
