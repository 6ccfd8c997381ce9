"""A small converted dataset for the loader tests, used when helper fixtures (tiny_dataset) are absent.

Written with pipeline.format.shards.ShardWriter and a hand-made manifest: N = 203 train samples in
shards of 64 (uneven last shard), 57 test samples, 10 classes, 32x32 JPEGs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg

from pipeline.format.dataset import FORMAT_VERSION, MANIFEST, ArrayEntry, Dataset, Manifest, ShardEntry, SplitEntry
from pipeline.format.shards import ShardWriter, sha256_file
from pipeline.load import transforms as T
from pipeline.load.loader import dali_available, make_loader
from pipeline.load.webdataset_loader import WebDatasetLoader

CLASSES = [f"c{i}" for i in range(10)]


def _array(root: Path, rel: str, array: np.ndarray, kind: str) -> ArrayEntry:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return ArrayEntry(file=rel, sha256=sha256_file(path), kind=kind,
                      count=int(array.sum()) if array.dtype == np.bool_ else None)


def make_dataset(root: Path, sizes: dict[str, int] | None = None, side: int = 32, per_shard: int = 64) -> Path:
    sizes = sizes or {"train": 203, "test": 57}
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in sizes.items():
        writer = ShardWriter(root, split, per_shard)
        for idx in range(n):
            # smooth random pictures: JPEG keeps them close, so decoders agree to a few levels
            small = rng.integers(0, 256, (3, 4, 4), dtype=np.uint8)
            image = torch.nn.functional.interpolate(torch.from_numpy(small)[None].float(), size=(side, side),
                                                    mode="bilinear", align_corners=False)[0].to(torch.uint8)
            writer.write(idx, encode_jpeg(image, quality=95).numpy().tobytes(), "jpg")
        shards = [ShardEntry(**vars(s)) for s in writer.close()]
        labels = rng.integers(0, len(CLASSES), n).astype(np.int64)
        keys = root / "labels" / split / "source_keys.json"
        keys.parent.mkdir(parents=True, exist_ok=True)
        keys.write_text(json.dumps([f"{split}:{i}" for i in range(n)]))
        splits[split] = SplitEntry(
            num_samples=n, shards=shards,
            source_index=_array(root, f"labels/{split}/source_index.npy", np.arange(n, dtype=np.int64), "source_index"),
            source_keys=f"labels/{split}/source_keys.json",
            label_sets={"clean": _array(root, f"labels/{split}/clean.npy", labels, "clean")},
            masks={"clean-subset-20-s0": _array(root, f"labels/{split}/masks/clean-subset-20-s0.npy",
                                                np.isin(np.arange(n), rng.choice(n, 20, replace=False)), "mask")},
        )
    manifest = Manifest(format_version=FORMAT_VERSION, name=root.name, classes=CLASSES, image_ext="jpg",
                        splits=splits, provenance={"made_by": "tests/support/loader_data.py"})
    (root / MANIFEST).write_text(manifest.model_dump_json(indent=1))
    return root


def build_loader(kind: str, dataset: Dataset, split: str = "train", **kw):
    """A loader of one kind ("cache", "dali" or "webdataset", the fallback without DALI) with test defaults:
    cifar transforms on the CPU, training mode, batches of 16. Skips when DALI is missing."""
    kw.setdefault("transform", T.cifar10())
    kw.setdefault("device", torch.device("cpu"))
    kw.setdefault("train", True)
    kw.setdefault("batch_size", 16)
    if kind == "dali" and not dali_available():
        pytest.skip("nvidia.dali is not installed")
    if kind == "webdataset":
        return WebDatasetLoader(dataset, split, **kw)
    return make_loader(dataset, split, mode="cache" if kind == "cache" else "stream", **kw)
