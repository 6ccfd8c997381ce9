"""Tiny image trees of real CIFAR-10 JPEGs, from the shipped demo subset (tools/demo/cifar10-demo.tar.gz), or of
generated pictures of any size, and where the data of the tests lives. support.datasets converts these trees into
the datasets the tests use."""

from __future__ import annotations

import functools
import io
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from support.tools import load_tool

REPO = Path(__file__).resolve().parents[2]
DEMO_ARCHIVE = REPO / "tools" / "demo" / "cifar10-demo.tar.gz"
DEMO_CIFAR_N = REPO / "tools" / "demo" / "cifar10n-demo.npz"
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


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


def generated_jpeg(key: str, side: int | tuple[int, int]) -> bytes:
    """A random but smooth picture of side x side (or height x width) px, the same for the same key: 4x4 random
    colours scaled up bilinearly, so JPEG keeps it close and two decoders (DALI's, torchvision's) agree on its
    pixels to a few levels."""
    height, width = (side, side) if isinstance(side, int) else side
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    out = io.BytesIO()
    small.resize((width, height), Image.Resampling.BILINEAR).save(out, format="JPEG", quality=95)
    return out.getvalue()


def write_image_tree(
    root: Path,
    per_class: dict[str, int],
    classes: list[str] | None = None,
    side: int | tuple[int, int] | None = None,
) -> Path:
    """Writes ``root/<split>/<class>/NNNN.jpg``, per_class[split] images a class (CIFAR-10's classes by default):
    the first demo JPEGs of each class (same file names as in CIFAR-10, so CIFAR-N joins by name work), or, with
    side, pictures of that size from generated_jpeg. Returns root."""
    images = demo_images() if side is None else None
    for split, count in per_class.items():
        for cls in classes or CIFAR10_CLASSES:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                key = f"{split}/{cls}/{i:04d}.jpg"
                (folder / f"{i:04d}.jpg").write_bytes(images[key] if images is not None else generated_jpeg(key, side))
    return root


def tar_tree(root: Path, archive: Path, top: str | None = None) -> Path:
    """Packs the tree at root into a .tar.gz under a top-level folder (default: root's name)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=top or root.name)
    return archive
