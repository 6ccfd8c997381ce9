"""Scale check: a synthetic Clothing1M-shaped dataset converts and streams for one epoch on this machine.

1. generate (not timed as conversion): N train + N/100 test 32x32 JPEGs in Clothing1M's official
   layout (images/x/yy/<id>.jpg, noisy/clean kv files, key lists, 14 classes), drawn from a pool of
   procedurally made images (gradients + noise) so every file is a real JPEG;
2. convert with tools/make_shards.py in a subprocess (the real CLI: list parsing, existence checks,
   parallel verification, shards, journal, labels, manifest): wall time, shard bytes, peak RSS of the
   converter and of each worker process;
3. stream one training epoch of the train split with pipeline.load.loader.make_loader(mode="stream") in a
   subprocess: img/s and its peak RSS;
4. sample-store bytes per process for ALR soft labels at K = 14: N x 14 x 4 (float32), replicated in
   every process (state/store.py).

  python tools/bench_scale.py --n 1000000 --work /tmp/scale     # prints a markdown section
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from training.outputs import cpu_model

REPO = Path(__file__).resolve().parents[1]
K = 14




def make_pool(size: int, seed: int = 0) -> list[bytes]:
    """`size` distinct 32x32 JPEGs: a random two-colour gradient plus noise each."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 32)[None, :, None]  # (1, W, 1)
    out = []
    for _ in range(size):
        a, b = rng.integers(0, 256, (2, 3))
        pixels = a + (b - a) * ramp + rng.normal(0, 12, (32, 32, 3))  # (H, W, 3)
        buf = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def generate(root: Path, n: int, n_test: int, seed: int = 0) -> float:
    """Writes the Clothing1M layout; returns seconds taken."""
    start = time.perf_counter()
    pool = make_pool(1000, seed)
    rng = np.random.default_rng(seed)
    noisy = rng.integers(0, K, n + n_test)
    for x in range(10):
        for yy in range(100):
            (root / "images" / str(x) / f"{yy:02d}").mkdir(parents=True, exist_ok=True)
    keys = [f"images/{i % 10}/{(i // 10) % 100:02d}/{i:08d}.jpg" for i in range(n + n_test)]
    for i, key in enumerate(keys):
        (root / key).write_bytes(pool[i % len(pool)])
    (root / "category_names_eng.txt").write_text("".join(f"class{c}\n" for c in range(K)))
    with open(root / "noisy_label_kv.txt", "w") as f:
        f.writelines(f"{keys[i]} {noisy[i]}\n" for i in range(n))
    with open(root / "noisy_train_key_list.txt", "w") as f:
        f.writelines(f"{keys[i]}\n" for i in range(n))
    with open(root / "clean_label_kv.txt", "w") as f:
        f.writelines(f"{keys[i]} {noisy[i]}\n" for i in range(n, n + n_test))
    for name in ("clean_train", "clean_val", "clean_test"):
        with open(root / f"{name}_key_list.txt", "w") as f:
            f.writelines(f"{keys[i]}\n" for i in range(n, n + n_test) if name == "clean_test" or i == n)
    return time.perf_counter() - start


def status_bytes(status: str, field: str) -> int:
    """A "<field>: <n> kB" line of /proc/<pid>/status, in bytes."""
    return next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith(field + ":"))


class PeakRSS:
    """Polls a process tree; keeps each process's peak resident set (VmHWM) while it lives, and the
    polled peaks of its two parts: RssAnon (its own memory) and RssFile (file pages it maps, e.g. a
    memory-mapped tar: page cache the kernel may drop, not memory the process allocated)."""

    def __init__(self, pid: int, every: float = 0.5):
        self.peaks: dict[int, tuple[str, int]] = {}
        self.anon: dict[int, int] = {}
        self.file: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pid, every), daemon=True)
        self._thread.start()

    def _run(self, pid: int, every: float) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(pid)
                for p in [root, *root.children(recursive=True)]:
                    status = Path(f"/proc/{p.pid}/status").read_text()
                    name = "main" if p.pid == pid else "worker"
                    self.peaks[p.pid] = (name, max(status_bytes(status, "VmHWM"), self.peaks.get(p.pid, ("", 0))[1]))
                    self.anon[p.pid] = max(status_bytes(status, "RssAnon"), self.anon.get(p.pid, 0))
                    self.file[p.pid] = max(status_bytes(status, "RssFile"), self.file.get(p.pid, 0))
            except (psutil.Error, OSError, StopIteration):
                pass
            self._stop.wait(every)

    def stop(self) -> dict[int, tuple[str, int]]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def run_measured(cmd: list[str]) -> tuple[float, PeakRSS, str]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    meter = PeakRSS(proc.pid)
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    meter.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return wall, meter, out


