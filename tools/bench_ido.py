"""Benchmark IDO's cost: a stage-2 step against a CE step in the same process, the mixture fit, and the
per-sample state against a DivideMix-style per-epoch loss history.

    python tools/bench_ido.py                        # tiny_cnn, batch 128, on the CPU
    python tools/bench_ido.py --model resnet34 --device cuda --mixed-precision bf16

Steps (synthetic CIFAR-size uint8 batches on the device, random labels, SGD momentum 0.9), timed
per call after warm-up and interleaved round by round so background load hits all of them alike:

    ce        the trainer's standard step: T.apply (crop + flip) -> forward -> CE -> backward -> step
    ido-s1    T.apply -> IDO.train_step in stage 1 (CE + wrong-event add + cur_pred set in the store)
    ido-s2    T.train_views (weak + strong: crop + flip + the authors' RandAugment + cutout) -> IDO.train_step
              in stage 2 (wrong-event add, then p / eps from the live counts of the batch)
              (a forward pass per view, the two-view loss, wrong-event add)
    ido-s2c   the same with view_forward=concat (one forward pass over the 2B images)

Each is also timed without its augmentation (the loader's share), so both the step alone and the
step with its data preparation are compared. The goal is ido-s2 / ce <= 2.2 (two views cost two
forward/backward passes; the loss and the store updates should add little).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from pipeline.load import transforms as T  # noqa: E402
from pipeline.load.batch import Batch  # noqa: E402
from state.store import SampleStore  # noqa: E402
from training.methods.base import MethodContext, Run  # noqa: E402
from training.methods.common.beta_mixture import BetaMixture, normalise_counts  # noqa: E402
from training.methods.ido import IDO  # noqa: E402
from training.models import build_model  # noqa: E402
from training.outputs import cpu_model  # noqa: E402




def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("steps")
    g.add_argument("--model", default="tiny_cnn", help="a name from training.models.MODELS (default tiny_cnn)")
    g.add_argument("--batch-size", type=int, default=128, help="images per step (default 128, the recipes')")
    g.add_argument("--num-classes", type=int, default=10)
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    g.add_argument("--warmup", type=int, default=5, help="untimed calls of each step first")
    g.add_argument("--rounds", type=int, default=20, help="timed rounds; each runs every step once")
    g.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    s = parser.add_argument_group("state and mixture")
    s.add_argument("--num-samples", type=int, default=50_000, help="N of the sample store (CIFAR train)")
    s.add_argument("--history-epochs", type=int, nargs="+", default=[100, 300],
                   help="epochs of a DivideMix-style per-epoch float32 loss history to compare with")
    return parser


def median_iqr(times: list[float]) -> tuple[float, float]:
    q1, med, q3 = np.percentile(np.asarray(times) * 1e3, [25, 50, 75])
    return float(med), float(q3 - q1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    acc = Accelerator(cpu=args.device == "cpu", mixed_precision=args.mixed_precision)
    device = acc.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n, k, b = args.num_samples, args.num_classes, args.batch_size
    gen = torch.Generator().manual_seed(0)
    noisy = torch.randint(0, k, (n,), generator=gen).to(device)
    config = T.cifar10()

    def fresh(seed: int):
        torch.manual_seed(seed)
        model = acc.prepare(build_model(args.model, k))
        optimizer = acc.prepare(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4))
        return model, optimizer

    ctx = MethodContext(num_classes=k, num_samples=n, noisy_labels=noisy, clean_labels=None, epochs=3, base_lr=0.1,
                        build_model=lambda: build_model(args.model, k), build_optimizer=None)
    method = IDO(IDO.Config(stage1_epochs=1), ctx)
    store = SampleStore(method.state_arrays(), n)
    # stage 2 needs a fitted mixture: a plausible one from random counts. on_epoch_start is not called:
    # the steady state is timed, not the one-off base-weight load
    store.add("wrong_event", torch.arange(n), torch.randint(0, 20, (n,), generator=gen).to(torch.int32))
    store.set("cur_pred", torch.arange(n), torch.zeros(n, dtype=torch.int32))
    method._fit(store, 0)

    concat = IDO(IDO.Config(stage1_epochs=1, view_forward="concat"), ctx)
    concat.mixture, concat.ranges = method.mixture, method.ranges
    models = {name: fresh(i) for i, name in enumerate(("ce", "ido-s1", "ido-s2", "ido-s2c"))}
    pixels = [torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, generator=gen).to(device) for _ in range(4)]
    idx_pool = [torch.randperm(n, generator=gen)[:b].to(device) for _ in range(4)]
    aug = torch.Generator(device=device).manual_seed(1)
    strong_gen = torch.Generator(device=device).manual_seed(2)

    def ce_step(images, idx):
        model, optimizer = models["ce"]
        labels = noisy[idx]
        with acc.autocast():
            loss = F.cross_entropy(model(images).float(), labels)
        acc.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def ido_step(name, epoch, ido=method):
        model, optimizer = models[name]
        run = Run(models={"model": model}, optimizers={"model": optimizer}, accelerator=acc, store=store, epoch=epoch)
        return lambda batch: ido.train_step(batch, noisy[batch.idx], run)

    s1, s2, s2c = ido_step("ido-s1", 0), ido_step("ido-s2", 1), ido_step("ido-s2c", 1, concat)

    def prepared(i, views):
        if views:
            weak, v = T.train_views(pixels[i % 4], config, ("weak", "strong"), generator=aug,
                                    generators={"strong": strong_gen})
            return Batch(images=weak, idx=idx_pool[i % 4], views=v)
        return Batch(images=T.apply(pixels[i % 4], config, train=True, generator=aug), idx=idx_pool[i % 4])

    cases = {  # name -> (views?, step on a prepared batch)
        "ce": (False, lambda batch: ce_step(batch.images, batch.idx)),
        "ido-s1": (False, s1),
        "ido-s2": (True, s2),
        "ido-s2c": (True, s2c),
    }
    step_times = {name: [] for name in cases}
    total_times = {name: [] for name in cases}
    aug_times = {"weak": [], "weak+strong": []}
    for r in range(args.warmup + args.rounds):
        for name, (views, step) in cases.items():
            sync()
            t0 = time.perf_counter()
            batch = prepared(r, views)
            sync()
            t1 = time.perf_counter()
            step(batch)
            sync()
            t2 = time.perf_counter()
            if r >= args.warmup:
                step_times[name].append(t2 - t1)
                total_times[name].append(t2 - t0)
                if name in ("ce", "ido-s2"):
                    aug_times["weak+strong" if views else "weak"].append(t1 - t0)

    load = os.getloadavg()
    print(f"# bench_ido  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"device {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else cpu_model()}), "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}; model "
          f"{args.model}, batch {b}, {args.mixed_precision} precision, {args.rounds} rounds after {args.warmup} warm-up")
    print("\n| step | step alone (ms, median ± IQR) | x CE (paired) | with its augmentation (ms) | x CE (paired) |")
    print("|---|---:|---:|---:|---:|")
    for name in cases:
        (sm, si), (tm, ti) = median_iqr(step_times[name]), median_iqr(total_times[name])
        # ratio to the CE step of the same round, then median +- IQR: robust to load that drifts between rounds
        rs = median_iqr([a / c / 1e3 for a, c in zip(step_times[name], step_times["ce"])])
        rt = median_iqr([a / c / 1e3 for a, c in zip(total_times[name], total_times["ce"])])
        print(f"| {name} | {sm:.1f} ± {si:.1f} | {rs[0]:.2f} ± {rs[1]:.2f} | {tm:.1f} ± {ti:.1f} | "
              f"{rt[0]:.2f} ± {rt[1]:.2f} |")
    for name, times in aug_times.items():
        m, i = median_iqr(times)
        print(f"augmentation {name}: {m:.1f} ± {i:.1f} ms per batch")

    print("\n| mixture fit (N, C) | first fit, 20 iterations (s) | refit, 2 iterations (s) | posteriors (s) |")
    print("|---|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for classes in (10, 100):
        labels = rng.integers(0, classes, n)
        counts = np.where(rng.random(n) < 0.6, rng.binomial(30, 0.1, n), rng.binomial(30, 0.8, n))
        x = normalise_counts(counts, labels, classes)
        t0 = time.perf_counter()
        mixture = BetaMixture.initial(classes).fit(x, labels, 20)
        t1 = time.perf_counter()
        mixture.fit(x, labels, 2)
        t2 = time.perf_counter()
        mixture.posteriors(x, labels)
        t3 = time.perf_counter()
        print(f"| {n:,}, {classes} | {t1 - t0:.3f} | {t2 - t1:.4f} | {t3 - t2:.4f} |")

    per_sample = sum(np.dtype(s.dtype).itemsize * int(np.prod(s.row_shape or (1,))) for s in method.state_arrays())
    print("\n| per-sample state | bytes / sample | N = {:,} (MB) |".format(n))
    print("|---|---:|---:|")
    rows = [("IDO sample store: wrong_event + prev_pred + cur_pred (int32)", per_sample),
            ("IDO after stage 1 (wrong_event only; prev/cur are stage-1 bookkeeping)", 4),
            ("IDO stage 2: per-epoch p, eps diagnostics (float32; the step computes its own from live counts)", 8)]
    rows += [(f"DivideMix-style loss history, float32 x {e} epochs", 4 * e) for e in args.history_epochs]
    for label, nbytes in rows:
        print(f"| {label} | {nbytes} | {nbytes * n / 1e6:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
