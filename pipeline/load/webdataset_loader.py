"""Stream mode without DALI (e.g. macOS, where nvidia-dali has no wheels): webdataset + torchvision.

Same contract as pipeline/load/dali_loader.py, slower. Streaming (pipeline/load/split_loader.py's plans), the
webdataset library reads the tars in file order (tar members grouped by key into samples), this
process only the shards that hold its contiguous part of the split (the part of
pipeline.load.epochs.epoch_plan, its index rotated by the epoch for training, as in the DALI loader);
training order comes from a seeded shuffle buffer; excluded idx are dropped before decoding. By idx
(a small kept subset, or `sampling`), each sample is one read (pipeline/load/random_access.py). Images
are decoded by torchvision in a thread pool (pipeline/load/decode.py, the cache mode's decoder) and
augmented with the batched ops of pipeline/load/transforms.py on the device (views too).
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch
import webdataset as wds

from pipeline.format.dataset import Dataset, DatasetError
from pipeline.format.shards import IDX_EXT, decode_idx
from pipeline.load import transforms as T
from pipeline.load.batch import Batch
from pipeline.load.decode import decode_sample, quiet_decoder_warnings
from pipeline.load.epochs import SeedPurpose, derive_seed, epoch_plan, part_bounds, view_generators
from pipeline.load.random_access import ShardRandomAccess
from pipeline.load.split_loader import SplitLoader

SHUFFLE_BUFFER = 4096  # samples in the shuffle buffer (encoded bytes), as in the DALI loader


class WebDatasetLoader(SplitLoader):
    """Stream-mode fallback loader; see the module docstring and pipeline/load/split_loader.py."""

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
        self._plan(self.n, exclude, can_stream=True)
        if not self.streams:
            self.reader = ShardRandomAccess(dataset, split)

    def _samples(self, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
        """(idx, image bytes) at file positions [start, stop) of the split, reading only the shards needed."""
        needed, first, offset = [], 0, 0  # offset: file position of the first needed shard's first sample
        for path, size in zip(self.paths, self.shard_sizes):
            if first < stop and first + size > start:
                offset = offset if needed else first
                needed.append({"url": str(path)})
            first += size
        for position, sample in enumerate(wds.tarfile_samples(needed), start=offset):
            if position >= stop:
                return
            if position >= start:
                yield self._decode_member(sample)

    @staticmethod
    def _decode_member(sample: dict) -> tuple[int, bytes]:
        members = [key for key in sample if not key.startswith("__")]  # webdataset adds __key__, __url__
        images = [key for key in members if key != IDX_EXT]
        if IDX_EXT not in members or len(images) != 1:
            raise DatasetError(f"{sample['__url__']}: sample {sample['__key__']} has members {members}, "
                               f"expected one image and an .{IDX_EXT}: re-run tools/make_shards.py --force")
        return decode_idx(sample[IDX_EXT]), sample[images[0]]

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
        if self.streams:
            part = self._part_index(epoch)
            start, stop = part_bounds(self.n, self.num_processes, part)
            _, bounds = epoch_plan(self.n, self.batch_size, part, self.num_processes)
            samples = self._samples(start, stop)
            if self.train:
                rng = random.Random(derive_seed(self.seed, epoch, SeedPurpose.SHUFFLE))
                samples = self._shuffled(samples, rng)
        else:
            bounds = self._bounds
            samples = ((int(i), self.reader.read(int(i)).tobytes()) for i in self.epoch_idx(epoch))
        generator = None
        if self.train:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(derive_seed(self.seed, epoch, SeedPurpose.AUGMENT, self.process_index))
        extra = view_generators(self.views, self.device, self.seed, epoch, self.process_index)
        side = T.stored_side(self.transform)
        fixed = self.transform.kind == "imagenet"
        with ThreadPoolExecutor(max(1, self.num_threads)) as pool:
            for lo, hi in bounds:
                chunk = [next(samples) for _ in range(hi - lo)]
                if self.streams and self.exclude is not None:
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