def stream_epoch(dataset_dir: str, batch_size: int, threads: int, dont_use_mmap: bool) -> None:
    """Child process: one training epoch of the DALI stream loader; prints a JSON line."""
    import torch

    from pipeline.format.dataset import Dataset
    from pipeline.load import transforms as T
    from pipeline.load.dali_loader import DaliLoader

    torch.set_num_threads(1)
    ds = Dataset(dataset_dir)
    loader = DaliLoader(ds, "train", batch_size=batch_size, train=True, dont_use_mmap=dont_use_mmap,
                        transform=T.TransformConfig(kind="cifar", size=32, mean=(0.5,) * 3, std=(0.25,) * 3),
                        device=torch.device("cpu"), num_threads=threads)
    loader.set_epoch(0)
    start, seen, first = time.perf_counter(), 0, None
    for batch in loader:
        if first is None:
            first = time.perf_counter() - start
        seen += int(batch.idx.shape[0])
    wall = time.perf_counter() - start
    print(json.dumps({"images": seen, "seconds": wall, "first_batch_s": first, "steps": len(loader)}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="train images (default: %(default)s)")
    p.add_argument("--work", type=Path, default=Path("/tmp/noisyflow-scale"), help="scratch folder")
    p.add_argument("--workers", type=int, default=2, help="make_shards --workers (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--loader-threads", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="reuse generated images in --work if present")
    p.add_argument("--phase", choices=["all", "stream"], default="all", help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--dont-use-mmap", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase == "stream":
        stream_epoch(args.dataset, args.batch_size, args.loader_threads, args.dont_use_mmap)
        return 0
    src, out = args.work / "clothing1M-synthetic", args.work / "data"
    n_test = max(args.n // 100, 100)
    if args.keep and (src / "noisy_train_key_list.txt").is_file():
        gen_s = float("nan")
    else:
        subprocess.run(["rm", "-rf", str(args.work)], check=True)
        src.mkdir(parents=True)
        gen_s = generate(src, args.n, n_test)
    subprocess.run(["rm", "-rf", str(out)], check=True)
    load_before = os.getloadavg()
    conv_cmd = [sys.executable, "tools/make_shards.py", "--source", str(src), "--name", "c1m", "--out", str(out),
                "--splits", "train,test", "--workers", str(args.workers), "--no-progress"]
    conv_s, conv_peaks, _ = run_measured(conv_cmd)
    ds_dir = out / "c1m"
    manifest = json.loads((ds_dir / "manifest.json").read_text())
    shard_bytes = sum(f.stat().st_size for f in ds_dir.glob("*.tar"))
    index_bytes = sum(f.stat().st_size for f in ds_dir.glob("*.idx"))
    label_bytes = sum(f.stat().st_size for f in (ds_dir / "labels").rglob("*") if f.is_file())
    stream_cmd = [sys.executable, "tools/bench_scale.py", "--phase", "stream", "--dataset", str(ds_dir),
                  "--batch-size", str(args.batch_size), "--loader-threads", str(args.loader_threads)]
    streams = {}
    for mmap in (True, False):  # DALI's reader maps the tars by default; dont_use_mmap reads them instead
        wall, meter, out = run_measured(stream_cmd + ([] if mmap else ["--dont-use-mmap"]))
        streams[mmap] = (wall, meter, json.loads(out.strip().splitlines()[-1]))
    load_after = os.getloadavg()
    n_train = manifest["splits"]["train"]["num_samples"]
    mb = lambda b: f"{b / 1e6:,.0f} MB"  # noqa: E731
    main_rss = max(v for name, v in conv_peaks.peaks.values() if name == "main")
    worker_rss = sorted(v for name, v in conv_peaks.peaks.values() if name == "worker")

    def stream_line(mmap: bool) -> str:
        wall, meter, stream = streams[mmap]
        return (f"- stream loader, one training epoch, tars {'memory-mapped (default)' if mmap else 'read (dont_use_mmap)'} "
                f"({stream['steps']} steps of {args.batch_size}, {args.loader_threads} DALI threads, CPU): "
                f"{stream['images']:,} images in {stream['seconds']:.0f} s = {stream['images'] / stream['seconds']:,.0f} img/s "
                f"(first batch after {stream['first_batch_s']:.1f} s; process wall {wall:.0f} s); peak RSS "
                f"{mb(max(v for _, v in meter.peaks.values()))}; polled peaks: anonymous {mb(max(meter.anon.values()))}, "
                f"file-backed {mb(max(meter.file.values()))} (polled peaks)")
    print(f"""
- command: `python tools/bench_scale.py --n {args.n} --workers {args.workers} --batch-size {args.batch_size} --loader-threads {args.loader_threads}`
- hardware: {cpu_model()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM; python {platform.python_version()}
- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; load average before {load_before[0]:.2f} / after {load_after[0]:.2f} (1 min)
- generated: {n_train:,} train + {n_test:,} test 32x32 JPEGs in the Clothing1M layout in {gen_s:.0f} s (not part of the conversion)
- conversion ({args.workers} workers): {conv_s:.0f} s wall = {n_train / conv_s:,.0f} train img/s end to end (list parsing, existence checks, decode-verify, tar + DALI index, sha256, labels, manifest)
- shard bytes: train+test tars {mb(shard_bytes)} ({shard_bytes / (n_train + n_test):,.0f} B/img), DALI index files {mb(index_bytes)}, labels + keys {mb(label_bytes)}
- converter peak RSS: main {mb(main_rss)}; workers {', '.join(mb(v) for v in worker_rss)}
{stream_line(True)}
{stream_line(False)}
- sample store, ALR soft labels K = 14: N x 14 x 4 B = {mb(n_train * K * 4)} per process (replicated in every process)
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
