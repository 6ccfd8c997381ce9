"""Zarr v3 persistence of the sample store: versioned, atomic, one writer per shard.

Layout of a run's state (local filesystem; the pointer switch relies on os.replace)::

    <run>/state.zarr/
        CURRENT                 text: the tag of the latest complete version
        v-<tag>/                one Zarr v3 group per version
            zarr.json           group attributes: tag, num_samples, num_processes, specs
            <array name>/       one array per ArraySpec, shape (N, *row_shape), sharding codec
            COMPLETE.json       written last, by the main process, once every process finished

Writing a version (`write_snapshot`, called by every process with the same tag):

1. main process: remove a leftover `v-<tag>` (a crashed earlier attempt; if it is CURRENT, first
   move CURRENT back to the newest other complete version), create the group and empty arrays;
   barrier.
2. every process writes its own block of rows, whole shards at a time; barrier.
3. main process: write COMPLETE.json, then replace CURRENT atomically (temp file + os.replace),
   then delete versions beyond the newest `keep`; barrier.

A crash anywhere before step 3's os.replace leaves CURRENT naming the previous complete version;
readers only follow CURRENT (or list versions that carry COMPLETE.json), so they never see a
half-written one.

Ownership (DESIGN rule 5: one Zarr shard, one writer): with P processes and chunk length C rows,
process r owns rows [r*S, min((r+1)*S, N)) with S = ceil(ceil(N/P) / C) * C. The shard length
along axis 0 divides S, so every block is a whole number of shards (the last one ends at N, the
array's edge) and no shard straddles two owners. Shards are capped near `MAX_SHARD_BYTES`
because zarr assembles a whole shard in memory before writing it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from state.sync import Communicator, SingleProcess

logger = logging.getLogger(__name__)

CURRENT = "CURRENT"
COMPLETE = "COMPLETE.json"
VERSION_PREFIX = "v-"
FORMAT = "noisyflow-sample-store/1"
TARGET_CHUNK_BYTES = 1 << 20  # 1 MiB inner chunks: the unit a reader of a few rows decodes
MAX_SHARD_BYTES = 256 << 20  # 256 MiB: bounds the transient memory of writing one shard
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# ---------------------------------------------------------------------------------------------
# layout: who owns which rows, and the shard/chunk shapes that respect it
@dataclass(frozen=True)
class Layout:
    num_rows: int
    num_processes: int
    chunk_rows: int  # C: rows per inner chunk
    block_rows: int  # S: rows per process block, a multiple of C
    shard_rows: int  # rows per Zarr shard; divides S

    def block(self, rank: int) -> tuple[int, int]:
        """Rows [lo, hi) process `rank` owns (empty when N is small and rank is high)."""
        lo = min(rank * self.block_rows, self.num_rows)
        return lo, min(lo + self.block_rows, self.num_rows)

    def shard_ranges(self, rank: int) -> list[tuple[int, int]]:
        """The whole shards (row ranges) inside process `rank`'s block."""
        lo, hi = self.block(rank)
        return [(s, min(s + self.shard_rows, hi)) for s in range(lo, hi, self.shard_rows)]


def _pow2_floor(x: int) -> int:
    return 1 << (max(int(x), 1).bit_length() - 1)


