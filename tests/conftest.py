"""Shared test fixtures: tiny image trees of real CIFAR-10 JPEGs and a converted tiny dataset.

The images come from the shipped demo subset (tools/demo/cifar10-demo.tar.gz), so no test needs
the full data; tests that do (CIFAR-N joins on all 50,000 images) use ``shared_cifar10`` and skip
with a reason when ../shared/data/cifar10 is absent.
"""

from __future__ import annotations

import functools
import importlib.util
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_ARCHIVE = REPO / "tools" / "demo" / "cifar10-demo.tar.gz"
DEMO_CIFAR_N = REPO / "tools" / "demo" / "cifar10n-demo.npz"
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

TINY_TRAIN_PER_CLASS = 20  # tiny_dataset: 200 train images
TINY_TEST_PER_CLASS = 5  # tiny_dataset: 50 test images
TINY_SAMPLES_PER_SHARD = 64  # so train has several shards (64, 64, 64, 8)


def make_shards_main():
    """tools/make_shards.py's main(argv) -> int, imported by path (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("make_shards", REPO / "tools" / "make_shards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@functools.lru_cache(maxsize=1)
def demo_images() -> dict[str, bytes]:
    """{"train/cat/0042.jpg": jpeg bytes} for every image of the demo archive."""
    images: dict[str, bytes] = {}
    with tarfile.open(DEMO_ARCHIVE, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                f = tar.extractfile(member)
                assert f is not None
                images[member.name.split("/", 1)[1]] = f.read()
    return images


def write_image_tree(
    root: Path,
    per_class: dict[str, int] | None = None,
    classes: list[str] | None = None,
) -> Path:
    """Writes ``root/<split>/<class>/NNNN.jpg`` with the first per_class[split] demo JPEGs of each class
    (same file names as in CIFAR-10, so CIFAR-N joins by name work). Returns root."""
    per_class = per_class or {"train": TINY_TRAIN_PER_CLASS, "test": TINY_TEST_PER_CLASS}
    images = demo_images()
    for split, count in per_class.items():
        for cls in classes or CIFAR10_CLASSES:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                (folder / f"{i:04d}.jpg").write_bytes(images[f"{split}/{cls}/{i:04d}.jpg"])
    return root


def tar_tree(root: Path, archive: Path, top: str | None = None) -> Path:
    """Packs the tree at root into a .tar.gz under a top-level folder (default: root's name)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=top or root.name)
    return archive


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
    """A converted dataset: train (200 images, 4 shards) + test (50), 10 CIFAR-10 classes, real JPEGs,
    label sets `clean` and `sym-0.40-s0` on train, `clean` on test, and the train mask
    `clean-subset-20-s0` (a class-balanced clean meta subset of 20). Returns the dataset directory."""
    main = make_shards_main()
    base = tmp_path_factory.mktemp("tiny")
    tree = write_image_tree(base / "tiny-src")
    rc = main([
        "--source", str(tree), "--name", "tiny", "--out", str(base / "data"),
        "--label-set", "sym-0.40-s0", "--samples-per-shard", str(TINY_SAMPLES_PER_SHARD), "--no-progress",
        "--clean-subset", "20",
    ])
    assert rc == 0, "make_shards failed to build the tiny dataset"
    return base / "data" / "tiny"
