"""Benchmark the sample store: numba kernels vs torch and numpy indexing, snapshot write/read, memory.

    python tools/bench_state.py                   # full grid: N in {50k, 1M} x K in {10, 14, 100, 1000}
    python tools/bench_state.py --quick           # fewer repeats, smaller snapshot sizes

Per (N, K) float32 table and a 4,096-row batch of distinct idx, each operation is timed per call
(after warm-up calls) and reported as median and interquartile range in microseconds:

    gather  numba gather_rows     | torch index_select      | numpy table[idx]
    set     numba set_rows        | torch index_put_        | numpy table[idx] = v
    ema     numba ema_rows        | torch index_select + index_put_ | numpy table[idx] = a*table[idx] + (1-a)*v
    add     numba add_rows        | torch index_add_        | numpy table[idx] += v
    store.ema: SampleStore.ema end to end in one process (torch inputs -> numpy, sentinel/duplicate
               drop, kernel), what a training step pays.

Snapshots: SampleStore.snapshot of one float32 (N, K) array (raw bytes, the default) and a load
back; time, bytes on disk, and for comparison one zstd-compressed write. Memory: resident set after
allocating each table and the process's peak (resource.getrusage); the store is replicated, so
each training process holds the same N x K x 4 bytes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import torch
import zarr

from state import kernels, persist
from state.spec import ArraySpec
from state.store import SampleStore
from training.outputs import cpu_model

ALPHA = 0.9




def rss_mb() -> float:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def time_calls(fn, batches, warmup: int, repeats: int) -> tuple[float, float]:
    """(median, IQR) in microseconds of fn(batch) over `repeats` calls after `warmup` calls."""
    for i in range(warmup):
        fn(batches[i % len(batches)])
    times = np.empty(repeats)
    for i in range(repeats):
        batch = batches[(warmup + i) % len(batches)]
        t0 = time.perf_counter_ns()
        fn(batch)
        times[i] = time.perf_counter_ns() - t0
    q1, med, q3 = np.percentile(times / 1e3, [25, 50, 75])
    return float(med), float(q3 - q1)


def bench_kernels(n: int, k: int, batch: int, warmup: int, repeats: int, rng) -> tuple[list[tuple], float]:
    table = np.full((n, k), 0.1, dtype=np.float32)  # (N, K) touched pages, like a live store
    resident = rss_mb()
    tt = torch.from_numpy(table)  # shares memory with the numpy table
    # A fresh idx batch for every call (cycling a few would keep their rows cache-hot); values repeat.
    values_pool = [rng.random((min(batch, n), k), dtype=np.float32) for _ in range(4)]
    batches = []
    for i in range(warmup + repeats):
        idx = rng.choice(n, size=min(batch, n), replace=False).astype(np.int64)
        values = values_pool[i % len(values_pool)]
        batches.append((idx, values, torch.from_numpy(idx), torch.from_numpy(values)))

    def torch_ema(b):
        rows = tt.index_select(0, b[2])
        tt.index_put_((b[2],), rows.mul_(ALPHA).add_(b[3], alpha=1 - ALPHA))

    def numpy_ema(b):
        table[b[0]] = ALPHA * table[b[0]] + (1 - ALPHA) * b[1]

    def numpy_set(b):
        table[b[0]] = b[1]

    def numpy_add(b):
        table[b[0]] += b[1]  # idx are distinct here; np.add.at would be needed with repeats

    ops = {
        "gather": (lambda b: kernels.gather_rows(table, b[0]), lambda b: tt.index_select(0, b[2]),
                   lambda b: table[b[0]]),
        "set": (lambda b: kernels.set_rows(table, b[0], b[1]), lambda b: tt.index_put_((b[2],), b[3]), numpy_set),
        "ema": (lambda b: kernels.ema_rows(table, b[0], b[1], ALPHA), torch_ema, numpy_ema),
        "add": (lambda b: kernels.add_rows(table, b[0], b[1]), lambda b: tt.index_add_(0, b[2], b[3]), numpy_add),
    }
    rows = []
    for op, (nb, th, npy) in ops.items():
        results = [time_calls(f, batches, warmup, repeats) for f in (nb, th, npy)]
        rows.append((n, k, op, *results))
    # End to end through the store; it adopts this table rather than allocating a second (N, K) one.
    store = SampleStore([ArraySpec("soft", (k,), "float32", 0.0)], 1)
    store.num_samples, store._seen = n, np.zeros(n, dtype=np.uint8)
    store._tables["soft"] = table
    store_ema = time_calls(lambda b: store.ema("soft", b[2], b[3], ALPHA), batches, warmup, repeats)
    rows.append((n, k, "store.ema", store_ema, None, None))
    return rows, resident


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_snapshot(n: int, k: int, repeats: int, rng, compressors=None) -> dict:
    store = SampleStore([ArraySpec("soft", (k,), "float32", 0.0)], n)
    store._tables["soft"][:] = rng.random((n, k), dtype=np.float32)  # incompressible-ish, like soft labels
    root = Path(tempfile.mkdtemp(prefix="bench_state_"))
    try:
        writes, reads = [], []
        for r in range(repeats):
            t0 = time.perf_counter()
            if compressors is None:
                store.snapshot(root / "state.zarr", f"r{r}", keep=1)
            else:
                persist.write_snapshot(root / "state.zarr", f"r{r}", store._tables, store._spec_dicts(),
                                       keep=1, compressors=compressors)
            writes.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            persist.read_snapshot(root / "state.zarr")
            reads.append(time.perf_counter() - t0)
        size = dir_bytes(root / "state.zarr" / f"v-r{repeats - 1}")
        lay = persist.plan_layout(n, 4 * k, 1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"n": n, "k": k, "mb": n * k * 4 / 1e6, "write": float(np.median(writes)), "read": float(np.median(reads)),
            "disk_mb": size / 1e6, "codec": "raw" if compressors is None else "zstd",
            "chunk": lay.chunk_rows, "shard": lay.shard_rows}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_state.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    grid = parser.add_argument_group("kernel grid")
    grid.add_argument("--sizes", type=int, nargs="+", default=[50_000, 1_000_000], help="table rows N")
    grid.add_argument("--widths", type=int, nargs="+", default=[10, 14, 100, 1000], help="row widths K")
    grid.add_argument("--batch", type=int, default=4096, help="rows per update batch")
    grid.add_argument("--warmup", type=int, default=10, help="untimed calls before timing")
    grid.add_argument("--repeats", type=int, default=100, help="timed calls per measurement")
    grid.add_argument("--max-gb", type=float, default=6.0, help="skip tables larger than this (GB)")
    snap = parser.add_argument_group("snapshots")
    snap.add_argument("--snapshots", nargs="+", default=["50000x10", "1000000x14", "1000000x100"],
                      help="NxK float32 arrays to snapshot")
    snap.add_argument("--snapshot-repeats", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads (1: numba and numpy are single-threaded too; on a busy "
                             "2-core machine torch's OpenMP spin-waits cost milliseconds)")
    parser.add_argument("--quick", action="store_true", help="30 repeats, snapshots 50000x10 and 1000000x14 only")
    return parser


def fmt(cell) -> str:
    return "" if cell is None else f"{cell[0]:.0f} ± {cell[1]:.0f}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.repeats, args.snapshots = 30, ["50000x10", "1000000x14"]
    torch.set_num_threads(args.torch_threads)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    print(f"# sample store benchmark, {datetime.datetime.now().isoformat(timespec='seconds')}")
    command = " ".join(["python tools/bench_state.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"- command: `{command}`")
    print(f"- hardware: {cpu_model()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM; torch threads "
          f"{torch.get_num_threads()}; load average at start {os.getloadavg()[0]:.2f}")
    print(f"- versions: python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
          f"torch {torch.__version__}, zarr {zarr.__version__}")
    print(f"- float32 tables, {args.batch}-row batches of distinct idx, {args.warmup} warm-up + {args.repeats} "
          "timed calls; cells are median ± IQR in microseconds per call\n")
    print("| N | K | op | numba | torch | numpy | RSS after alloc (MB) |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for n in args.sizes:
        for k in args.widths:
            gb = n * k * 4 / 1e9
            if gb > args.max_gb:
                print(f"| {n:,} | {k} | all | skipped: table {gb:.1f} GB > --max-gb {args.max_gb} | | | |")
                continue
            rows, resident = bench_kernels(n, k, args.batch, args.warmup, args.repeats, rng)
            for i, (rn, rk, op, nb, th, npy) in enumerate(rows):
                mem = f"{resident:.0f}" if i == 0 else ""
                print(f"| {rn:,} | {rk} | {op} | {fmt(nb)} | {fmt(th)} | {fmt(npy)} | {mem} |", flush=True)
    print("\n| array (float32) | MB | codec | chunk x shard rows | write (s) | MB/s | read (s) | on disk (MB) |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    specs = [(int(a), int(b)) for a, b in (s.lower().split("x") for s in args.snapshots)]
    runs = [(n, k, None) for n, k in specs] + [(1_000_000, 14, "auto")]
    for n, k, comp in runs:
        r = bench_snapshot(n, k, args.snapshot_repeats, rng, comp)
        print(f"| {r['n']:,} x {r['k']} | {r['mb']:.0f} | {r['codec']} | {r['chunk']:,} x {r['shard']:,} | "
              f"{r['write']:.3f} | {r['mb'] / r['write']:.0f} | {r['read']:.3f} | {r['disk_mb']:.1f} |", flush=True)
    print(f"\npeak RSS of this process: {peak_rss_mb():.0f} MB; total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
