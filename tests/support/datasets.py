"""The one way a test gets a converted dataset: an image tree from support.demo_data.write_image_tree, converted by
tools/make_shards.py (the real converter) with its shard size, label-set and clean-subset options.

make_dataset(base, name, ...) writes the tree to base/<name>-src and the dataset to base/data/<name>, so a run
finds it with data.root=base/data data.name=<name>. A test about a damaged or unusual dataset copies this output
and changes the one file it is about.
"""

from __future__ import annotations

from pathlib import Path

from support.demo_data import CIFAR10_CLASSES, make_shards_main, write_image_tree

TINY = {"train": 200, "test": 50}  # tests/conftest.py's tiny_dataset: 20 and 5 demo JPEGs a class


def make_dataset(
    base: Path,
    name: str,
    sizes: dict[str, int],
    *,
    side: int | tuple[int, int] | None = None,
    classes: list[str] | None = None,
    per_shard: int = 64,
    label_sets: tuple[str, ...] = (),
    clean_subset: int | None = None,
) -> Path:
    """Converts a tree of sizes[split] images a split and returns the dataset folder base/data/<name>.

    Each split's images are spread over the classes (CIFAR-10's by default) as evenly as they go, the first
    classes taking the remainder. side None: the demo's 32x32 CIFAR-10 JPEGs; an int or (height, width): generated
    pictures of that size. per_shard: --samples-per-shard (the last shard holds what is left). label_sets: noisy
    label sets of train ("clean" is always written for every split). clean_subset M: the train mask
    clean-subset-M-s0, a class-balanced clean subset of M samples.
    """
    classes = classes or CIFAR10_CLASSES
    tree = source_tree(base / "data" / name)
    for split, n in sizes.items():
        for c, cls in enumerate(classes):
            write_image_tree(tree, {split: n // len(classes) + (c < n % len(classes))}, [cls], side=side)
    args = ["--source", str(tree), "--name", name, "--out", str(base / "data"), "--samples-per-shard", str(per_shard),
            "--no-progress"]
    for label_set in label_sets:
        args += ["--label-set", label_set]
    if clean_subset is not None:
        args += ["--clean-subset", str(clean_subset)]
    assert make_shards_main()(args) == 0, f"make_shards could not build {name}: its message is in the captured stderr"
    return base / "data" / name


def source_tree(dataset: Path) -> Path:
    """The image tree that make_dataset converted into the dataset folder `dataset`."""
    return dataset.parent.parent / f"{dataset.name}-src"
