"""One process of the real multi-process loader test (tests/test_loader.py).

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 tests/support/loader_epoch_worker.py <dataset dir> <out.json>

(`accelerate launch --cpu --num_processes 2` starts a single process unless mpirun is configured;
torchrun through --multi_gpu with ACCELERATE_USE_CPU=1 starts two CPU processes on gloo.)

Every process builds the train loader of each available mode with its own process_index, reads
two epochs, gathers the idx it saw and its len() from all processes, and process 0 writes
{mode: {"epochs": [[idx of process 0, idx of process 1], ...], "lens": [...]}} to <out.json>.
"""

from __future__ import annotations

import json
import sys

import torch.distributed as dist
from accelerate import Accelerator

from pipeline.format.dataset import Dataset
from pipeline.load import transforms as T
from pipeline.load.loader import dali_available, make_loader
from pipeline.load.webdataset_loader import WebDatasetLoader


def main(argv: list[str] | None = None) -> int:
    dataset_dir, out = (argv if argv is not None else sys.argv[1:])[:2]
    accelerator = Accelerator(cpu=True)
    dataset = Dataset(dataset_dir)
    kw = dict(batch_size=16, train=True, transform=T.cifar10(), device=accelerator.device,
              process_index=accelerator.process_index, num_processes=accelerator.num_processes, seed=3)
    loaders = {"cache": lambda: make_loader(dataset, "train", mode="cache", **kw),
               "webdataset": lambda: WebDatasetLoader(dataset, "train", **kw)}
    if dali_available():
        loaders["dali"] = lambda: make_loader(dataset, "train", mode="stream", **kw)
    result = {}
    for mode, build in loaders.items():
        loader = build()
        epochs = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            seen = [i for batch in loader for i in batch.idx.tolist()]
            gathered = [None] * accelerator.num_processes
            dist.all_gather_object(gathered, seen)
            epochs.append(gathered)
        lens = [None] * accelerator.num_processes
        dist.all_gather_object(lens, len(loader))
        result[mode] = {"epochs": epochs, "lens": lens, "num_samples": loader.num_samples}
    if accelerator.is_main_process:
        with open(out, "w") as f:
            json.dump(result, f)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
