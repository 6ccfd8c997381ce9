"""clothing1m: Clothing1M (Xiao et al., CVPR 2015) in its official layout.

    <root>/images/<x>/<yy>/<name>.jpg
    <root>/[annotations/]noisy_label_kv.txt        "images/x/yy/name.jpg <label>"  (1,037,497 lines)
    <root>/[annotations/]clean_label_kv.txt        same form                        (72,409 lines)
    <root>/[annotations/]noisy_train_key_list.txt  "images/x/yy/name.jpg"           (1,000,000 lines)
    <root>/[annotations/]clean_{train,val,test}_key_list.txt                        (47,570 / 14,313 / 10,526)
    <root>/[annotations/]category_names_eng.txt    one class name per line, in label order (14)

Splits: ``train`` (noisy_train_key_list, labels from noisy_label_kv: label set ``clothing1m-noisy``),
``clean_train``, ``val``, ``test`` (clean_*_key_list, labels from clean_label_kv: label set
``clean``). An image with both a noisy and a clean label gets the other one too: where the whole
split has it, as a plain label set (``clean`` on train, ``clothing1m-noisy`` on a clean split);
where only part of it does, as ``<name>-partial`` plus the mask ``<name>-known`` (True where the
label is known; elsewhere the set repeats the split's own label so that it stays a valid label set;
its recorded noise rate counts known entries only). Source order: the key list's order.
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
    find_file,
    read_class_names,
    read_key_list,
    read_kv,
)

log = logging.getLogger(__name__)

NOISY = "clothing1m-noisy"
# split -> (key list, kv file whose labels the split carries, that label set's name)
SPLITS = {
    "train": ("noisy_train_key_list.txt", "noisy_label_kv.txt", NOISY),
    "clean_train": ("clean_train_key_list.txt", "clean_label_kv.txt", "clean"),
    "val": ("clean_val_key_list.txt", "clean_label_kv.txt", "clean"),
    "test": ("clean_test_key_list.txt", "clean_label_kv.txt", "clean"),
}
ANNOTATION_DIRS = ("", "annotations")


def is_clothing1m(path: Path) -> bool:
    return path.is_dir() and any((path / d / "noisy_label_kv.txt").is_file() for d in ANNOTATION_DIRS)


def _other_labels(keys: list[str], kv: dict[str, tuple[int, int]], own: np.ndarray, name: str, kv_path: Path):
    """The labels of `keys` found in the other kv file: full set, partial set + mask, or nothing."""
    found = np.fromiter((kv[k][0] if k in kv else -1 for k in keys), dtype=np.int64, count=len(keys))
    known = found >= 0
    params = {"file": str(kv_path), "published": True}
    if known.all():
        return {name: (found, "published", params)}, {}
    if not known.any():
        return {}, {}
    mask_name = f"{name}-known"
    filled = np.where(known, found, own)
    params = {**params, "known_mask": mask_name, "unknown_filled_with": "the split's own label"}
    return ({f"{name}-partial": (filled, "published-partial", params)},
            {mask_name: (known, {"meaning": f"True where {kv_path.name} labels the image"})})


def read_clothing1m(path: str | Path, splits: list[str] | None = None) -> Source:
    root = Path(path)
    find = lambda name: find_file(root, name, ANNOTATION_DIRS, what="Clothing1M")  # noqa: E731
    classes = read_class_names(find("category_names_eng.txt"))
    wanted = list(SPLITS) if splits is None else list(splits)
    for s in wanted:
        if s not in SPLITS:
            raise SourceError(f"{root}: Clothing1M has splits {list(SPLITS)}, not {s!r}")
    kvs: dict[str, tuple[Path, dict]] = {}

    def kv(name: str):
        if name not in kvs:
            p = find(name)
            log.info("reading %s", p)
            kvs[name] = (p, read_kv(p, len(classes)))
        return kvs[name]

    result: dict[str, SourceSplit] = {}
    for s in wanted:
        list_name, kv_name, label_name = SPLITS[s]
        list_path = find(list_name)
        keys, lines = read_key_list(list_path)
        kv_path, labels_of = kv(kv_name)
        labels = np.empty(len(keys), dtype=np.int64)
        for i, key in enumerate(keys):
            hit = labels_of.get(key)
            if hit is None:
                raise SourceError(f"{list_path}:{lines[i]}: {key} has no label in {kv_path}")
            labels[i] = hit[0]
        records = FileRecords(root, keys, labels, str(list_path), lines)
        check_files_exist(records)
        other_kv = "clean_label_kv.txt" if kv_name == "noisy_label_kv.txt" else "noisy_label_kv.txt"
        other_name = "clean" if label_name == NOISY else NOISY
        try:
            other_path, other = kv(other_kv)
        except SourceError:
            log.warning("%s: no %s; split %s gets no %s labels", root, other_kv, s, other_name)
            extra, masks = {}, {}
        else:
            extra, masks = _other_labels(keys, other, labels, other_name, other_path)
        result[s] = SourceSplit(s, records, label_name=label_name, extra_labels=extra, masks=masks)
        log.info("%s: %d images, label sets %s", s, len(keys), [label_name, *extra])
    return Source("clothing1m", root, classes, result, extra={"class_order": "category_names_eng.txt"})
