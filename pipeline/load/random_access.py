"""Reading single samples out of the shards by idx, for loaders that train on a subset per epoch.

The stream loaders read a split front to back; a per-epoch subset (pipeline/load/sampling.py) of a
large split would then decode everything to keep a fraction. Instead the DALI index files that
sit beside every tar already say where each member's bytes are ("<ext> <offset> <size> <name>"
per member, offsets of the data, not the header), and the member name is the 9-digit idx
(pipeline/format/shards.py). So one parse of the index files gives idx -> (shard, offset, size) for the
whole split, and a sample is one positioned read (os.pread) of `size` bytes: no tar parsing, and
the page cache or the file system's read-ahead does the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.format.dataset import Dataset, DatasetError
from pipeline.format.shards import DALI_INDEX_VERSION, IDX_EXT


class ShardRandomAccess:
    """idx -> encoded image bytes for one split. Keeps one read-only descriptor per shard open."""

    def __init__(self, dataset: Dataset, split: str):
        self._fds: list[int] = []
        self.n = dataset.num_samples(split)
        self.tars = dataset.shard_paths(split)
        self.shard = np.full(self.n, -1, dtype=np.int32)  # (N,) shard number of idx
        self.offset = np.zeros(self.n, dtype=np.int64)  # (N,) byte offset of the image data in its tar
        self.size = np.zeros(self.n, dtype=np.int64)  # (N,) bytes of the image
        for s, index in enumerate(dataset.index_paths(split)):
            self._parse(index, s)
        if (self.shard < 0).any():
            missing = int(np.flatnonzero(self.shard < 0)[0])
            raise DatasetError(
                f"{dataset.path}: no index entry for idx {missing} of split {split!r} (of {self.n}): "
                f"re-run tools/make_shards.py --force"
            )

    def _parse(self, index: Path, shard: int) -> None:
        lines = index.read_text().splitlines()
        if not lines or lines[0].split()[0] != DALI_INDEX_VERSION:
            raise DatasetError(f"{index}: not a DALI {DALI_INDEX_VERSION} index file: re-run tools/make_shards.py --force")
        for number, line in enumerate(lines[1:], start=2):
            fields = line.split()
            for ext, offset, size, name in zip(fields[0::4], fields[1::4], fields[2::4], fields[3::4]):
                if ext == IDX_EXT:
                    continue
                try:
                    idx = int(name.partition(".")[0])
                except ValueError:
                    raise DatasetError(f"{index}:{number}: member {name!r} is not named by a 9-digit idx") from None
                if not 0 <= idx < self.n:
                    raise DatasetError(f"{index}:{number}: idx {idx} is outside [0, {self.n}) of this split")
                self.shard[idx], self.offset[idx], self.size[idx] = shard, int(offset), int(size)

    def _fd(self, shard: int) -> int:
        if not self._fds:  # opened lazily so a loader can be built in one process and used in another
            self._fds = [os.open(tar, os.O_RDONLY) for tar in self.tars]
        return self._fds[shard]

    def read(self, idx: int) -> np.ndarray:
        """The encoded image of `idx` as uint8 (size,)."""
        shard, offset, size = int(self.shard[idx]), int(self.offset[idx]), int(self.size[idx])
        data = os.pread(self._fd(shard), size, offset)
        if len(data) != size:
            raise DatasetError(f"{self.tars[shard]}: idx {idx} needs {size} bytes at offset {offset}, the file "
                               f"ends after {len(data)}: the tar is truncated; re-run tools/make_shards.py --force")
        return np.frombuffer(data, dtype=np.uint8)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __del__(self) -> None:
        self.close()
