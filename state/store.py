"""SampleStore: per-sample arrays a method declares, replicated on every process, where the step runs.

DESIGN rule 5. Each ArraySpec becomes an array (N, *row_shape) indexed by the global idx, kept
either on the training device as a torch tensor (device-resident: torch index ops, no host round
trip per step) or in host memory as a numpy array (host-resident: numba kernels); `choose_placement`
picks one. Both give bit-identical results through one API. Updates arrive as (idx, values)
batches from the training step; every update call

1. gathers the step's (idx, values) from all processes (state.sync; unequal batch sizes are padded
   with idx = -1),
2. drops the padding sentinels and duplicate idx, keeping the first occurrence in gathered order
   (process 0's rows first, then process 1's, ...): duplicates are padding repeats of a sample,
3. runs the kernel (state.kernels) on the table.

A device-resident store does step 2 with fixed-shape masks (dropped rows go to a scratch row N),
so no step waits for the device; an idx outside [0, N) is then reported at the next read of the
store from the host (store[name], snapshot, check()) instead of by the update itself.

Every process applies the same rows in the same order, so the replicas stay bit-identical.
Update calls are collective: with several processes every process must make the same sequence of
update calls (an empty batch is fine), like any torch.distributed collective.

Checkpoints (Accelerate): the store's state is its latest snapshot. The trainer does

    store = SampleStore(method.state_arrays(), N, labels=noisy, num_classes=K, comm=communicator_for(acc))
    accelerator.register_for_checkpointing(store)
    ...
    store.snapshot(run_dir / "state.zarr", tag=f"step-{step:09d}")   # every process
    accelerator.save_state(ckpt_dir)        # pickles store.state_dict() = {"snapshot_dir", "tag", ...}
    ...
    accelerator.load_state(ckpt_dir)        # --resume: calls store.load_state_dict(d) -> store.load(dir, tag)

so a resume restores exactly the version taken with that checkpoint, even if later snapshots
exist. `snapshot(..., keep=k)` keeps the newest k versions: keep at least as many as the
checkpoints Accelerate keeps (ProjectConfiguration.total_limit).

Scale: every process holds the full tables (N x row bytes each; e.g. 50k x 100 float32 = 20 MB,
1M x 1000 float32 = 4 GB per process). Beyond what fits in host memory times the processes per
node (WebVision-1000: 2.4M x 1000 float32 = 9.6 GB per process) an owner-partitioned mode is
needed: process r keeps only its persistence block [r*S, (r+1)*S) (state.persist.Layout), updates
are routed to owners with an all_to_all instead of an all_gather, and gather() fetches remote rows.
The persistence layout already matches that ownership; the partitioned mode is not built yet.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from state import kernels, persist
from state.spec import ArraySpec
from state.sync import Communicator, SingleProcess

logger = logging.getLogger(__name__)

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int32": torch.int32, "int64": torch.int64}


PLACEMENTS = ("auto", "device", "host")


def store_bytes(specs: list[ArraySpec], num_samples: int) -> int:
    """Bytes of all the arrays of a store of `num_samples` rows (per process)."""
    return sum(num_samples * int(np.prod(s.row_shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize for s in specs)


def choose_placement(placement: str, specs: list[ArraySpec], num_samples: int, device: torch.device,
                     budget_bytes: float) -> torch.device | None:
    """The device for a device-resident store, or None for host memory. auto: the training device when it is
    a CUDA GPU and the arrays fit in budget_bytes; device: the training device whatever its kind."""
    if placement not in PLACEMENTS:
        raise ValueError(f"state placement {placement!r}: use one of {PLACEMENTS}")
    device = torch.device(device)
    if placement == "device" or (placement == "auto" and device.type == "cuda"
                                 and store_bytes(specs, num_samples) <= budget_bytes):
        return device
    return None


def _to_numpy(x, dtype: np.dtype | None = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16
            x = x.float()
        x = x.cpu().numpy()
    x = np.asarray(x)
    return np.ascontiguousarray(x, dtype=dtype) if dtype is not None else np.ascontiguousarray(x)


class SampleStore:
    """Per-sample arrays (one per ArraySpec), rows indexed by the global idx, replicated on every process.

    device=None keeps them in host memory (numba kernels); a torch device keeps them there (torch ops).
    """

    def __init__(self, specs: list[ArraySpec], num_samples: int, *, labels: np.ndarray | torch.Tensor | None = None,
                 num_classes: int | None = None, comm: Communicator | None = None,
                 device: torch.device | str | None = None):
        if num_samples < 1:
            raise ValueError(f"SampleStore needs num_samples >= 1, got {num_samples}")
        self.specs = {s.name: s for s in specs}
        if len(self.specs) != len(specs):
            raise ValueError(f"duplicate array names in {[s.name for s in specs]}")
        self.num_samples = int(num_samples)
        self.comm = comm or SingleProcess()
        self.device = None if device is None else torch.device(device)
        # host: numpy (N, *row_shape); device: torch (N + 1, *row_shape), row N the scratch row of dropped updates
        self._tables: dict[str, np.ndarray | torch.Tensor] = {}
        self._seen = np.zeros(self.num_samples, dtype=np.uint8)  # scratch of kernels.first_occurrences
        # device: (count, an example) of idx outside [0, N) since the last check, kept on the device
        self._bad = None if self.device is None else torch.zeros(2, dtype=torch.int64, device=self.device)
        self.snapshot_dir: str | None = None
        self.snapshot_tag: str | None = None
        for spec in specs:
            self._tables[spec.name] = self._placed(self._init_table(spec, labels, num_classes))
        where = "host memory (numba kernels)" if self.device is None else f"{self.device} (torch)"
        logger.info("sample store: %s, %.1f MB per process, in %s", self.names,
                    store_bytes(specs, self.num_samples) / 2**20, where)

    @property
    def placement(self) -> str:
        return "host" if self.device is None else "device"

    def _placed(self, array: np.ndarray) -> np.ndarray | torch.Tensor:
        """A full (N, ...) numpy array as this store keeps it."""
        if self.device is None:
            return np.ascontiguousarray(array)
        table = torch.zeros((array.shape[0] + 1, *array.shape[1:]), dtype=_TORCH_DTYPES[array.dtype.name],
                            device=self.device)
        table[: array.shape[0]] = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        return table

    # -----------------------------------------------------------------------------------------
    # construction
    def _init_table(self, spec: ArraySpec, labels, num_classes: int | None) -> np.ndarray:
        if spec.dtype not in kernels.SUPPORTED_DTYPES:
            raise ValueError(f"state array {spec.name!r}: dtype {spec.dtype!r} is not supported; "
                             f"use one of {kernels.SUPPORTED_DTYPES}")
        shape = (self.num_samples, *spec.row_shape)
        if isinstance(spec.init, str):
            if spec.init != "one_hot_labels":
                raise ValueError(f"state array {spec.name!r}: unknown init {spec.init!r}; "
                                 "use a number or 'one_hot_labels'")
            if labels is None:
                raise ValueError(f"state array {spec.name!r} has init='one_hot_labels': "
                                 "pass labels= (N,) to SampleStore")
            if len(spec.row_shape) != 1:
                raise ValueError(f"state array {spec.name!r}: one_hot_labels needs row_shape (K,), "
                                 f"got {spec.row_shape}")
            k = spec.row_shape[0]
            if num_classes is not None and num_classes != k:
                raise ValueError(f"state array {spec.name!r}: row_shape ({k},) but num_classes={num_classes}")
            y = _to_numpy(labels).astype(np.int64).reshape(-1)
            if y.shape[0] != self.num_samples:
                raise ValueError(f"state array {spec.name!r}: {y.shape[0]} labels for {self.num_samples} samples")
            bad = np.flatnonzero((y < 0) | (y >= k))
            if len(bad):
                raise ValueError(f"state array {spec.name!r}: label {y[bad[0]]} of sample idx {bad[0]} is outside "
                                 f"[0, {k}); check the label set and num_classes")
            table = np.zeros(shape, dtype=spec.dtype)
            table[np.arange(self.num_samples), y] = 1
            return table
        return np.full(shape, spec.init, dtype=spec.dtype)

    # -----------------------------------------------------------------------------------------
    # reading
    @property
    def names(self) -> list[str]:
        return list(self._tables)

    def __getitem__(self, name: str) -> np.ndarray:
        """The whole array (N, *row_shape) as a read-only numpy array (change it only through the update methods).

        Host-resident: a view; device-resident: a host copy (one device read, for epoch-end use)."""
        table = self._table(name)
        if self.device is not None:
            self.check()
            table = table[: self.num_samples].cpu().numpy()
        view = table.view()
        view.flags.writeable = False
        return view

    def gather(self, name: str, idx) -> np.ndarray | torch.Tensor:
        """Rows of `name` for a batch: idx (B,) int (numpy or torch, any device) -> (B, *row_shape), a numpy
        array when host-resident, a tensor on the store's device when device-resident.

        torch.as_tensor(rows, device=device) takes either to the caller's device (a no-op for the tensor).
        """
        table = self._table(name)
        if self.device is not None:
            idx = torch.as_tensor(idx).reshape(-1).to(device=self.device, dtype=torch.int64)
            bad = (idx < 0) | (idx >= self.num_samples)
            self._note_bad(idx, bad)
            rows = kernels.gather_rows_torch(self._flat(table), torch.where(bad, 0, idx))
            return rows.reshape((idx.shape[0], *table.shape[1:]))
        idx = _to_numpy(idx, np.int64).reshape(-1)
        bad = np.flatnonzero((idx < 0) | (idx >= self.num_samples))
        if len(bad):
            raise IndexError(f"gather({name!r}): idx {idx[bad[0]]} at position {bad[0]} is outside "
                             f"[0, {self.num_samples})")
        rows = kernels.gather_rows(self._flat(table), idx)
        return rows.reshape((idx.shape[0], *table.shape[1:]))

    # -----------------------------------------------------------------------------------------
    # updates (collective)
    def set(self, name: str, idx, values) -> int:
        """Rows idx := values. Returns the number of rows written after gathering and de-duplication (an int;
        a 0-dim tensor on the device when device-resident, so that the step need not wait for it)."""
        return self._update(name, idx, values, "set")

    def ema(self, name: str, idx, values, alpha: float) -> int:
        """Rows idx := alpha * rows + (1 - alpha) * values (float arrays). Returns the rows updated."""
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"ema({name!r}): alpha={alpha} must lie in [0, 1]")
        return self._update(name, idx, values, "ema", float(alpha))

    def add(self, name: str, idx, values) -> int:
        """Rows idx += values (counters). Returns the rows updated."""
        return self._update(name, idx, values, "add")

    def _update(self, name: str, idx, values, op: str, alpha: float = 0.0) -> int | torch.Tensor:
        table = self._table(name)
        dtype = self.specs[name].dtype
        if op == "ema" and dtype not in kernels.FLOAT_DTYPES:
            raise TypeError(f"ema({name!r}): array dtype {dtype} is not a float type; use set or add")
        row_shape = table.shape[1:]
        idx_t = torch.as_tensor(idx).reshape(-1).to(torch.int64)
        values_t = torch.as_tensor(values)
        # Gather on the store's device, else the values' device (NCCL needs CUDA tensors); idx follows.
        device = values_t.device if isinstance(values, torch.Tensor) else idx_t.device
        device = self.device or device
        idx_t = idx_t.to(device)
        if values_t.ndim == 0:  # a scalar for every row, e.g. add(name, idx, 1)
            values_t = values_t.expand((idx_t.shape[0], *row_shape))
        if tuple(values_t.shape) != (idx_t.shape[0], *row_shape):
            raise ValueError(f"{op}({name!r}): values have shape {tuple(values_t.shape)}, expected "
                             f"{(idx_t.shape[0], *row_shape)} for {idx_t.shape[0]} idx")
        values_t = values_t.to(device=device, dtype=_TORCH_DTYPES[dtype]).contiguous()
        idx_t, values_t = self.comm.all_gather_padded(idx_t, values_t)
        if self.device is not None:
            width = int(np.prod(row_shape, dtype=np.int64))
            return self._update_on_device(table, idx_t, values_t.reshape(idx_t.shape[0], width), op, alpha)
        idx_np = _to_numpy(idx_t, np.int64)
        values_np = _to_numpy(values_t, table.dtype).reshape(idx_np.shape[0], -1)
        keep, bad = kernels.first_occurrences(idx_np, self.num_samples, self._seen)
        if bad >= 0:
            raise IndexError(f"{op}({name!r}): idx {idx_np[bad]} (row {bad} of the gathered batch) is outside "
                             f"[0, {self.num_samples})")
        if keep.shape[0] != idx_np.shape[0]:
            idx_np, values_np = idx_np[keep], np.ascontiguousarray(values_np[keep])
        flat = self._flat(table)
        if op == "set":
            kernels.set_rows(flat, idx_np, values_np)
        elif op == "ema":
            kernels.ema_rows(flat, idx_np, values_np, alpha)
        else:
            kernels.add_rows(flat, idx_np, values_np)
        return int(idx_np.shape[0])

    def _update_on_device(self, table: torch.Tensor, idx: torch.Tensor, values: torch.Tensor, op: str,
                          alpha: float) -> torch.Tensor:
        keep, bad = kernels.first_occurrences_torch(idx, self.num_samples)
        self._note_bad(idx, bad)
        target = torch.where(keep, idx, self.num_samples)  # dropped rows land on the scratch row
        flat = self._flat(table)
        if op == "set":
            kernels.set_rows_torch(flat, target, values)
        elif op == "ema":
            kernels.ema_rows_torch(flat, target, values, alpha)
        else:
            kernels.add_rows_torch(flat, target, values)
        return keep.sum()

    def _note_bad(self, idx: torch.Tensor, bad: torch.Tensor) -> None:
        """Counts idx outside [0, N) on the device and keeps the first one seen, for check()."""
        # index_select, not idx[t]: indexing with a 0-dim tensor reads it on the host
        first = idx.index_select(0, bad.to(torch.uint8).argmax().reshape(1))[0] if idx.numel() else self._bad[1]
        self._bad[1] = torch.where((self._bad[0] == 0) & bad.any(), first, self._bad[1])
        self._bad[0] += bad.sum()

    def check(self) -> None:
        """Device-resident: raise if an update or gather since the last check had an idx outside [0, N) (those
        rows were dropped). One device read; the trainer calls it once an epoch. Host-resident: a no-op, the
        calls themselves raise."""
        if self._bad is None:
            return
        count, example = self._bad.tolist()
        if count:
            self._bad.zero_()
            raise IndexError(f"the sample store was given {count} idx outside [0, {self.num_samples}) since the "
                             f"last check, e.g. {example}; the batches' idx do not belong to this split")

    # -----------------------------------------------------------------------------------------
    # persistence and checkpoints
    def _spec_dicts(self) -> list[dict[str, Any]]:
        return [{"name": s.name, "row_shape": list(s.row_shape), "dtype": s.dtype, "init": s.init}
                for s in self.specs.values()]

    def snapshot(self, directory: str | os.PathLike, tag: str, *, keep: int = 3) -> persist.VersionInfo:
        """Write version `tag` under `directory` (<run>/state.zarr) atomically; collective (every process calls).

        Keeps the newest `keep` versions. Afterwards state_dict() names this version.
        """
        arrays = self._tables if self.device is None else {name: self[name] for name in self.names}
        info = persist.write_snapshot(directory, tag, arrays, self._spec_dicts(), comm=self.comm, keep=keep)
        self.snapshot_dir, self.snapshot_tag = str(directory), tag
        return info

    def load(self, directory: str | os.PathLike, tag: str | None = None) -> str:
        """Replace every array by version `tag` (None: the one CURRENT names). Returns the tag loaded."""
        tag = persist.resolve_tag(directory, tag)
        attrs, arrays = persist.read_snapshot(directory, tag, names=self.names)
        if int(attrs["num_samples"]) != self.num_samples:
            raise ValueError(f"snapshot {tag!r} under {directory} has {attrs['num_samples']} samples, "
                             f"this store {self.num_samples}; it belongs to another split or dataset")
        for name, arr in arrays.items():
            spec = self.specs[name]
            shape = (self.num_samples, *spec.row_shape)
            if arr.shape != shape or arr.dtype != np.dtype(spec.dtype):
                raise ValueError(f"snapshot {tag!r} array {name!r} is {arr.shape} {arr.dtype}, the method "
                                 f"declares {shape} {spec.dtype}; was the method's config changed?")
            self._tables[name] = self._placed(arr)
        self.snapshot_dir, self.snapshot_tag = str(directory), tag
        logger.info("sample store loaded snapshot %s from %s", tag, directory)
        return tag

    def state_dict(self) -> dict[str, Any]:
        """For accelerator.register_for_checkpointing: names the latest snapshot (take one right before save_state)."""
        if self.snapshot_tag is None:
            raise RuntimeError("SampleStore.state_dict(): no snapshot yet; call store.snapshot(<run>/state.zarr, tag) "
                               "right before accelerator.save_state()")
        return {"snapshot_dir": self.snapshot_dir, "tag": self.snapshot_tag, "num_samples": self.num_samples,
                "names": self.names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        snapshot_dir = state["snapshot_dir"]
        if not Path(snapshot_dir).is_dir():
            raise FileNotFoundError(f"the checkpoint names sample-store snapshots under {snapshot_dir}, which does "
                                    "not exist; was the run directory moved? Restore it or start without --resume")
        self.load(snapshot_dir, state["tag"])

    # -----------------------------------------------------------------------------------------
    def _table(self, name: str) -> np.ndarray | torch.Tensor:
        try:
            return self._tables[name]
        except KeyError:
            raise KeyError(f"sample store has no array {name!r}; it has {self.names}") from None

    @staticmethod
    def _flat(table):
        return table.reshape(table.shape[0], -1)  # (N, R) view of a C-contiguous table (numpy or torch)
