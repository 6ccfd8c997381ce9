"""A converted dataset on disk: manifest.json, shards, label sets and masks.

Layout written by tools/make_shards.py (DESIGN.md "The way data flows"):

    <root>/<name>/manifest.json
    <root>/<name>/<split>-NNNNNN.tar / .idx
    <root>/<name>/labels/<split>/<label set>.npy     int64 (N,), indexed by idx
    <root>/<name>/labels/<split>/source_index.npy    int64 (N,), idx -> source position
    <root>/<name>/labels/<split>/masks/<mask>.npy    bool (N,)

Label sets and masks live outside the shards, so adding one never rewrites a shard.

Integrity: every label set and mask is checked against its manifest sha256 when it is loaded;
:meth:`Dataset.verify` checks shard and index files (existence and size, or sha256 too), and
reports every bad file at once.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.errors import UserError
from pipeline.format.label_sets import outdated_label_set
from pipeline.format.shards import sha256_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
FULL_VERIFY_BYTES = 2 << 30  # verify="auto" hashes the shards of splits up to this size (CIFAR: ~150 MB, ~0.3 s)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShardEntry(_Strict):
    tar: str
    index: str
    num_samples: int
    tar_sha256: str
    index_sha256: str
    tar_bytes: int | None = None  # file sizes (None in older manifests)
    index_bytes: int | None = None


class ArrayEntry(_Strict):
    """One per-sample array file (label set, mask, source index)."""

    file: str  # relative to the dataset directory
    sha256: str
    kind: str  # "clean", "symmetric", "cifar10n", "mask", "source_index", ...
    params: dict = {}  # generator parameters (rate, seed, ...) or the published file used
    noise_rate: float | None = None  # realised fraction of labels != clean
    transition_matrix: list[list[float]] | None = None  # row-normalised, rows = clean class
    count: int | None = None  # for masks: number of True entries


class SplitEntry(_Strict):
    num_samples: int
    shards: list[ShardEntry]
    source_index: ArrayEntry
    source_keys: str  # JSON list file: idx -> source key (path in archive, or "batch:pos")
    source_keys_sha256: str | None = None  # sha256 of the source_keys file (None in older manifests)
    label_sets: dict[str, ArrayEntry]
    masks: dict[str, ArrayEntry] = {}
    image_size_min: tuple[int, int] | None = None  # (width, height) range of the stored images (None in older
    image_size_max: tuple[int, int] | None = None  # manifests); equal when every image has one size


class Manifest(_Strict):
    format_version: int
    name: str
    classes: list[str]
    image_ext: str
    splits: dict[str, SplitEntry]
    provenance: dict

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class DatasetError(UserError, ValueError):
    """A converted dataset is missing, corrupt or asked for something it does not hold."""


def first_out_of_range(labels: np.ndarray, num_classes: int) -> int | None:
    """Position of the first label outside [0, num_classes), or None."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    return int(bad[0]) if len(bad) else None