def plan_layout(num_rows: int, row_bytes: int, num_processes: int, *,
                target_chunk_bytes: int = TARGET_CHUNK_BYTES, max_shard_bytes: int = MAX_SHARD_BYTES) -> Layout:
    """Chunk, block and shard lengths (rows) for an (N, row) array written by `num_processes` owners."""
    if num_rows < 1 or num_processes < 1 or row_bytes < 1:
        raise ValueError(f"plan_layout needs num_rows, row_bytes, num_processes >= 1; got {num_rows}, "
                         f"{row_bytes}, {num_processes}")
    per_process = math.ceil(num_rows / num_processes)
    chunk = min(_pow2_floor(target_chunk_bytes // row_bytes), _pow2_floor(per_process))
    blocks_of_chunks = math.ceil(per_process / chunk)  # m: S = m * C
    block = blocks_of_chunks * chunk
    # The largest divisor d of m with d*C rows under the shard cap: whole shards per block.
    max_chunks_per_shard = max(1, max_shard_bytes // (chunk * row_bytes))
    d = max(k for k in range(1, min(blocks_of_chunks, max_chunks_per_shard) + 1) if blocks_of_chunks % k == 0)
    return Layout(num_rows=num_rows, num_processes=num_processes, chunk_rows=chunk, block_rows=block,
                  shard_rows=d * chunk)


# ---------------------------------------------------------------------------------------------
# versions and the CURRENT pointer
@dataclass(frozen=True)
class VersionInfo:
    tag: str
    seq: int  # 1, 2, ... in the order versions were completed
    written_at: float  # unix time COMPLETE.json was written
    num_samples: int
    num_processes: int
    path: Path


def check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _TAG_RE.match(tag):
        raise ValueError(f"snapshot tag {tag!r} must match {_TAG_RE.pattern} (e.g. 'epoch-0003')")
    return tag


def version_path(directory: str | os.PathLike, tag: str) -> Path:
    return Path(directory) / f"{VERSION_PREFIX}{check_tag(tag)}"


def list_versions(directory: str | os.PathLike) -> list[VersionInfo]:
    """Complete versions under a state.zarr directory, oldest first (half-written ones are left out)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    out = []
    for path in root.glob(f"{VERSION_PREFIX}*"):
        marker = path / COMPLETE
        if not marker.is_file():
            continue
        meta = json.loads(marker.read_text())
        out.append(VersionInfo(tag=meta["tag"], seq=int(meta["seq"]), written_at=float(meta["written_at"]),
                               num_samples=int(meta["num_samples"]), num_processes=int(meta["num_processes"]),
                               path=path))
    return sorted(out, key=lambda v: v.seq)


def read_current(directory: str | os.PathLike) -> str | None:
    """The tag CURRENT names, or None when no snapshot was completed yet."""
    pointer = Path(directory) / CURRENT
    if not pointer.is_file():
        return None
    return pointer.read_text().strip() or None


def _write_current(directory: Path, tag: str | None) -> None:
    pointer = directory / CURRENT
    if tag is None:
        pointer.unlink(missing_ok=True)
        return
    tmp = directory / f".{CURRENT}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(tag + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, pointer)  # atomic on POSIX: readers see the old tag or the new one, never a mix
    try:  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# writing
def _write_blocks(group_path: Path, arrays: dict[str, np.ndarray], layouts: dict[str, Layout], rank: int) -> None:
    """Write this process's whole shards of every array (a separate function so tests can break it)."""
    group = zarr.open_group(str(group_path), mode="r+")
    for name, table in arrays.items():
        target = group[name]
        for lo, hi in layouts[name].shard_ranges(rank):
            target[lo:hi] = table[lo:hi]


def write_snapshot(directory: str | os.PathLike, tag: str, arrays: dict[str, np.ndarray],
                   specs: list[dict[str, Any]], *, comm: Communicator | None = None, keep: int = 3,
                   compressors: Any = None) -> VersionInfo | None:
    """Write version `tag` of `arrays` (name -> (N, *row) array, identical in every process) atomically.

    Every process calls this with the same arguments. `compressors=None` stores raw bytes (soft
    labels hardly compress and the write is the cost to keep low); pass "auto" for zarr's default zstd.
    Returns the new VersionInfo (on every process).
    """
    comm = comm or SingleProcess()
    check_tag(tag)
    if keep < 1:
        raise ValueError(f"keep={keep}: at least the new version must be kept (keep >= 1)")
    root = Path(directory)
    vpath = version_path(root, tag)
    num_samples = {a.shape[0] for a in arrays.values()}
    if len(num_samples) != 1:
        raise ValueError(f"snapshot {tag!r}: arrays have different row counts {sorted(num_samples)}")
    n = num_samples.pop()
    layouts = {name: plan_layout(n, max(1, a.itemsize * int(np.prod(a.shape[1:], dtype=np.int64))),
                                 comm.num_processes) for name, a in arrays.items()}
    main = comm.process_index == 0
    started = time.perf_counter()
    if main:
        root.mkdir(parents=True, exist_ok=True)
        if vpath.exists():
            if read_current(root) == tag:
                older = [v for v in list_versions(root) if v.tag != tag]
                _write_current(root, older[-1].tag if older else None)
            logger.warning("replacing existing snapshot %s", vpath)
            shutil.rmtree(vpath)
        group = zarr.open_group(str(vpath), mode="w", attributes={
            "format": FORMAT, "tag": tag, "num_samples": n, "num_processes": comm.num_processes, "specs": specs})
        for name, table in arrays.items():
            lay = layouts[name]
            row = tuple(table.shape[1:])
            group.create_array(name, shape=table.shape, dtype=table.dtype, chunks=(lay.chunk_rows, *row),
                               shards=(lay.shard_rows, *row), compressors=compressors, fill_value=0,
                               attributes={"owner_block_rows": lay.block_rows})
    comm.barrier()
    _write_blocks(vpath, arrays, layouts, comm.process_index)
    comm.barrier()
    info = None
    if main:
        seq = max((v.seq for v in list_versions(root)), default=0) + 1
        meta = {"tag": tag, "seq": seq, "written_at": time.time(), "num_samples": n,
                "num_processes": comm.num_processes}
        (vpath / COMPLETE).write_text(json.dumps(meta))
        _write_current(root, tag)
        prune(root, keep)
        logger.info("snapshot %s written in %.2fs", vpath, time.perf_counter() - started)
    comm.barrier()
    for v in list_versions(root):
        if v.tag == tag:
            info = v
    return info


def prune(directory: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete versions and any half-written leftovers (main process only,
    never while another process writes). CURRENT's version is always kept. Returns what was deleted."""
    root = Path(directory)
    current = read_current(root)
    complete = list_versions(root)
    keep_paths = {v.path for v in complete[-keep:]} | ({version_path(root, current)} if current else set())
    removed = []
    for path in root.glob(f"{VERSION_PREFIX}*"):
        if path.is_dir() and path not in keep_paths:
            shutil.rmtree(path)
            removed.append(path)
    if removed:
        logger.info("pruned %d old snapshot(s) under %s", len(removed), root)
    return removed


# ---------------------------------------------------------------------------------------------
# reading
def resolve_tag(directory: str | os.PathLike, tag: str | None) -> str:
    if tag is not None:
        if not (version_path(directory, tag) / COMPLETE).is_file():
            known = [v.tag for v in list_versions(directory)]
            raise FileNotFoundError(f"no complete snapshot {tag!r} under {directory}; complete versions: {known}")
        return tag
    current = read_current(directory)
    if current is None:
        raise FileNotFoundError(f"no snapshot under {directory}: {CURRENT} is missing (no snapshot completed yet)")
    return current


def read_snapshot(directory: str | os.PathLike, tag: str | None = None,
                  names: list[str] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(group attributes, {name: numpy array}) of version `tag` (None: the one CURRENT names)."""
    tag = resolve_tag(directory, tag)
    group = zarr.open_group(str(version_path(directory, tag)), mode="r")
    attrs = dict(group.attrs)
    names = names if names is not None else [s["name"] for s in attrs["specs"]]
    arrays = {}
    for name in names:
        if name not in group:
            raise KeyError(f"snapshot {tag!r} under {directory} has no array {name!r}; "
                           f"it has {[s['name'] for s in attrs['specs']]}")
        arrays[name] = group[name][...]
    return attrs, arrays
