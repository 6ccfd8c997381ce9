"""Cost of a meta label correction step: CE, MLC, MLC-D (k = 5) and EBOMLC side by side.

    python tools/bench_meta.py                          # ResNet-32, 100 noisy + 100 clean, 32x32, CPU
    python tools/bench_meta.py --repeats 30 --model tiny_cnn

Each method runs in its default form (the authors' code: MLC with the clean half-batch in its lower
loss, MLC-D with both terms of grad Q, EBOMLC with the logit mixture, both terms of grad Q and the
main model's step to w1); the forms in force are printed.

Every method starts from the same initial weights and takes the same precomputed batches (random
32x32 images, random labels: the cost of a step does not depend on the pixels). Steps are timed
round-robin (one step of each method per round) so load changes on a shared machine hit all
methods alike; after --warmup untimed rounds, --repeats rounds are timed and the median and
interquartile range of seconds per step are printed with ratios against EBOMLC (paper: MLC 2.28x,
MLC-D 2.32x) and against CE (goal: EBOMLC <= 3.0x). Every method runs its train_step as the trainer
calls it: CE the standard step (forward, backward, SGD step), the meta methods their own step, meta
model included.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate import Accelerator  # noqa: E402

from pipeline.load.batch import Batch  # noqa: E402
from training.methods import build_method  # noqa: E402
from training.methods.base import MethodContext, Run  # noqa: E402
from training.models import build_model  # noqa: E402
from training.outputs import cpu_model  # noqa: E402

METHODS = [("ce", {}), ("mlc", {}), ("mlc_d", {"inner_steps": 5}), ("ebomlc", {})]
FORM_KEYS = ("clean_in_lower", "inner_steps", "delta", "w1_grad", "upper_mix", "main_lower_step", "rho", "xi")


class FixedClean:
    """CleanSubset stand-in: cycles through precomputed clean batches."""

    def __init__(self, batches: list[Batch], labels: torch.Tensor):
        self.batches, self.labels, self.position = batches, labels, 0

    def next_batch(self) -> Batch:
        batch = self.batches[self.position % len(self.batches)]
        self.position += 1
        return batch


def make_batches(n: int, batch: int, size: int, classes: int, offset: int, gen: torch.Generator) -> list[Batch]:
    return [Batch(images=torch.randn(batch, 3, size, size, generator=gen),
                  idx=torch.arange(offset + i * batch, offset + (i + 1) * batch)) for i in range(n)]


def build_runner(name: str, params: dict, args, labels: torch.Tensor, clean_batches, accelerator):
    """(a callable running one training step of `name` on a batch, its Run inside; the method's
    resolved params)."""
    ctx = MethodContext(num_classes=args.classes, num_samples=len(labels), noisy_labels=labels, clean_labels=labels,
                        epochs=1, base_lr=0.1, build_model=lambda: build_model(args.model, args.classes),
                        build_optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4))
    method = build_method(name, params, ctx)
    torch.manual_seed(0)  # the same initial main model for every method
    models = method.build_models()
    for model in models.values():
        model.train()
    run = Run(models=models, optimizers=method.build_optimizers(models), accelerator=accelerator,
              clean=FixedClean(clean_batches, labels))
    form = method.config.model_dump() if name != "ce" else {}

    def step(batch: Batch) -> None:
        method.train_step(batch, labels[batch.idx], run)
    return step, form


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("workload")
    g.add_argument("--model", default="resnet32", help="main model (training.models), default resnet32")
    g.add_argument("--batch", type=int, default=100, help="noisy images per step (and clean images per step)")
    g.add_argument("--size", type=int, default=32, help="image side in px")
    g.add_argument("--classes", type=int, default=10)
    g = parser.add_argument_group("timing")
    g.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    g.add_argument("--repeats", type=int, default=15, help="timed rounds (one step per method each)")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    rounds = args.warmup + args.repeats
    noisy = make_batches(rounds, args.batch, args.size, args.classes, 0, gen)
    clean = make_batches(rounds, args.batch, args.size, args.classes, rounds * args.batch, gen)
    labels = torch.randint(0, args.classes, (2 * rounds * args.batch,), generator=gen)
    accelerator = Accelerator(cpu=True)
    runners, forms = {}, {}
    for name, params in METHODS:
        runners[name], forms[name] = build_runner(name, params, args, labels, clean, accelerator)

    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(rounds):
        for name, step in runners.items():
            start = time.perf_counter()
            step(noisy[r])
            if r >= args.warmup:
                times[name].append(time.perf_counter() - start)

    print(f"# bench_meta: {args.model}, {args.batch} noisy + {args.batch} clean images of {args.size}x{args.size}, "
          f"{args.classes} classes, CPU")
    print(f"# {datetime.date.today()}  {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), python {platform.python_version()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, form in forms.items():
        shown = {k: v for k, v in form.items() if k in FORM_KEYS}
        if shown:
            print(f"# {name}: " + " ".join(f"{k}={v}" for k, v in shown.items()))
    print(f"# {args.warmup} warm-up rounds, {args.repeats} timed rounds (round-robin); median and IQR of s/step")
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"{'method':<8} {'median s/step':>14} {'IQR':>16} {'x EBOMLC':>9} {'x CE':>7}")
    for name, t in times.items():
        q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0], t[0], t[0]]
        print(f"{name:<8} {med[name]:>14.4f} {f'{q[0]:.4f}-{q[2]:.4f}':>16} {med[name] / med['ebomlc']:>9.2f} "
              f"{med[name] / med['ce']:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
