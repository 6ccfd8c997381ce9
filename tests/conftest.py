"""Shared test fixtures: the demo archive, the full CIFAR-10 data when present, a converted tiny dataset.

The images come from the shipped demo subset (tools/demo/cifar10-demo.tar.gz, tests/support/demo_data.py),
so no test needs the full data; tests that do (CIFAR-N joins on all 50,000 images) use ``shared_cifar10``
and skip with a reason when ../shared/data/cifar10 is absent. Every converted dataset of the tests is
built by tests/support/datasets.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.datasets import TINY, make_dataset
from support.demo_data import DEMO_ARCHIVE, SHARED_CIFAR10


@pytest.fixture(scope="session")
def demo_archive() -> Path:
    if not DEMO_ARCHIVE.is_file():
        pytest.fail(f"{DEMO_ARCHIVE} is missing: run python tools/demo/make_demo_subset.py")
    return DEMO_ARCHIVE


@pytest.fixture(scope="session")
def shared_cifar10() -> Path:
    """The full CIFAR-10 JPEG archive + CIFAR-N files (../shared/data/cifar10 from the repo root)."""
    if not (SHARED_CIFAR10 / "cifar10-jpg.tar.gz").is_file():
        pytest.skip(f"full CIFAR-10 data not found at {SHARED_CIFAR10} (CI has it at ../shared relative to the repo)")
    return SHARED_CIFAR10


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, demo_archive) -> Path:
    """A converted dataset: train (200 images, shards of 64: 64, 64, 64, 8) + test (50), 10 CIFAR-10 classes,
    real JPEGs, label sets `clean` and `sym-0.40-s0` on train, `clean` on test, and the train mask
    `clean-subset-20-s0` (a class-balanced clean meta subset of 20). Returns the dataset directory."""
    return make_dataset(tmp_path_factory.mktemp("tiny"), "tiny", TINY, per_shard=64, label_sets=("sym-0.40-s0",),
                        clean_subset=20)
