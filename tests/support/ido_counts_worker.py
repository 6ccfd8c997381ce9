"""IDO on a tiny deterministic problem in 1 or N processes (tests/test_ido.py compares them).

Every process builds the same data, model and global batch order; with N processes each takes
its 1/N slice of every global batch and DDP averages the gradients, so the trajectory equals the
one-process run's (a linear model: no BatchNorm statistics that depend on the split). Writes the
final wrong-event counts, p, eps and the mixture parameters to <out>/ido-<N>.npz.

    PYTHONPATH=. python tests/support/ido_counts_worker.py OUT   (or through accelerate launch, see launch.py)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from pipeline.load.batch import Batch
from state.store import SampleStore
from state.sync import communicator_for
from training.methods import METHODS
from training.methods.base import MethodContext, Run
from training.methods.ido import IDO, WRONG_EVENT

N, K, GLOBAL_BATCH, EPOCHS, STAGE1 = 48, 3, 8, 7, 5


def main(out: Path) -> None:
    acc = Accelerator(cpu=True)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(N, 3, 4, 4, generator=g)  # (N, C, H, W): sample i's image, the same in every process
    labels_all = torch.randint(0, K, (N,), generator=g)
    clean = labels_all.clone()
    clean[:12] = (clean[:12] + 1) % K  # 12 samples carry a wrong label, for the diagnostics
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, K))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = acc.prepare(model, optimizer)
    ctx = MethodContext(num_classes=K, num_samples=N, noisy_labels=labels_all, clean_labels=clean, epochs=EPOCHS,
                        base_lr=0.1, build_model=lambda: nn.Linear(1, K),
                        build_optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    method = METHODS["ido"](IDO.Config(stage1_epochs=STAGE1), ctx)
    store = SampleStore(method.state_arrays(), N, comm=communicator_for(acc))
    run = Run(models={"model": model}, optimizers={"model": optimizer}, accelerator=acc, store=store)
    per_process = GLOBAL_BATCH // acc.num_processes
    for epoch in range(EPOCHS):
        run.epoch = epoch
        method.on_epoch_start(run)
        order = torch.randperm(N, generator=torch.Generator().manual_seed(100 + epoch))
        for lo in range(0, N, GLOBAL_BATCH):
            mine = slice(acc.process_index * per_process, (acc.process_index + 1) * per_process)
            idx = order[lo:lo + GLOBAL_BATCH][mine]
            noise = torch.randn(GLOBAL_BATCH, 3, 4, 4, generator=torch.Generator().manual_seed(1000 * epoch + lo))
            weak = base[idx] + noise[mine]
            strong = base[idx].flip(-1)
            batch = Batch(images=weak, idx=idx, views={"weak": weak, "strong": strong})
            method.train_step(batch, labels_all[idx], run)
        method.on_epoch_end(run)
    if acc.is_main_process:
        np.savez(out / f"ido-{acc.num_processes}.npz", counts=store[WRONG_EVENT],
                 p=method._p.cpu().numpy(), eps=method._eps.cpu().numpy(),
                 mixture=np.asarray(method.mixture.to_dict()["params"]),
                 base_epoch=-1 if method.wave.base_epoch is None else method.wave.base_epoch)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
