"""webvision: WebVision 1.0 (Li et al. 2017), the "mini" protocol by default, plus ILSVRC-2012 val.

WebVision layout (the resized release; paths in the lists are relative to the root):

    <root>/info/train_filelist_google.txt   "google/q0001/<name>.jpg <label>"
    <root>/info/val_filelist.txt            "val000001.jpg <label>" (images in val_images_256/)
    <root>/info/synsets.txt                 optional: "n01440764 tench, Tinca tinca", 1000 lines
    <root>/google/q0001/...  <root>/val_images_256/...

Class mapping: WebVision's class ids ARE the ImageNet-1k ids in synset (WordNet id) sorted order,
so WebVision class c is line c+1 of synsets.txt and ImageNet-1k class c; "mini" = classes 0..49.

Splits: ``train`` (the Google images of the first ``num_classes`` classes; label set
``webvision-noisy``: web labels), ``val`` (WebVision val of those classes; ``clean``) and, when an
ImageNet val folder is given, ``imagenet_val`` (ILSVRC-2012 val of the same classes; ``clean``).

ImageNet val: either the folder sorted into synset subfolders (``val/n01440764/ILSVRC2012_val_
00000293.JPEG``, the torchvision layout; labels from folder names, needs info/synsets.txt) or the
flat official folder (``val/ILSVRC2012_val_00000001.JPEG``) with a label file in one of these forms:
  * ``ILSVRC2012_val_00000001.JPEG 65``: file name and the 0-based ImageNet-1k id in synset-sorted
    order (Caffe's ``val.txt``);
  * ``LOC_val_solution.csv``: header ``ImageId,PredictionString``, rows
    ``ILSVRC2012_val_00000001,n01751748 ...`` (the synset is the first word; needs synsets.txt).
The devkit's ``ILSVRC2012_validation_ground_truth.txt`` uses the devkit's own class order and is
not accepted (convert it to one of the forms above).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from pipeline.make.sources.base import (
    FileRecords,
    Source,
    SourceError,
    SourceSplit,
    check_files_exist,
    image_ext,
    parse_label,
    read_lines,
)

log = logging.getLogger(__name__)

MINI_CLASSES = 50
TRAIN_LIST = "info/train_filelist_google.txt"
VAL_LIST = "info/val_filelist.txt"
SYNSETS = "info/synsets.txt"
VAL_DIRS = ("", "val_images_256/", "val_images_resized/", "val_images/")


def is_webvision(path: Path) -> bool:
    return path.is_dir() and (path / TRAIN_LIST).is_file()


def read_synsets(root: Path) -> list[str] | None:
    path = root / SYNSETS
    if not path.is_file():
        return None
    wnids = [text.split()[0] for _, text in read_lines(path)]
    if len(wnids) != 1000 or wnids != sorted(wnids):
        raise SourceError(f"{path}: expected the 1000 ImageNet synsets in sorted order, got {len(wnids)} lines")
    return wnids


def _read_list(path: Path, num_classes: int, prefix_dirs: tuple[str, ...], root: Path):
    """'<path> <label>' lines with label < num_classes -> (keys relative to root, labels, line numbers).
    A label >= num_classes is simply not in the protocol; one outside 0..999 is an error."""
    keys, labels, lines = [], [], []
    prefix = None
    for number, line in read_lines(path):
        parts = line.split()
        if len(parts) != 2:
            raise SourceError(f"{path}:{number}: expected '<image path> <label>', got {line!r}")
        label = parse_label(parts[1], path, number, line, 1000)
        if label >= num_classes:
            continue
        image_ext(parts[0], f"{path}:{number}")
        if prefix is None:  # where the listed paths live, from the first kept line
            prefix = next((d for d in prefix_dirs if (root / d / parts[0]).is_file()), prefix_dirs[0])
        keys.append(prefix + parts[0])
        labels.append(label)
        lines.append(number)
    if not keys:
        raise SourceError(f"{path}: no images of classes 0..{num_classes - 1}")
    return keys, np.asarray(labels, dtype=np.int64), np.asarray(lines, dtype=np.int64)


def read_imagenet_val(folder: Path, label_file: Path | None, num_classes: int,
                      synsets: list[str] | None) -> FileRecords:
    """ILSVRC-2012 val restricted to ImageNet-1k classes 0..num_classes-1 (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"ImageNet val folder {folder} not found")
    subdirs = sorted(e.name for e in os.scandir(folder) if e.is_dir() and e.name.startswith("n"))
    keys: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    if subdirs and label_file is None:
        if synsets is None:
            raise SourceError(f"{folder}: synset subfolders need info/synsets.txt in the WebVision root to map them")
        index = {w: i for i, w in enumerate(synsets)}
        for wnid in subdirs:
            if wnid not in index:
                raise SourceError(f"{folder}/{wnid}: unknown class (not an ImageNet-1k synset)")
            if index[wnid] >= num_classes:
                continue
            for name in sorted(os.listdir(folder / wnid)):
                if not name.startswith("."):
                    keys.append(f"{wnid}/{name}")
                    labels.append(index[wnid])
                    lines.append(0)
        listed_in = f"{folder} (synset folders)"
    else:
        if label_file is None:
            raise SourceError(
                f"{folder} is a flat ImageNet val folder: pass its label file with --imagenet-val-labels "
                f"(val.txt 'ILSVRC2012_val_00000001.JPEG 65' or LOC_val_solution.csv)"
            )
        label_file = Path(label_file)
        index = {w: i for i, w in enumerate(synsets)} if synsets else None
        for number, line in read_lines(label_file, skip_header="ImageId"):
            if "," in line:  # LOC_val_solution.csv: ImageId,PredictionString
                image_id, _, prediction = line.partition(",")
                words = prediction.split()
                if not words:
                    raise SourceError(f"{label_file}:{number}: expected 'ImageId,<synset> ...', got {line!r}")
                if index is None:
                    raise SourceError(f"{label_file}: synset labels need info/synsets.txt in the WebVision root")
                if words[0] not in index:
                    raise SourceError(f"{label_file}:{number}: unknown class {words[0]!r} (not an ImageNet-1k synset)")
                label, name = index[words[0]], f"{image_id}.JPEG"
            else:
                parts = line.split()
                if len(parts) != 2:
                    raise SourceError(f"{label_file}:{number}: expected '<file name> <label>', got {line!r}")
                name, label = parts[0], parse_label(parts[1], label_file, number, line, 1000)
            if label < num_classes:
                keys.append(name)
                labels.append(label)
                lines.append(number)
        listed_in = str(label_file)
    if not keys:
        raise SourceError(f"{listed_in}: no ImageNet val images of classes 0..{num_classes - 1}")
    for key in keys:
        image_ext(key, listed_in)
    return FileRecords(folder, keys, np.asarray(labels, dtype=np.int64), listed_in, np.asarray(lines))


