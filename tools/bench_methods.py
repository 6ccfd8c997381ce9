"""Cost of every registered method against CE, side by side in one process: seconds per training step
and per full epoch, in each method's main phase (after its warm-up or stage 1).

    python tools/bench_methods.py                                 # the memorisation regime, all methods
    python tools/bench_methods.py --methods ce alr ido --steps 30 --repeats 3 model.name=resnet32

Every method gets its own Trainer on the same recipe (default: the CPU memorisation regime,
training/configs/demo_memorisation_cpu.yaml, on the shipped demo subset). One untimed epoch of
`--steps` steps first (with PHASE parameters its main phase then starts: ALR's warm-up, IDO's stage
1, DivideMix's warm-up last one epoch; IDO fits its mixture at that epoch's end), then `--repeats`
timed rounds, round-robin (one epoch of `--steps` steps of every method per round), so load changes on
a shared machine hit all methods alike. A method's per-epoch pass (DivideMix's co-divide over the
training split, the surrogate's clean-subset pass) is timed apart, in `on_epoch_start`, and added once
per full epoch: full epoch = steps per epoch x s/step + epoch-start pass. Medians over the rounds.
"""

from __future__ import annotations

import argparse
import datetime
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_loader import hardware, versions  # noqa: E402
from bench_trainer import FirstSteps  # noqa: E402
from training.config import load_config  # noqa: E402
from training.methods import METHODS  # noqa: E402
from training.trainer import Trainer  # noqa: E402

# overrides that end each method's preparatory phase after one epoch (and fill required parameters)
PHASE = {
    "alr": ("method.params.warmup_epochs=1",),
    "ido": ("method.params.stage1_epochs=1",),
    "dividemix": ("method.params.warmup_epochs=1", "method.params.lambda_u=25"),
    "coteaching": ("method.params.forget_rate=0.36",),
    "jocor": ("method.params.forget_rate=0.36",),
}


class Timed:
    """A method's Trainer, its epoch counter, and the seconds of its last on_epoch_start."""

    def __init__(self, trainer: Trainer, steps: int):
        self.trainer, self.full_steps, self.epoch, self.start_seconds = trainer, len(trainer.train_loader), 0, 0.0
        trainer.train_loader = FirstSteps(trainer.train_loader, steps)
        method, start = trainer.method, trainer.method.on_epoch_start

        def timed_start(*args, **kwargs):
            begin = time.perf_counter()
            start(*args, **kwargs)
            self.start_seconds = time.perf_counter() - begin

        method.on_epoch_start = timed_start

    def epoch_seconds(self) -> tuple[float, float]:
        """(seconds of the steps, seconds of the epoch-start pass) of one more epoch."""
        begin = time.perf_counter()
        self.trainer._train_epoch(self.epoch)
        total = time.perf_counter() - begin
        self.trainer.method.on_epoch_end(self.trainer.run)
        self.epoch += 1
        return total - self.start_seconds, self.start_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value (as training/run.py)")
    parser.add_argument("--config", default="training/configs/demo_memorisation_cpu.yaml")
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS), help="default: every registered method")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed epoch (default 20)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds (default 2)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if "ce" not in args.methods:
        parser.error("--methods must include ce: the ratios are against it")

    with tempfile.TemporaryDirectory() as tmp:
        timed = {}
        for name in args.methods:
            config = load_config(args.config, [*args.overrides, f"out_dir={tmp}", f"run_name={name}",
                                               f"method.name={name}", *PHASE.get(name, ())])
            timed[name] = Timed(Trainer(config), args.steps)
            timed[name].epoch_seconds()  # the untimed preparatory epoch
            print(f"# prepared {name}", file=sys.stderr)
        steps: dict[str, list[float]] = {name: [] for name in timed}
        starts: dict[str, list[float]] = {name: [] for name in timed}
        for _ in range(args.repeats):
            for name, t in timed.items():
                step_seconds, start_seconds = t.epoch_seconds()
                steps[name].append(step_seconds / args.steps)
                starts[name].append(start_seconds)

    per_step = {n: statistics.median(s) for n, s in steps.items()}
    per_epoch = {n: per_step[n] * timed[n].full_steps + statistics.median(starts[n]) for n in timed}
    config = timed["ce"].trainer.config
    lines = [f"Method cost, {args.config} ({config.model.name}, batch {config.data.batch_size}, "
             f"{timed['ce'].full_steps} steps per epoch), {args.steps} steps x {args.repeats} rounds, "
             f"round-robin, {datetime.date.today().isoformat()}", "",
             "| method | s/step (median) | x CE | epoch-start pass (s) | full epoch (s) | x CE |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in timed:
        lines.append(f"| {name} | {per_step[name]:.4f} | {per_step[name] / per_step['ce']:.2f} | "
                     f"{statistics.median(starts[name]):.2f} | {per_epoch[name]:.1f} | "
                     f"{per_epoch[name] / per_epoch['ce']:.2f} |")
    lines += ["", f"Hardware: {hardware()}, {torch.get_num_threads()} torch threads", f"Versions: {versions()}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if all(math.isfinite(v) for v in per_step.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
