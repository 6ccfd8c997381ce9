"""StateReader and tools/inspect_state.py: list versions, summarise, export a chosen version."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from state.reader import StateReader
from state.spec import ArraySpec
from state.store import SampleStore

REPO = Path(__file__).resolve().parents[1]


def _inspect_main():
    spec = importlib.util.spec_from_file_location("inspect_state", REPO / "tools" / "inspect_state.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture
def run_dir(tmp_path):
    store = SampleStore([ArraySpec("soft", (3,), "float32", "one_hot_labels"), ArraySpec("n", (), "int32", 0)],
                        20, labels=np.arange(20) % 3, num_classes=3)
    store.snapshot(tmp_path / "state.zarr", "epoch-0001")
    store.add("n", np.arange(20), np.full(20, 2, dtype=np.int32))
    store.snapshot(tmp_path / "state.zarr", "epoch-0002")
    return tmp_path


def test_state_reader_opens_any_version(run_dir):
    reader = StateReader(run_dir)
    assert [v.tag for v in reader.versions()] == ["epoch-0001", "epoch-0002"]
    assert reader.current() == "epoch-0002"
    assert reader.array("n").sum() == 40 and reader.array("n", "epoch-0001").sum() == 0
    rows = {r["name"]: r for r in reader.summary("epoch-0001")}
    assert rows["soft"]["shape"] == (20, 3) and rows["soft"]["mean_row_sum"] == pytest.approx(1.0)
    assert reader.attrs()["num_samples"] == 20


def test_inspect_state_exports_the_chosen_version(run_dir, tmp_path, capsys):
    main = _inspect_main()
    out = tmp_path / "export" / "n.npz"
    assert main([str(run_dir), "--tag", "epoch-0001", "--names", "n", "--export", str(out)]) == 0
    assert "epoch-0002" in capsys.readouterr().out
    with np.load(out) as data:
        assert list(data) == ["n"] and data["n"].sum() == 0
    assert main([str(run_dir / "state.zarr"), "--list"]) == 0


def test_inspect_state_reports_missing_state(tmp_path, capsys):
    main = _inspect_main()
    assert main([str(tmp_path / "nothing")]) == 2
    assert "no sample-store state" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
