"""Stream mode with DALI: webdataset reader -> image decoder -> augmentation, sharded by process.

    fn.readers.webdataset   tars + DALI index files, part `shard_id` of `num_shards`, shuffled
                            in a buffer for training, last batch padded (pad_last_batch)
    fn.decoders.image       "mixed" (nvJPEG) on a GPU, "cpu" otherwise (device_id=None)
    cifar                   DALI stops at the decoded uint8 HWC batch; the pad-4 crop, flip and
                            normalisation are the batched torch ops of pipeline/load/transforms.py, run
                            on the device (the cache mode's code)
    imagenet train          decoders.image_random_crop (area 8-100 %, aspect 3/4-4/3) -> resize
                            -> crop_mirror_normalize with random mirror
    imagenet eval           resize shorter side, center crop, normalise
    by idx                  with `sampling` (pipeline/load/sampling.py) or a small kept subset (the plans of
                            pipeline/load/split_loader.py) the reader is replaced by an external source
                            that feeds this process's idx, read by idx from the tars
                            (pipeline/load/random_access.py), batch by batch; decoding is the same
    views (cifar kind)      views=("weak", "strong") etc.: the same torch ops also make the views
                            (T.train_views); the imagenet kind has no views in stream mode (its
                            augmentation is DALI's: use the cache mode for multi-view methods)

Why torch ops for cifar: it is the cache mode's code (one implementation of the recipe), and it
is at least as fast. Side by side on two CPU cores (CIFAR-10 train, batch 512, interleaved epochs)
the two DALI augmentation operators and the torch ops gave the same speed within the noise at a
load average of ~3 (~46k img/s each), and the torch ops ~7 % more with two extra busy processes
(29k vs 27k). The imagenet kind stays in DALI: random-resized-crop wants the full-size image,
which a torch batch cannot hold. A consequence: the cifar kind needs images of one size per
batch (as in cache mode); use the imagenet kind for mixed sizes.

Exact epochs: the iterator is given reader_name and LastBatchPolicy.PARTIAL, so it stops at the end
of this process's part and trims the padding samples out of the last batch; batches are then
regrouped by pipeline.load.epochs.epoch_plan so every process takes the same number of steps.

Each epoch builds a fresh pipeline seeded by (seed, epoch, process) (SeedPurpose.DALI), with the
part index rotated by the epoch for training: the order of epoch e depends on (seed, e), not on the
epochs before it, so a resumed run sees the same data order as an uninterrupted one (DESIGN.md
rule 7). The price, measured on CIFAR-10: building once and resetting per epoch was ~8 % faster
(51k vs 47k img/s; build ~0.04 s, teardown ~0.03 s, and the next epoch's first batches are not
prefetched), but the reader's random state then carries over from epoch to epoch and a resumed run
would see other orders.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from pipeline.format.dataset import Dataset
from pipeline.load import transforms as T
from pipeline.load.batch import Batch
from pipeline.load.epochs import SeedPurpose, derive_seed, epoch_plan, part_bounds, view_generators
from pipeline.load.random_access import ShardRandomAccess
from pipeline.load.split_loader import SplitLoader
from pipeline.load.transforms import RRC_AREA, RRC_RATIO, TransformConfig

log = logging.getLogger(__name__)

SHUFFLE_BUFFER = 4096  # samples held by the reader's shuffle buffer (encoded bytes: ~4 MB for CIFAR)
PREFETCH = 2  # batches DALI prepares ahead


@pipeline_def
def _reader_pipeline(*, paths, index_paths, ext, shard_id, num_shards, train, config: TransformConfig, gpu: bool,
                     dont_use_mmap: bool):
    """The whole split: DALI's webdataset reader over this process's part of the tars."""
    encoded, idx = fn.readers.webdataset(
        paths=paths,
        index_paths=index_paths,
        ext=[ext, "idx"],
        dtypes=[types.UINT8, types.INT64],
        missing_component_behavior="error",
        shard_id=shard_id,
        num_shards=num_shards,
        random_shuffle=train,
        initial_fill=SHUFFLE_BUFFER,
        pad_last_batch=True,
        stick_to_shard=True,
        dont_use_mmap=dont_use_mmap,
        name="reader",
    )
    return _decode(encoded, idx, train=train, config=config, gpu=gpu)


@pipeline_def
def _by_idx_pipeline(*, source, train, config: TransformConfig, gpu: bool):
    """Reading by idx: `source` yields (encoded images, idx) batches read by idx
    (pipeline/load/random_access.py) and raises StopIteration at the end of the epoch."""
    encoded, idx = fn.external_source(source=source, num_outputs=2, batch=True, dtype=[types.UINT8, types.INT64])
    return _decode(encoded, idx, train=train, config=config, gpu=gpu)


def _decode(encoded, idx, *, train: bool, config: TransformConfig, gpu: bool):
    """Decoding (and for the imagenet kind, augmentation) shared by both pipelines."""
    decoder = "mixed" if gpu else "cpu"
    if config.kind == "cifar":  # augmented with torch ops on the batch (DaliLoader._batch)
        return fn.decoders.image(encoded, device=decoder, output_type=types.RGB), idx  # uint8 (H, W, 3)
    size = config.size
    train = train and config.augment
    if train:
        images = fn.decoders.image_random_crop(
            encoded, device=decoder, output_type=types.RGB, random_area=list(RRC_AREA),
            random_aspect_ratio=list(RRC_RATIO), num_attempts=10,
        )
        images = fn.resize(images, resize_x=size, resize_y=size)
    else:
        images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
        images = fn.resize(images, resize_shorter=config.resize)
    images = fn.crop_mirror_normalize(
        images, crop=(size, size), mirror=fn.random.coin_flip(probability=0.5) if train else 0,
        mean=[255.0 * m for m in config.mean], std=[255.0 * s for s in config.std], dtype=types.FLOAT,
        output_layout="CHW",
    )
    return images, idx  # float32 (3, size, size)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """torch ops on one thread for the duration: DALI's workers already hold the CPU cores.

    An OpenMP team of torch threads on cores busy with DALI decoding waits on preempted threads:
    with 2 torch threads next to 2 DALI threads on 2 cores an epoch ran at ~10k img/s, with 1 torch
    thread at ~31k (CIFAR-10, batch 512, same run, load ~4.5). The previous setting is restored
    before the batch is yielded.
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


