"""Cost benchmark of the reweighting methods: seconds per training epoch of CE, L2RW and the surrogate,
in one process on the same data, model and batch size.

    python tools/make_shards.py --source tools/demo/cifar10-demo.tar.gz --name cifar10-demo-cs \\
        --out /tmp/bench-data --label-set sym-0.40-s0 --clean-subset 500
    python tools/bench_reweight.py --dataset /tmp/bench-data/cifar10-demo-cs

One Trainer per method is built from training/configs/demo_cpu.yaml with the overrides below; the
methods' training epochs are then run interleaved (epoch e of every method, in a rotating order) so
that a change of machine load hits all of them alike. The first --warmup epochs are not timed; the
table gives the median and min-max over the --repeats timed epochs, and the ratios of the medians.
An epoch's time is the trainer's training pass only (no evaluation, no checkpoint), so it includes
L2RW's meta steps and the surrogate's per-epoch clean CE steps and clean feature pass.

The surrogate's clean CE steps scale with the clean subset, not the training set: the paper's code
takes 30 steps of 128 per CIFAR epoch of 375 steps (48,000 noisy images). `--val-steps auto` keeps
that ratio (30 / 375 of this dataset's steps per epoch) so the measured ratio predicts the paper's
setting; pass a number to measure another.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import training.trainer as trainer_module  # noqa: E402
from training.config import load_config  # noqa: E402
from training.outputs import hardware  # noqa: E402
from training.trainer import Trainer  # noqa: E402

PAPER_VAL_STEPS, PAPER_STEPS_PER_EPOCH = 30, 375  # CIFAR: 30 clean steps vs 48,000 / 128 noisy steps


def _quiet_tqdm(iterable, *args, **kwargs):
    """The trainer's progress bar, switched off: the tool prints one line per epoch instead."""
    kwargs["disable"] = True
    return tqdm(iterable, *args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--dataset", required=True, type=Path, help="converted dataset directory (<root>/<name>)")
    data.add_argument("--label-set", default="sym-0.40-s0", help="noisy label set (default: sym-0.40-s0)")
    data.add_argument("--mask", default=None, help="clean-subset mask (default: the dataset's only clean-subset-*)")
    run = p.add_argument_group("run")
    run.add_argument("--model", default="tiny_cnn", help="model name (default: tiny_cnn)")
    run.add_argument("--batch-size", type=int, default=128, help="noisy and clean batch size (default: 128)")
    run.add_argument("--val-steps", default="auto", help="surrogate clean CE steps per epoch, or 'auto' (see above)")
    run.add_argument("--methods", default="ce,l2rw,surrogate", help="comma-separated (default: ce,l2rw,surrogate)")
    run.add_argument("--warmup", type=int, default=1, help="untimed epochs per method (default: 1)")
    run.add_argument("--repeats", type=int, default=3, help="timed epochs per method (default: 3)")
    run.add_argument("--out", type=Path, default=None, help="scratch run directory (default: a temporary one)")
    return p


def _find_mask(dataset: Path) -> str:
    masks = sorted(p.stem for p in (dataset / "labels" / "train" / "masks").glob("clean-subset-*.npy"))
    if len(masks) != 1:
        raise SystemExit(f"error: {dataset} has clean-subset masks {masks}; name one with --mask "
                         f"(make one with tools/make_shards.py --add-label-set --clean-subset M)")
    return masks[0]


def _auto_val_steps(dataset: Path, mask: str, batch_size: int) -> int:
    """The paper's ratio of clean CE steps to noisy steps per epoch, for this dataset."""
    held_out = np.load(dataset / "labels" / "train" / "masks" / f"{mask}.npy")
    steps = math.ceil(int((~held_out).sum()) / batch_size)
    return max(1, round(PAPER_VAL_STEPS * steps / PAPER_STEPS_PER_EPOCH))


def _trainer(args, method: str, out: Path, mask: str, val_steps: int | None) -> Trainer:
    overrides = [f"data.root={args.dataset.parent}", f"data.name={args.dataset.name}",
                 f"data.label_set={args.label_set}", f"data.clean_subset={mask}",
                 f"data.batch_size={args.batch_size}", f"data.clean_batch_size={args.batch_size}",
                 f"model.name={args.model}", f"epochs={args.warmup + args.repeats}", "optim.schedule=constant",
                 "cpu=true", f"out_dir={out}", f"run_name={method}", f"method.name={method}"]
    if method == "surrogate":
        overrides += [f"method.params.val_steps={val_steps}", "method.params.skip_epochs=0"]
    return Trainer(load_config(ROOT / "training/configs/demo_cpu.yaml", overrides))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    trainer_module.tqdm = _quiet_tqdm
    mask = args.mask or _find_mask(args.dataset)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    scratch = tempfile.TemporaryDirectory() if args.out is None else None
    out = args.out or Path(scratch.name)
    load_before = os.getloadavg()

    if args.val_steps == "auto":
        val_steps = _auto_val_steps(args.dataset, mask, args.batch_size)
    else:
        val_steps = int(args.val_steps)
    trainers = {method: _trainer(args, method, out, mask, val_steps) for method in methods}
    first = next(iter(trainers.values()))
    steps = len(first.train_loader)
    subset = int(np.load(args.dataset / "labels" / "train" / "masks" / f"{mask}.npy").sum())

    seconds: dict[str, list[float]] = {m: [] for m in methods}
    extra: dict[str, list[float]] = {m: [] for m in methods}
    samples = 0
    for epoch in range(args.warmup + args.repeats):
        order = methods[epoch % len(methods):] + methods[: epoch % len(methods)]
        for method in order:
            trainer = trainers[method]
            start = time.perf_counter()
            row = trainer._train_epoch(epoch)  # the trainer's training pass, as fit() times it
            elapsed = time.perf_counter() - start
            row.update(trainer.method.on_epoch_end(trainer.run).metrics)
            samples = row["train_samples"]
            if epoch >= args.warmup:
                seconds[method].append(elapsed)
                extra[method].append(row.get("surrogate_clean_seconds", 0.0)
                                     + row.get("surrogate_feature_seconds", 0.0))
            print(f"epoch {epoch} {method:10s} {elapsed:7.2f} s", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    hw = hardware(1)
    med = {m: statistics.median(seconds[m]) for m in methods}
    base = med.get("ce")
    print(f"\n    python tools/bench_reweight.py {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    print(f"Data: {args.dataset.name}, label set {args.label_set}, clean subset {mask} "
          f"({subset} images, held out of every method's training set); {samples} noisy training images per epoch = "
          f"{steps} steps of {args.batch_size}; model {args.model}; surrogate val_steps = {val_steps} "
          f"(clean batch {args.batch_size}). {args.warmup} warm-up epoch(s), {args.repeats} timed per method, "
          f"interleaved.\n")
    print("| method | s / epoch (median) | min - max | vs CE | vs L2RW | of which clean steps + features |")
    print("|---|---:|---:|---:|---:|---:|")
    for m in methods:
        vs_ce = f"{med[m] / base:.2f}x" if base else "-"
        vs_l2rw = f"{med[m] / med['l2rw']:.2f}x" if "l2rw" in med else "-"
        clean = f"{statistics.median(extra[m]):.2f} s" if m == "surrogate" else "-"
        print(f"| {m} | {med[m]:.2f} | {min(seconds[m]):.2f} - {max(seconds[m]):.2f} | {vs_ce} | {vs_l2rw} | {clean} |")
    print(f"\nHardware: {hw['cpu']}, {hw['cpu_cores']} cores, torch threads {torch.get_num_threads()}, no GPU used; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min). "
          f"Versions: python {hw['python']}, torch {hw['torch']}. Date: {datetime.date.today().isoformat()}.")
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
