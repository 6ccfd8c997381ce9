"""Tiny image trees of real CIFAR-10 JPEGs, from the shipped demo subset (tools/demo/cifar10-demo.tar.gz),
and where the data of the tests lives. The fixtures built from them are in tests/conftest.py."""

from __future__ import annotations

import functools
import tarfile
from pathlib import Path

from support.tools import load_tool

REPO = Path(__file__).resolve().parents[2]
DEMO_ARCHIVE = REPO / "tools" / "demo" / "cifar10-demo.tar.gz"
DEMO_CIFAR_N = REPO / "tools" / "demo" / "cifar10n-demo.npz"
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

TINY_TRAIN_PER_CLASS = 20  # tiny_dataset: 200 train images
TINY_TEST_PER_CLASS = 5  # tiny_dataset: 50 test images
TINY_SAMPLES_PER_SHARD = 64  # so train has several shards (64, 64, 64, 8)


def make_shards_main():
    """tools/make_shards.py's main(argv) -> int."""
    return load_tool("make_shards").main


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
