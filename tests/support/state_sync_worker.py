"""One process of the real 2-process sample-store test (tests/test_state_sync.py).

    ACCELERATE_USE_CPU=1 python -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 \
        --main_process_port <port> --mixed_precision no --dynamo_backend no tests/support/state_sync_worker.py <out dir> \
        [host|device]

Every process walks the same deterministic stream of global batches (`make_stream`), takes its own
part of each (unequal sizes, the last part padded with repeats of its first idx as a sharded
loader pads), and feeds it through ema/add/set updates, snapshotting twice with keep=2 and once
through an Accelerate checkpoint round trip. Each process writes to <out dir>:

    rank<r>.npz          its final tables
    rank<r>.json         {"writes": [zarr keys this process stored], "checkpoint_roundtrip": bool,
                          "loaded_equal": bool, "num_processes": P}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from state.spec import ArraySpec

N = 1001  # not a multiple of any chunk or process count
K = 10
STEPS = 9
ALPHA = 0.8
SNAPSHOT_STEPS = {3: "step-3", 6: "step-6"}
FINAL_TAG = "final"
KEEP = 2


def specs() -> list[ArraySpec]:
    return [ArraySpec("soft", (K,), "float32", "one_hot_labels"),
            ArraySpec("wrong", (), "int32", 0),
            ArraySpec("loss", (), "float64", -1.0)]


def labels() -> np.ndarray:
    return np.random.default_rng(7).integers(0, K, size=N)


def make_stream(num_processes: int):
    """Yield per step a list of per-process parts [(idx, soft (B_r, K), wrong (B_r,), loss (B_r,)), ...].

    Feeding the parts' concatenation to a 1-process store gives the same state as feeding the parts
    to the processes: the store keeps first occurrences in process order.
    """
    rng = np.random.default_rng(11)
    for step in range(STEPS):
        size = 150 + 13 * step  # a different global batch size every step
        idx = rng.choice(N, size=size, replace=False).astype(np.int64)
        bounds = np.linspace(0, size, num_processes + 1).astype(int)
        bounds[1:-1] += 3  # unequal parts: process 0 takes a few more
        parts = []
        for r in range(num_processes):
            part = idx[bounds[r]:bounds[r + 1]]
            if r == num_processes - 1:
                # padding: repeats of idx another process also has, with other values; the
                # store must keep process 0's rows (first occurrence in process order)
                part = np.concatenate([part, idx[:5]])
            b = len(part)
            soft = rng.dirichlet(np.ones(K), size=b).astype(np.float32)
            wrong = rng.integers(0, 2, size=b).astype(np.int32)
            loss = rng.random(b)
            parts.append((part, soft, wrong, loss))
        yield step, parts


def apply_step(store, part) -> None:
    idx, soft, wrong, loss = part
    store.ema("soft", idx, soft, ALPHA)
    store.add("wrong", idx, wrong)
    store.set("loss", idx, loss)


def main(argv: list[str] | None = None) -> int:
    import torch
    import zarr.storage
    from accelerate import Accelerator

    from state.store import SampleStore
    from state.sync import communicator_for

    args = argv if argv is not None else sys.argv[1:]
    out = Path(args[0])
    device = "cpu" if args[1:] == ["device"] else None  # the store's placement; "device" is the CPU here
    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes

    # Record every key this process stores into Zarr (the real writes, not the block math).
    writes: list[str] = []
    original_set = zarr.storage.LocalStore.set

    async def recording_set(self, key, value):
        writes.append(f"{self.root}/{key}")
        return await original_set(self, key, value)

    zarr.storage.LocalStore.set = recording_set

    comm = communicator_for(accelerator)
    store = SampleStore(specs(), N, labels=labels(), num_classes=K, comm=comm, device=device)
    accelerator.register_for_checkpointing(store)
    state_dir = out / "run" / "state.zarr"
    for step, parts in make_stream(world):
        idx, soft, wrong, loss = parts[rank]
        apply_step(store, (torch.from_numpy(idx), torch.from_numpy(soft), torch.from_numpy(wrong),
                           torch.from_numpy(loss)))
        if step in SNAPSHOT_STEPS:
            store.snapshot(state_dir, SNAPSHOT_STEPS[step], keep=KEEP)

    # Accelerate checkpoint round trip: snapshot, save_state, change the store, load_state.
    store.snapshot(state_dir, FINAL_TAG, keep=KEEP)
    final = {name: store[name].copy() for name in store.names}
    accelerator.save_state(str(out / "run" / "checkpoints" / "checkpoint_0"))
    store.add("wrong", torch.arange(N), torch.ones(N, dtype=torch.int32))
    accelerator.load_state(str(out / "run" / "checkpoints" / "checkpoint_0"))
    roundtrip = all(np.array_equal(store[name], final[name]) for name in final)

    fresh = SampleStore(specs(), N, labels=labels(), num_classes=K, comm=comm, device=device)
    fresh.load(state_dir)
    loaded_equal = all(np.array_equal(fresh[name], final[name]) for name in final)

    zarr.storage.LocalStore.set = original_set
    np.savez(out / f"rank{rank}.npz", **final)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "writes": writes, "checkpoint_roundtrip": roundtrip, "loaded_equal": loaded_equal, "num_processes": world}))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