def read_webvision(path: str | Path, splits: list[str] | None = None, num_classes: int = MINI_CLASSES,
                   imagenet_val: Path | None = None, imagenet_val_labels: Path | None = None) -> Source:
    root = Path(path)
    if not 1 <= num_classes <= 1000:
        raise SourceError(f"--webvision-classes must be in 1..1000, got {num_classes}")
    known = ["train", "val", "imagenet_val"]
    wanted = (["train", "val"] + (["imagenet_val"] if imagenet_val else [])) if splits is None else list(splits)
    for s in wanted:
        if s not in known:
            raise SourceError(f"{root}: WebVision has splits {known}, not {s!r}")
    if "imagenet_val" in wanted and imagenet_val is None:
        raise SourceError("split imagenet_val needs --imagenet-val DIR (the ILSVRC-2012 val folder)")
    synsets = read_synsets(root)
    classes = synsets[:num_classes] if synsets else [f"class{c:03d}" for c in range(num_classes)]
    result: dict[str, SourceSplit] = {}
    for s in wanted:
        if s == "imagenet_val":
            records = read_imagenet_val(imagenet_val, imagenet_val_labels, num_classes, synsets)  # type: ignore[arg-type]
        else:
            list_path = root / (TRAIN_LIST if s == "train" else VAL_LIST)
            if not list_path.is_file():
                raise SourceError(f"{root}: {list_path.relative_to(root)} not found; is this the WebVision 1.0 root?")
            dirs = ("",) if s == "train" else VAL_DIRS
            keys, labels, lines = _read_list(list_path, num_classes, dirs, root)
            records = FileRecords(root, keys, labels, str(list_path), lines)
        check_files_exist(records)
        result[s] = SourceSplit(s, records, label_name="webvision-noisy" if s == "train" else "clean")
        log.info("%s: %d images of %d classes", s, len(records), num_classes)
    return Source("webvision", root, classes, result,
                  extra={"class_order": "imagenet-1k synset order", "num_classes": num_classes})
