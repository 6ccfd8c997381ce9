"""Stream mode without DALI (e.g. macOS, where nvidia-dali has no wheels): tarfile + torchvision.

Same contract as pipeline/dali_loader.py, slower: the tars are read in file order with
pipeline.shards.read_shard, this process reads only its contiguous part of the split (the split of
pipeline.loader.epoch_plan, part index rotated by the epoch for training, as in the DALI loader),
training order comes from a seeded shuffle buffer, images are decoded by torchvision in a thread
pool, and augmented with the batched ops of pipeline/transforms.py on the device (views too).
With `sampling`, each epoch's class-balanced subset is read by idx (pipeline/random_access.py).
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from pipeline import transforms as T
from pipeline.batch import Batch
from pipeline.cache_loader import decode_sample, quiet_decoder_warnings
from pipeline.dataset import Dataset
from pipeline.loader import derive_seed, epoch_plan, part_bounds, view_generators
from pipeline.shards import read_shard
from pipeline.split_loader import SplitLoader

SHUFFLE_BUFFER = 4096  # samples in the shuffle buffer (encoded bytes), as in the DALI loader


class WdsLoader(SplitLoader):
    """Stream-mode fallback loader; see the module docstring and pipeline/loader.py."""

    def __init__(
        self,
        dataset: Dataset,
        split: str,
        *,
        exclude: np.ndarray | None = None,  # (N,) bool: idx left out
        **options,  # SplitLoader's
    ):
        super().__init__(**options)
        self.paths = dataset.shard_paths(split)
        self.shard_sizes = [s.num_samples for s in dataset.split(split).shards]
        self.n = dataset.num_samples(split)
        if sum(self.shard_sizes) != self.n:
            raise ValueError(
                f"{dataset.path}: the shards of split {split!r} hold {sum(self.shard_sizes)} samples, the manifest "
                f"says {self.n}: re-run tools/make_shards.py --force"
            )
        self.exclude = exclude
        self._plan_stream(dataset, split, exclude)

    def _samples(self, start: int, stop: int) -> Iterator[tuple[int, bytes, str]]:
        """(idx, bytes, ext) at file positions [start, stop) of the split, reading only the shards needed."""
        first = 0
        for path, size in zip(self.paths, self.shard_sizes):
            if first < stop and first + size > start:
                for position, sample in enumerate(read_shard(path), start=first):
                    if start <= position < stop:
                        yield sample
            first += size

    def _shuffled(self, samples: Iterator, rng: random.Random) -> Iterator:
        buffer = []
        for sample in samples:
            if len(buffer) < SHUFFLE_BUFFER:
                buffer.append(sample)
                continue
            k = rng.randrange(len(buffer))
            buffer[k], sample = sample, buffer[k]
            yield sample
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[Batch]:
        """One epoch; the epoch counter advances at its end unless set_epoch is called."""
        epoch = self.epoch
        if self.sampling is not None:
            bounds = self._bounds
            samples = ((int(i), self.reader.read(int(i)).tobytes(), "") for i in self.epoch_subset(epoch, self.exclude))
        else:
            part = self._part_index(epoch)
            start, stop = part_bounds(self.n, self.num_processes, part)
            _, bounds = epoch_plan(self.n, self.batch_size, part, self.num_processes)
            samples = self._samples(start, stop)
            if self.train:
                samples = self._shuffled(samples, random.Random(derive_seed(self.seed, epoch, 3)))
        generator = None
        if self.train:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(derive_seed(self.seed, epoch, 1 + self.process_index))
        extra = view_generators(self.views, self.device, self.seed, epoch, self.process_index)
        side = T.stored_side(self.transform)
        fixed = self.transform.kind == "imagenet"
        with ThreadPoolExecutor(max(1, self.num_threads)) as pool:
            for lo, hi in bounds:
                chunk = [next(samples) for _ in range(hi - lo)]
                if self.exclude is not None:
                    chunk = [s for s in chunk if not self.exclude[s[0]]]
                with quiet_decoder_warnings():
                    images = list(pool.map(
                        lambda s: decode_sample(s[1], side, fixed, f"sample idx {s[0]} of {self.paths[0].parent}"), chunk
                    ))
                stacked = torch.stack(images) if images else torch.empty(0, 3, side, side, dtype=torch.uint8)
                idx = torch.tensor([s[0] for s in chunk], dtype=torch.int64, device=self.device)  # (B,)
                if self.views:
                    pixels, views = T.train_views(stacked.to(self.device), self.transform, self.views,
                                                  generator=generator, generators=extra)
                    yield Batch(images=pixels, idx=idx, views=views)
                    continue
                pixels = T.apply(stacked.to(self.device), self.transform, train=self.train, generator=generator)
                yield Batch(images=pixels, idx=idx)
        self.epoch = epoch + 1
