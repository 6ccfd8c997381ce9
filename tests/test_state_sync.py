"""A real 2-process run of the sample store (gloo on CPU) against a 1-process store fed the same batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from state.persist import plan_layout
from state.reader import StateReader
from state.store import SampleStore
from state.sync import SingleProcess, communicator_for
from support import state_sync_worker as worker
from support.launch import launch_cpu

REPO = Path(__file__).resolve().parents[1]


def _single_process_reference() -> dict[str, np.ndarray]:
    """A 1-process store fed each global batch whole: the parts of all processes, concatenated in order."""
    store = SampleStore(worker.specs(), worker.N, labels=worker.labels(), num_classes=worker.K)
    for _, parts in worker.make_stream(2):
        whole = tuple(np.concatenate([p[j] for p in parts]) for j in range(4))
        worker.apply_step(store, whole)
    return {name: store[name].copy() for name in store.names}


def test_single_process_communicator_is_identity():
    comm = communicator_for()
    assert isinstance(comm, SingleProcess) and comm.num_processes == 1
    idx, values = torch.arange(3), torch.ones(3, 2)
    got_idx, got_values = comm.all_gather_padded(idx, values)
    assert torch.equal(got_idx, idx) and torch.equal(got_values, values)


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["host", "device"])
def test_two_processes_match_one_process_and_never_share_a_shard(tmp_path, placement):
    done = launch_cpu(2, REPO / "tests" / "support" / "state_sync_worker.py", str(tmp_path), placement, cwd=tmp_path,
                      timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]

    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["num_processes"] for r in reports] == [2, 2], "the launcher did not start two processes"
    replicas = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(2)]
    reference = _single_process_reference()
    for name, want in reference.items():
        np.testing.assert_array_equal(replicas[0][name], replicas[1][name], err_msg=f"replicas differ in {name}")
        np.testing.assert_array_equal(replicas[0][name], want, err_msg=f"{name} differs from the 1-process run")
    assert not np.array_equal(reference["soft"], SampleStore(worker.specs(), worker.N, labels=worker.labels())["soft"])

    # snapshots: the final one is CURRENT and equals the state; keep=2 pruned step-3
    assert all(r["loaded_equal"] for r in reports), "a process loaded a snapshot that differs from its state"
    assert all(r["checkpoint_roundtrip"] for r in reports), "accelerator.load_state did not restore the store"
    reader = StateReader(tmp_path / "run")
    assert reader.current() == worker.FINAL_TAG
    assert [v.tag for v in reader.versions()] == ["step-6", worker.FINAL_TAG]
    for name, arr in reader.arrays().items():
        np.testing.assert_array_equal(arr, reference[name])

    # shards: every chunk/shard file (…/<array>/c/<i>/…) was stored by exactly one process, its owner
    shard_writes = [{k for k in r["writes"] if "/c/" in k} for r in reports]
    assert shard_writes[0] and shard_writes[1], "each process must write its own shards"
    both = shard_writes[0] & shard_writes[1]
    assert not both, f"shards written by both processes: {both}"
    for rank, keys in enumerate(shard_writes):
        for key in keys:
            name, shard = key.split("/c/")[0].rsplit("/", 1)[1], int(key.split("/c/")[1].split("/")[0])
            row_bytes = {"soft": 4 * worker.K, "wrong": 4, "loss": 8}[name]
            layout = plan_layout(worker.N, row_bytes, 2)
            lo, hi = layout.block(rank)
            assert lo <= shard * layout.shard_rows < hi, f"process {rank} wrote {name} shard {shard} outside its block"
    on_disk = {str(p) for p in (tmp_path / "run" / "state.zarr" / f"v-{worker.FINAL_TAG}").rglob("*")
               if p.is_file() and "/c/" in str(p)}
    written = {k for k in shard_writes[0] | shard_writes[1] if f"v-{worker.FINAL_TAG}/" in k}
    assert on_disk == written
