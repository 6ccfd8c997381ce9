"""food101n: Food-101N (Lee et al., CVPR 2018) with Food-101's test split (Bossard et al. 2014).

Food-101N layout (``Food-101N_release``):

    <root>/images/<class>/<hash>.jpg
    <root>/meta/classes.txt            header "class_name", then the 101 classes
    <root>/meta/imagelist.tsv          header "class_name/key", then "<class>/<hash>.jpg"  (310,009)
    <root>/meta/verified_train.tsv     header "class_name/key\\tverification_label", then
                                       "<class>/<hash>.jpg\\t<0|1>"  (1 = the web label is right)
    <root>/meta/verified_val.tsv       same form (optional)

Food-101 layout (``food-101``, given with --food101):

    <food101>/images/<class>/<id>.jpg
    <food101>/meta/classes.txt         the 101 classes, one per line
    <food101>/meta/test.txt            "<class>/<id>" (no extension), 25,250 lines

Splits: ``train`` (every imagelist image; label set ``food101n-noisy``: the class folder it was
crawled for; masks ``verified-train`` / ``verified-val`` (has a verification label) and
``verified-train-correct`` / ``verified-val-correct`` (verified as right)) and ``test`` (Food-101
test; ``clean``). Classes: Food-101N's classes.txt (the same 101 names, in Food-101's order).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.make.sources.base import (
    FileRecords,
    Source,
    SourceError,
    SourceSplit,
    check_files_exist,
    image_ext,
    read_class_names,
    read_lines,
)

log = logging.getLogger(__name__)

IMAGELIST = "meta/imagelist.tsv"


def is_food101n(path: Path) -> bool:
    return path.is_dir() and (path / IMAGELIST).is_file()


def _class_of(key: str, index: dict[str, int], path: Path, number: int) -> int:
    cls, sep, name = key.partition("/")
    if not sep or not name or "/" in name:
        raise SourceError(f"{path}:{number}: expected '<class>/<image>', got {key!r}")
    if cls not in index:
        raise SourceError(f"{path}:{number}: unknown class {cls!r} (not in classes.txt)")
    return index[cls]


def _verified(path: Path, row_of: dict[str, int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """verified_*.tsv -> (has a verification label, verified as right), bool (n,) each."""
    has = np.zeros(n, dtype=bool)
    right = np.zeros(n, dtype=bool)
    for number, line in read_lines(path, skip_header="class_name"):
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) != 2 or parts[1] not in ("0", "1"):
            raise SourceError(f"{path}:{number}: expected '<class>/<image>.jpg<TAB><0|1>', got {line!r}")
        row = row_of.get(parts[0])
        if row is None:
            raise SourceError(f"{path}:{number}: {parts[0]} is not in {IMAGELIST}")
        has[row] = True
        right[row] = parts[1] == "1"
    return has, right


def read_food101n(path: str | Path, splits: list[str] | None = None, food101: Path | None = None) -> Source:
    root = Path(path)
    wanted = ["train", "test"] if splits is None else list(splits)
    for s in wanted:
        if s not in ("train", "test"):
            raise SourceError(f"{root}: Food-101N has splits ['train', 'test'], not {s!r}")
    if "test" in wanted and food101 is None:
        raise SourceError(
            "Food-101N's test split is Food-101's: pass --food101 DIR (the food-101 folder holding "
            "images/ and meta/test.txt), or --splits train"
        )
    if (root / "meta" / "classes.txt").is_file():
        classes = read_class_names(root / "meta" / "classes.txt", skip_header="class_name")
    elif food101 is not None:
        classes = read_class_names(Path(food101) / "meta" / "classes.txt")
    else:
        raise SourceError(f"{root}: meta/classes.txt not found (and no --food101 to take classes from)")
    index = {c: i for i, c in enumerate(classes)}
    result: dict[str, SourceSplit] = {}
    if "train" in wanted:
        list_path = root / IMAGELIST
        keys, labels, lines = [], [], []
        row_of: dict[str, int] = {}
        for number, line in read_lines(list_path, skip_header="class_name"):
            if line in row_of:
                raise SourceError(f"{list_path}:{number}: {line} is listed twice")
            labels.append(_class_of(line, index, list_path, number))
            image_ext(line, f"{list_path}:{number}")
            row_of[line] = len(keys)
            keys.append(line)
            lines.append(number)
        if not keys:
            raise SourceError(f"{list_path}: lists no images")
        records = FileRecords(root / "images", keys, np.asarray(labels), str(list_path), np.asarray(lines))
        check_files_exist(records)
        masks: dict[str, tuple[np.ndarray, dict]] = {}
        for part in ("train", "val"):
            tsv = root / "meta" / f"verified_{part}.tsv"
            if not tsv.is_file():
                log.warning("%s: no %s; no verified-%s masks", root, tsv.name, part)
                continue
            has, right = _verified(tsv, row_of, len(keys))
            masks[f"verified-{part}"] = (has, {"file": str(tsv), "meaning": "True = has a verification label"})
            masks[f"verified-{part}-correct"] = (
                right, {"file": str(tsv), "meaning": "True = verified: the web label is right"})
        result["train"] = SourceSplit("train", records, label_name="food101n-noisy", masks=masks)
    if "test" in wanted:
        food = Path(food101)  # type: ignore[arg-type]
        test_path = food / "meta" / "test.txt"
        if not test_path.is_file():
            raise SourceError(f"{test_path} not found; --food101 must be the food-101 folder (images/, meta/)")
        food_classes = food / "meta" / "classes.txt"
        if food_classes.is_file() and set(read_class_names(food_classes)) != set(classes):
            raise SourceError(f"{food_classes}: classes differ from Food-101N's {root / 'meta' / 'classes.txt'}")
        keys, labels, lines = [], [], []
        for number, line in read_lines(test_path):
            labels.append(_class_of(line, index, test_path, number))
            keys.append(line if "." in line.rsplit("/", 1)[-1] else f"{line}.jpg")
            lines.append(number)
        records = FileRecords(food / "images", keys, np.asarray(labels), str(test_path), np.asarray(lines))
        check_files_exist(records)
        result["test"] = SourceSplit("test", records, label_name="clean")
    for s, split in result.items():
        log.info("%s: %d images", s, len(split.records))
    return Source("food101n", root, classes, {s: result[s] for s in wanted},
                  extra={"class_order": "meta/classes.txt", "food101": str(food101) if food101 else None})
