"""Tiny copies of real-world noisy datasets in their official layouts (pipeline/make/sources/*.py docstrings),
built from the shipped demo JPEGs (support.demo_data.demo_images). Each writer returns what the tests check against.

Labels are chosen by formula so tests can recompute them: the image behind a key does not matter
to the converter, only that it is a real JPEG.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
from support.demo_data import demo_images

CLOTHING1M_CLASSES = ["T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker", "Jacket",
                      "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear"]


def jpegs():
    """An endless supply of distinct real JPEG bytes."""
    images = list(demo_images().values())
    i = 0
    while True:
        yield images[i % len(images)]
        i += 1


def _put(root: Path, key: str, data: bytes) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


# ---------------------------------------------------------------------------------------------
# Clothing1M
# ---------------------------------------------------------------------------------------------


def write_clothing1m(root: Path, n_train: int = 40, n_clean: dict[str, int] | None = None,
                     annotations: str = "") -> dict:
    """images/x/yy/<name>.jpg + kv files + key lists. Noisy label of image i: i % 14; clean: (i * 3) % 14.
    Every other image of the clean splits also has a noisy label (the overlap of the two kv files).
    Returns {split: [keys]} and the label dicts."""
    n_clean = n_clean or {"clean_train": 12, "val": 8, "test": 10}
    supply = jpegs()
    ann = root / annotations
    write_lines(ann / "category_names_eng.txt", CLOTHING1M_CLASSES)
    noisy: dict[str, int] = {}
    clean: dict[str, int] = {}
    splits: dict[str, list[str]] = {}
    i = 0

    def key_of(i: int) -> str:
        return f"images/{i % 10}/{i % 100:02d}/{1000 + i}.jpg"

    for split, count in [("train", n_train)] + list(n_clean.items()):
        keys = []
        for _ in range(count):
            key = key_of(i)
            _put(root, key, next(supply))
            if split == "train":
                noisy[key] = i % 14
            else:
                clean[key] = (i * 3) % 14
                if i % 2 == 0:
                    noisy[key] = i % 14
            keys.append(key)
            i += 1
        splits[split] = keys
    write_lines(ann / "noisy_label_kv.txt", [f"{k} {v}" for k, v in noisy.items()])
    write_lines(ann / "clean_label_kv.txt", [f"{k} {v}" for k, v in clean.items()])
    write_lines(ann / "noisy_train_key_list.txt", splits["train"])
    for split, file in (("clean_train", "clean_train_key_list.txt"), ("val", "clean_val_key_list.txt"),
                        ("test", "clean_test_key_list.txt")):
        write_lines(ann / file, splits[split])
    return {"splits": splits, "noisy": noisy, "clean": clean}


# ---------------------------------------------------------------------------------------------
# WebVision 1.0 + ILSVRC-2012 val
# ---------------------------------------------------------------------------------------------


def synsets() -> list[str]:
    return [f"n{10000000 + 37 * c:08d}" for c in range(1000)]  # sorted, like the real wnids


def write_webvision(root: Path, classes: int = 60, per_class: int = 2, val_per_class: int = 1) -> dict:
    """Google train images of `classes` classes (50 of them in the mini protocol), val images,
    info/synsets.txt. Returns the listed (path, label) pairs."""
    supply = jpegs()
    train, val = [], []
    for c in range(classes):
        for j in range(per_class):
            key = f"google/q{c + 1:04d}/img{j}.jpg"
            _put(root, key, next(supply))
            train.append((key, c))
        for j in range(val_per_class):
            name = f"val{c * val_per_class + j + 1:06d}.jpg"
            _put(root, f"val_images_256/{name}", next(supply))
            val.append((name, c))
    write_lines(root / "info" / "train_filelist_google.txt", [f"{k} {c}" for k, c in train])
    write_lines(root / "info" / "val_filelist.txt", [f"{k} {c}" for k, c in val])
    write_lines(root / "info" / "synsets.txt", [f"{w} animal {i}, thing" for i, w in enumerate(synsets())])
    return {"train": train, "val": val}


def write_imagenet_val(root: Path, classes: int = 55, per_class: int = 1, layout: str = "flat") -> dict:
    """ILSVRC2012_val_NNNNNNNN.JPEG images; layout "flat" (+ val.txt and LOC_val_solution.csv beside
    the folder) or "synsets" (val/<wnid>/<file>). Returns [(file, class)]."""
    supply = jpegs()
    wnids = synsets()
    folder = root / "val"
    items = []
    for c in range(classes):
        for j in range(per_class):
            name = f"ILSVRC2012_val_{c * per_class + j + 1:08d}.JPEG"
            _put(folder, f"{wnids[c]}/{name}" if layout == "synsets" else name, next(supply))
            items.append((name, c))
    if layout == "flat":
        write_lines(root / "val.txt", [f"{n} {c}" for n, c in items])
        write_lines(root / "LOC_val_solution.csv", ["ImageId,PredictionString"]
                    + [f"{n[:-5]},{wnids[c]} 10 20 100 200 {wnids[c]} 1 2 3 4" for n, c in items])
    return {"folder": folder, "items": items}


# ---------------------------------------------------------------------------------------------
# ANIMAL-10N
# ---------------------------------------------------------------------------------------------


def write_animal10n(root: Path, n_train: int = 30, n_test: int = 10) -> dict:
    """training/<label>_<id>.jpg and testing/<label>_<id>.jpg with label = id % 10."""
    supply = jpegs()
    out = {}
    for folder, count in (("training", n_train), ("testing", n_test)):
        names = []
        for i in range(count):
            name = f"{i % 10}_{i:05d}.jpg"
            _put(root / folder, name, next(supply))
            names.append(name)
        out[folder] = names
    return out


# ---------------------------------------------------------------------------------------------
# Food-101N + Food-101
# ---------------------------------------------------------------------------------------------

FOOD_CLASSES = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare"]


def write_food101n(root: Path, food101: Path, per_class: int = 6, test_per_class: int = 2) -> dict:
    """Food-101N_release (images, meta/classes.txt, imagelist.tsv, verified_train/val.tsv) and food-101
    (images, meta/classes.txt, meta/test.txt). Image j of a class: verified in train if j % 3 == 0
    (right if j % 2 == 0), in val if j % 3 == 1."""
    supply = jpegs()
    imagelist, vtrain, vval, test = [], [], [], []
    for cls in FOOD_CLASSES:
        for j in range(per_class):
            key = f"{cls}/{j:03d}{cls[:3]}a1b2c3.jpg"
            _put(root / "images", key, next(supply))
            imagelist.append(key)
            if j % 3 == 0:
                vtrain.append(f"{key}\t{1 if j % 2 == 0 else 0}")
            elif j % 3 == 1:
                vval.append(f"{key}\t1")
        for j in range(test_per_class):
            _put(food101 / "images", f"{cls}/{100 + j}.jpg", next(supply))
            test.append(f"{cls}/{100 + j}")
    write_lines(root / "meta" / "classes.txt", ["class_name"] + FOOD_CLASSES)
    write_lines(root / "meta" / "imagelist.tsv", ["class_name/key"] + imagelist)
    write_lines(root / "meta" / "verified_train.tsv", ["class_name/key\tverification_label"] + vtrain)
    write_lines(root / "meta" / "verified_val.tsv", ["class_name/key\tverification_label"] + vval)
    write_lines(food101 / "meta" / "classes.txt", FOOD_CLASSES)
    write_lines(food101 / "meta" / "test.txt", test)
    return {"imagelist": imagelist, "test": test}


# ---------------------------------------------------------------------------------------------
# CIFAR-100N
# ---------------------------------------------------------------------------------------------


def write_cifar100n_pt(path: Path, fine_labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A CIFAR-100_human.pt look-alike (torch zip archive holding data.pkl: a dict of numpy arrays in
    original train order) for the given clean fine labels; returns its noisy_label array."""
    rng = np.random.default_rng(seed)
    clean = np.asarray(fine_labels, dtype=np.int64)
    noisy = np.where(rng.random(len(clean)) < 0.4, rng.integers(0, 100, len(clean)), clean)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("CIFAR-100_human/data.pkl", pickle.dumps({"clean_label": clean, "noisy_label": noisy}, protocol=2))
    return noisy
