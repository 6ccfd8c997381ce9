"""Loader throughput: stream (DALI), cache, and a torchvision DataLoader + PIL baseline, same shards.

    python tools/bench_loader.py --dataset data/cifar10 --batch-size 512 --repeats 5

Each mode reads full training epochs (shuffle + CIFAR augmentation: pad-4 crop, flip, normalise,
float32 NCHW on the device) of one split. One warm-up epoch, then `--repeats` timed epochs; the
table gives the median images/s, the min-max spread, and the ratio to the baseline. Start-up
(DALI pipeline build per epoch, the cache's one-time decode) is inside the epoch time for stream
and reported apart for cache. Prints versions and hardware (STYLE 18).

The baseline is what a plain PyTorch user would write: a torch Dataset over the samples of the
shard tars held in memory (encoded bytes, so no file system cost), PIL decoding, torchvision
RandomCrop(32, padding=4) / RandomHorizontalFlip / ToTensor / Normalize, a DataLoader with one
worker per core and persistent workers.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.format.dataset import Dataset  # noqa: E402
from pipeline.format.shards import read_shard  # noqa: E402
from pipeline.load import transforms as T  # noqa: E402
from pipeline.load.loader import dali_available, make_loader  # noqa: E402
from training.outputs import cpu_model  # noqa: E402

MODES = ("stream", "cache", "baseline")


class ShardBytesDataset(torch.utils.data.Dataset):
    """The baseline's dataset: (encoded bytes, idx) of every sample of a split, decoded with PIL."""

    def __init__(self, dataset: Dataset, split: str, config: T.TransformConfig):
        import torchvision.transforms as tv

        self.samples = [(data, idx) for path in dataset.shard_paths(split) for idx, data, _ in read_shard(path)]
        self.transform = tv.Compose([
            tv.RandomCrop(config.size, padding=config.pad), tv.RandomHorizontalFlip(), tv.ToTensor(),
            tv.Normalize(config.mean, config.std),
        ])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        data, idx = self.samples[i]
        return self.transform(Image.open(io.BytesIO(data)).convert("RGB")), idx


def time_epochs(loader, warmup: int, repeats: int) -> list[float]:
    """images/s of each timed epoch (every batch's images touched, so nothing is left lazy)."""
    rates = []
    for epoch in range(warmup + repeats):
        start = time.perf_counter()
        count = 0
        for batch in loader:
            images = batch.images if hasattr(batch, "images") else batch[0]
            count += images.shape[0]
        elapsed = time.perf_counter() - start
        if epoch >= warmup:
            rates.append(count / elapsed)
    return rates


def hardware() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_model()}, {os.cpu_count()} cores, {gpu}"


def versions() -> str:
    import torchvision

    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}", f"torchvision {torchvision.__version__}"]
    if dali_available():
        import nvidia.dali

        parts.append(f"nvidia-dali {nvidia.dali.__version__}")
    import PIL

    parts.append(f"Pillow {PIL.__version__}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="data/cifar10", help="converted dataset directory (tools/make_shards.py)")
    data.add_argument("--split", default="train")
    run = parser.add_argument_group("run")
    run.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    run.add_argument("--batch-size", type=int, default=512, help="images per batch (default 512)")
    run.add_argument("--repeats", "--epochs", type=int, default=5, help="timed epochs per mode (default 5)")
    run.add_argument("--warmup", type=int, default=1, help="untimed epochs first (default 1)")
    run.add_argument("--num-threads", type=int, default=os.cpu_count(),
                     help="DALI / cache decode threads and baseline DataLoader workers (default: all cores)")
    args = parser.parse_args(argv)

    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    dataset = Dataset(args.dataset)
    config = T.cifar10()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kw = dict(batch_size=args.batch_size, train=True, transform=config, device=device, num_threads=args.num_threads)
    results: dict[str, tuple[list[float], str]] = {}
    for mode in modes:
        if mode == "baseline":
            start = time.perf_counter()
            bench_set = ShardBytesDataset(dataset, args.split, config)
            loader = torch.utils.data.DataLoader(bench_set, batch_size=args.batch_size, shuffle=True,
                                                 num_workers=args.num_threads, persistent_workers=True)
            note = f"PIL + torchvision, {args.num_threads} workers; reading tars into memory {time.perf_counter() - start:.1f} s"
        elif mode == "cache":
            start = time.perf_counter()
            loader = make_loader(dataset, args.split, mode="cache", **kw)
            note = f"one-time decode into a uint8 tensor on {device}: {time.perf_counter() - start:.1f} s"
        else:
            loader = make_loader(dataset, args.split, mode="stream", **kw)
            name = "DALI" if dali_available() else "tarfile fallback"
            note = (f"{name} {'mixed' if device.type == 'cuda' else 'CPU'} read + decode, {args.num_threads} threads; "
                    f"crop/flip/normalise with batched torch ops; pipeline built each epoch (included)")
        results[mode] = (time_epochs(loader, args.warmup, args.repeats), note)
        print(f"{mode}: median {statistics.median(results[mode][0]):,.0f} img/s", file=sys.stderr)
        del loader

    base = statistics.median(results["baseline"][0]) if "baseline" in results else None
    n = dataset.num_samples(args.split)
    print(f"Loader throughput, {dataset.name} {args.split} ({n:,} images), batch {args.batch_size}, "
          f"{args.warmup} warm-up + {args.repeats} timed epochs, {datetime.date.today().isoformat()}\n")
    print("| mode | images/s (median) | min - max | vs baseline | notes |")
    print("|---|---:|---:|---:|---|")
    for mode, (rates, note) in results.items():
        med = statistics.median(rates)
        ratio = f"{med / base:.1f}x" if base else "-"
        print(f"| {mode} | {med:,.0f} | {min(rates):,.0f} - {max(rates):,.0f} | {ratio} | {note} |")
    print(f"\nHardware: {hardware()}\nVersions: {versions()}")
    print(f"Command: python tools/bench_loader.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