class Dataset:
    """Read access to a converted dataset directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise DatasetError(
                f"{manifest_path} not found: convert the dataset first with tools/make_shards.py "
                f"(see README, 'Preparing data')"
            )
        try:
            self.manifest = Manifest.model_validate_json(manifest_path.read_text())
        except ValueError as err:
            raise DatasetError(f"{manifest_path} is not a valid noisyflow manifest: {err}") from err
        if self.manifest.format_version != FORMAT_VERSION:
            raise DatasetError(
                f"{manifest_path} has format_version {self.manifest.format_version}, this code reads "
                f"{FORMAT_VERSION}: re-run tools/make_shards.py with --force"
            )

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    def split(self, split: str) -> SplitEntry:
        if split not in self.manifest.splits:
            raise DatasetError(
                f"{self.path}: no split {split!r}; it has {sorted(self.manifest.splits)}"
            )
        return self.manifest.splits[split]

    def num_samples(self, split: str) -> int:
        return self.split(split).num_samples

    def shard_paths(self, split: str) -> list[Path]:
        return [self.path / s.tar for s in self.split(split).shards]

    def index_paths(self, split: str) -> list[Path]:
        return [self.path / s.index for s in self.split(split).shards]

    def label_set_entry(self, split: str, name: str) -> ArrayEntry:
        sets = self.split(split).label_sets
        if name not in sets:
            raise DatasetError(
                f"{self.path}: split {split!r} has no label set {name!r}; it has {sorted(sets)}. "
                f"Add one with tools/make_shards.py --add-label-set"
            )
        outdated = outdated_label_set(name, sets[name].params)
        if outdated:
            raise DatasetError(f"{self.path}, split {split!r}: {outdated}")
        return sets[name]

    def labels(self, split: str, name: str = "clean") -> np.ndarray:
        """int64 (N,) labels indexed by the global idx, checked against the manifest."""
        entry = self.label_set_entry(split, name)
        return self._load_array(entry, np.int64, split, f"label set {name!r}")

    def mask(self, split: str, name: str) -> np.ndarray:
        masks = self.split(split).masks
        if name not in masks:
            raise DatasetError(f"{self.path}: split {split!r} has no mask {name!r}; it has {sorted(masks)}")
        return self._load_array(masks[name], np.bool_, split, f"mask {name!r}")

    def source_index(self, split: str) -> np.ndarray:
        return self._load_array(self.split(split).source_index, np.int64, split, "source_index")

    def source_keys(self, split: str) -> list[str]:
        return json.loads((self.path / self.split(split).source_keys).read_text())

    def _load_array(self, entry: ArrayEntry, dtype, split: str, what: str) -> np.ndarray:
        """The array of `entry`, refused unless it matches its sha256, shape and dtype (and labels their range)."""
        path = self.path / entry.file
        if not path.is_file():
            raise DatasetError(f"{path} ({what} of split {split!r}) is missing: re-run tools/make_shards.py")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise DatasetError(f"{path} ({what} of split {split!r}) does not match its sha256 in the manifest: it "
                               f"was changed after conversion or is corrupt; {_FIX}")
        array = np.load(io.BytesIO(data), allow_pickle=False)
        n = self.num_samples(split)
        if array.shape != (n,) or array.dtype != dtype:
            raise DatasetError(
                f"{path} ({what}) has shape {array.shape} dtype {array.dtype}, expected ({n},) {np.dtype(dtype)}"
            )
        if dtype == np.int64 and what.startswith("label set"):
            bad = first_out_of_range(array, self.num_classes)
            if bad is not None:
                raise DatasetError(f"{path}: label {array[bad]} at idx {bad} is outside [0, {self.num_classes})")
        return array

    def check_image_size(self, splits: list[str], side: int) -> None:
        """data.transform=cifar takes images of exactly side x side px: checked against the sizes the manifest
        records (older manifests record none; their images are checked as they are decoded)."""
        for split in splits:
            low, high = self.split(split).image_size_min, self.split(split).image_size_max
            if low is None or (low, high) == ((side, side), (side, side)):
                continue
            sizes = f"{low[0]}x{low[1]}" if low == high else f"from {low[0]}x{low[1]} to {high[0]}x{high[1]}"
            raise DatasetError(
                f"split {split!r} of {self.path} has images of {sizes} px, but data.transform=cifar needs every image "
                f"{side}x{side} (data.image_size={side}): set data.transform=imagenet for images of other or mixed sizes"
            )

    def _files(self, split_name: str, shards_only: bool) -> list[tuple[str, str, int | None]]:
        """(relative path, sha256, size or None) of the files of a split the manifest lists."""
        split = self.split(split_name)
        files = [(s.tar, s.tar_sha256, s.tar_bytes) for s in split.shards]
        files += [(s.index, s.index_sha256, s.index_bytes) for s in split.shards]
        if not shards_only:
            files += [(e.file, e.sha256, None) for e in [*split.label_sets.values(), *split.masks.values()]]
            files.append((split.source_index.file, split.source_index.sha256, None))
            if split.source_keys_sha256 is not None:
                files.append((split.source_keys, split.source_keys_sha256, None))
        return files

    def problems(self, splits: list[str] | None = None, full: bool = True, shards_only: bool = False,
                 progress: bool = False) -> list[str]:
        """One line per file of `splits` (default: all) that is missing, has another size than the manifest
        records, or (full) another sha256; shards_only leaves out label sets, masks and source index/keys."""
        files = [f for name in (splits or list(self.manifest.splits)) for f in self._files(name, shards_only)]
        if progress:
            from tqdm import tqdm

            files = tqdm(files, desc=f"verify {self.name}", unit="file", leave=False)
        found = []
        for rel, sha, size in files:
            path = self.path / rel
            if not path.is_file():
                found.append(f"{path} is missing")
            elif size is not None and path.stat().st_size != size:
                found.append(f"{path} has {path.stat().st_size} bytes, the manifest records {size}")
            elif full and sha256_file(path) != sha:
                found.append(f"{path} does not match its sha256 in the manifest")
        return found

    def verify(self, splits: list[str] | None = None, mode: Literal["full", "quick", "auto"] = "full",
               shards_only: bool = False) -> None:
        """Raises DatasetError naming every bad file of `splits` (see problems()). mode "quick" checks
        existence and size only; "auto" is "full" when the splits' shards total at most FULL_VERIFY_BYTES."""
        if mode == "auto":
            total = sum(s.tar_bytes or 0 for name in (splits or self.manifest.splits) for s in self.split(name).shards)
            mode = "full" if total <= FULL_VERIFY_BYTES else "quick"
        found = self.problems(splits, full=mode == "full", shards_only=shards_only)
        if found:
            raise DatasetError(f"{self.path}: {len(found)} file(s) do not match the manifest (changed after "
                               f"conversion, or corrupt):\n  " + "\n  ".join(found) + f"\n{_FIX}")


_FIX = "re-convert the dataset (tools/make_shards.py --force) or restore the file"
