"""A loader of each kind with the loader tests' defaults. Their datasets come from support.datasets."""

from __future__ import annotations

import pytest
import torch

from pipeline.format.dataset import Dataset
from pipeline.load import transforms as T
from pipeline.load.loader import dali_available, make_loader
from pipeline.load.webdataset_loader import WebDatasetLoader


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
