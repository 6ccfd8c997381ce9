"""Trainer overhead and data cost: the Trainer's step against a bare torch loop, real data against synthetic.

    python tools/bench_trainer.py --config training/configs/cifar10_fast_ce.yaml data.root=data --out DIR

Three loops share one model, optimiser, precision, memory layout and loader (the Trainer's own,
built from the config), each timed for `--steps` steps per round over `--repeats` interleaved
rounds (the loops' order rotates from round to round, so none always runs first or after another),
after `--warmup` untimed rounds of each (compilation happens there):

    trainer    Trainer._train_epoch: the method's loss, the device tally, the scheduler, logging
    bare       what a plain PyTorch user writes: the same loader, autocast, cross-entropy, backward, step
    synthetic  the bare loop on one batch kept on the device (no loader, no augmentation)

bare / trainer (images/s) is the trainer's overhead (1.0 = none); synthetic / bare is what the data
costs. The bare loop calls the model as the Trainer prepared it (Accelerate's autocast wrapper
included) and the raw torch optimiser. Writes trainer.json and trainer.md to --out; prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_loader import hardware, versions  # noqa: E402
from training.config import load_config  # noqa: E402
from training.trainer import Trainer  # noqa: E402

MODES = ("trainer", "bare", "synthetic")
AUTOCAST = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class FirstSteps:
    """The first `steps` batches of each epoch of a loader (keeps set_epoch and len for the Trainer)."""

    def __init__(self, loader, steps: int):
        if steps >= len(loader):
            raise SystemExit(f"--steps {steps} must be below the {len(loader)} batches of an epoch, so that "
                             f"every timed batch is full; lower --steps or data.batch_size")
        self.loader, self.steps = loader, steps

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.steps)


class Bench:
    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.model = trainer.models["model"]
        self.optimizer = getattr(trainer.optimizers["model"], "optimizer", trainer.optimizers["model"])
        self.device = trainer.accelerator.device
        self.dtype = AUTOCAST[trainer.config.mixed_precision]
        self.epoch = 0
        first = next(iter(trainer.train_loader.loader))
        self.synthetic = (first.images.clone(), trainer.noisy[first.idx].clone())

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = F.cross_entropy(self.model(images).float(), labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, mode: str) -> int:
        """One epoch's worth of `mode` steps; returns the images seen."""
        loader = self.trainer.train_loader
        self.epoch += 1
        if mode == "trainer":
            return self.trainer._train_epoch(self.epoch)["train_samples"]
        self.model.train()
        if mode == "synthetic":
            for _ in range(len(loader)):
                self._step(*self.synthetic)
            return len(loader) * self.synthetic[1].shape[0]
        loader.set_epoch(self.epoch)
        seen = 0
        for batch in loader:
            self._step(batch.images, self.trainer.noisy[batch.idx])
            seen += batch.idx.shape[0]
        return seen

    def timed(self, mode: str) -> float:
        """images/s of one round, the device drained before and after."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        seen = self.run(mode)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return seen / (time.perf_counter() - start)


def table(result: dict) -> str:
    rates = result["images_per_s"]
    med = {mode: statistics.median(r) for mode, r in rates.items()}
    lines = [f"Trainer vs bare loop, {result['config']} ({result['model']}, batch {result['batch_size']}, "
             f"{result['mixed_precision']}, channels_last={result['channels_last']}, compile={result['compile']}), "
             f"{result['steps']} steps x {result['repeats']} rounds, {result['date']}", "",
             "| loop | images/s (median) | min - max | vs bare |", "|---|---:|---:|---:|"]
    for mode, r in rates.items():
        lines.append(f"| {mode} | {med[mode]:,.0f} | {min(r):,.0f} - {max(r):,.0f} | {med[mode] / med['bare']:.2f} |")
    lines += ["", f"bare / trainer = {result['bare_over_trainer']:.3f} (trainer overhead; 1.0 = none), "
              f"synthetic / bare = {result['synthetic_over_bare']:.3f} (data cost)",
              "", f"Hardware: {result['hardware']}", f"Versions: {result['versions']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value (as training/run.py)")
    run = parser.add_argument_group("run")
    run.add_argument("--config", required=True, help="a recipe under training/configs/")
    run.add_argument("--steps", type=int, default=50, help="timed steps per round (default 50)")
    run.add_argument("--warmup", type=int, default=1, help="untimed rounds of each loop first (default 1)")
    run.add_argument("--repeats", type=int, default=3, help="timed rounds of each loop (default 3)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, help="folder for trainer.json and trainer.md")
    out.add_argument("--work", type=Path, help="scratch folder for the Trainer's run folder (default: a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        config = load_config(args.config, [*args.overrides, f"out_dir={work}", "run_name=bench_trainer",
                                           "method.name=ce", "method.params={}"])
        trainer = Trainer(config)
        trainer.train_loader = FirstSteps(trainer.train_loader, args.steps)
        bench = Bench(trainer)
        for mode in MODES:
            for _ in range(args.warmup):
                bench.run(mode)
        rates: dict[str, list[float]] = {mode: [] for mode in MODES}
        for r in range(args.repeats):
            for mode in MODES[r % len(MODES):] + MODES[:r % len(MODES)]:
                rates[mode].append(bench.timed(mode))
    med = {mode: statistics.median(r) for mode, r in rates.items()}
    result = {
        "config": str(args.config), "overrides": args.overrides, "model": config.model.name,
        "batch_size": config.data.batch_size, "mixed_precision": config.mixed_precision,
        "channels_last": config.channels_last, "compile": config.compile, "steps": args.steps,
        "warmup": args.warmup, "repeats": args.repeats, "images_per_s": rates,
        "bare_over_trainer": med["bare"] / med["trainer"], "synthetic_over_bare": med["synthetic"] / med["bare"],
        "hardware": hardware(), "versions": versions(), "date": datetime.date.today().isoformat(),
    }
    text = table(result)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "trainer.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "trainer.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