class DaliLoader(SplitLoader):
    """Stream-mode loader on DALI; see the module docstring and pipeline/load/split_loader.py."""

    def __init__(
        self,
        dataset: Dataset,
        split: str,
        *,
        exclude: np.ndarray | None = None,  # (N,) bool: idx left out (see the plans of pipeline/load/split_loader.py)
        dont_use_mmap: bool = False,  # True reads the tars with plain reads (often better on network filesystems)
        **options,  # SplitLoader's
    ):
        super().__init__(**options)
        if self.views and self.transform.kind != "cifar":
            raise ValueError(
                f"views {self.views} with the {self.transform.kind!r} transform in stream mode are not supported "
                f"(DALI augments that kind itself; only the cifar kind uses the torch ops that make views): "
                f"use data.loader=cache"
            )
        self.paths = [str(p) for p in dataset.shard_paths(split)]
        self.index_paths = [str(p) for p in dataset.index_paths(split)]
        for tar, index in zip(self.paths, self.index_paths):
            for path in (tar, index):
                if not Path(path).is_file():
                    raise FileNotFoundError(f"{path} (split {split!r} of {dataset.path}) is missing: re-run tools/make_shards.py")
        self.ext = dataset.manifest.image_ext
        self.n = dataset.num_samples(split)
        self.dont_use_mmap = dont_use_mmap
        self._plan(self.n, exclude, can_stream=True)
        self._dropped = None  # (N,) bool on the device: excluded idx dropped from streamed batches
        if self.streams and exclude is not None:
            self._dropped = torch.from_numpy(exclude).to(self.device)
        if not self.streams:
            self.reader = ShardRandomAccess(dataset, split)

    def _build(self, epoch: int, source=None) -> DALIGenericIterator:
        """A fresh pipeline for `epoch`: over the split, or over `source`'s batches (read by idx)."""
        gpu = self.device.type == "cuda"
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if gpu else None
        seed = derive_seed(self.seed, epoch, SeedPurpose.DALI, self.process_index) % (2**31)  # DALI takes int32
        common = dict(
            batch_size=self.batch_size, num_threads=self.num_threads, device_id=device_id, seed=seed,
            prefetch_queue_depth=PREFETCH, train=self.train, config=self.transform, gpu=gpu,
        )
        if source is not None:  # epoch_plan's last batch may hold one sample more than batch_size
            common["batch_size"] = max(hi - lo for lo, hi in self._bounds)
            pipe = _by_idx_pipeline(source=source, **common)
            pipe.build()
            return DALIGenericIterator(pipe, ["images", "idx"], auto_reset=False)  # runs until source stops
        pipe = _reader_pipeline(
            paths=self.paths, index_paths=self.index_paths, ext=self.ext, shard_id=self._part_index(epoch),
            num_shards=self.num_processes, dont_use_mmap=self.dont_use_mmap, **common,
        )
        pipe.build()
        return DALIGenericIterator(
            pipe, ["images", "idx"], reader_name="reader", last_batch_policy=LastBatchPolicy.PARTIAL,
            auto_reset=False,
        )

    def __iter__(self) -> Iterator[Batch]:
        """One epoch; the epoch counter advances at its end unless set_epoch is called."""
        epoch = self.epoch
        generator = torch.Generator(device=self.device)  # the cifar kind's crop and flip draws
        generator.manual_seed(derive_seed(self.seed, epoch, SeedPurpose.AUGMENT, self.process_index))
        extra = view_generators(self.views, self.device, self.seed, epoch, self.process_index)
        batches = self._split_epoch(epoch) if self.streams else self._by_idx_epoch(epoch)
        for images, idx in batches:
            yield self._batch(images, idx, generator, extra)
        self.epoch = epoch + 1

    def _split_epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, idx) of this process's part of the split, regrouped into the epoch_plan batches."""
        part = self._part_index(epoch)
        start, stop = part_bounds(self.n, self.num_processes, part)
        _, bounds = epoch_plan(self.n, self.batch_size, part, self.num_processes)
        iterator = self._build(epoch)
        tail_images, tail_idx, seen = [], [], 0
        try:
            for step, outputs in enumerate(iterator):
                images = outputs[0]["images"]  # on the DALI output device; see _decode for the layout
                idx = outputs[0]["idx"].reshape(-1)  # (b,) int64
                seen += idx.numel()
                if step < len(bounds) - 1:
                    yield images, idx
                else:  # the last step takes everything left (the surplus of a larger part included)
                    tail_images.append(images.clone())
                    tail_idx.append(idx.clone())
        finally:
            del iterator
        if seen != stop - start:
            raise RuntimeError(
                f"DALI returned {seen} samples for part {part} of {self.num_processes} of {self.paths[0]}..., "
                f"expected {stop - start}: the .idx index files may not match the tars; re-run tools/make_shards.py --force"
            )
        if bounds:
            yield torch.cat(tail_images), torch.cat(tail_idx)

    def _by_idx_epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, idx) of this process's idx for `epoch` (SplitLoader.epoch_idx), read by idx."""
        mine = self.epoch_idx(epoch)  # (part,) int64

        def source() -> Iterator[tuple[list[np.ndarray], list[np.ndarray]]]:
            for lo, hi in self._bounds:
                idx = mine[lo:hi]
                yield [self.reader.read(int(i)) for i in idx], [np.array([i], dtype=np.int64) for i in idx]

        iterator = self._build(epoch, source())
        try:
            for outputs in iterator:
                yield outputs[0]["images"], outputs[0]["idx"].reshape(-1)
        finally:
            del iterator

    def _batch(self, images: torch.Tensor, idx: torch.Tensor, generator: torch.Generator,
               extra: dict[str, torch.Generator]) -> Batch:
        images = images.to(self.device, non_blocking=True)
        idx = idx.to(self.device, non_blocking=True)
        if self._dropped is not None:
            keep = ~self._dropped[idx]
            images, idx = images[keep], idx[keep]
        views = {}
        if self.transform.kind == "cifar":  # (b, H, W, 3) uint8 -> (b, 3, size, size) float32
            with _one_torch_thread() if self.device.type == "cpu" else nullcontext():
                if self.views:
                    images, views = T.train_views(images.permute(0, 3, 1, 2), self.transform, self.views,
                                                  generator=generator, generators=extra)
                else:
                    images = T.apply(images.permute(0, 3, 1, 2), self.transform, train=self.train,
                                     generator=generator)
        return Batch(images=images, idx=idx, views=views)
