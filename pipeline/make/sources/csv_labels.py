"""csv: your own images with your own (noisy) labels, from a CSV file.

    --source images/        a folder of .jpg/.jpeg/.png images in any layout below it, or a text file
                            listing image paths, one per line (relative to the list's folder)
    --labels labels.csv     a header row, then one row per image:
                            path (or key), label[, clean_label][, split]

``path`` (or ``key``) names an image: its path relative to the folder, or as written in the list.
``label`` and ``clean_label`` are class names or integer class indices. The classes are
``--classes FILE`` (one name per line, in label order; a label is then a name from it or an index
into it) when given; otherwise the sorted set of names, or 0..max when every label is an integer.
``split`` puts a row in a split (default: train).

Label sets: without clean_label, the train split's labels form ``csv-noisy`` and the other splits'
form ``clean`` (they are what the model is evaluated on, as with ANIMAL-10N's test labels); with a
clean_label column (then needed on every row), every split has ``csv-noisy`` from label and
``clean`` from clean_label. Source order: the CSV's row order.

Every image of the source needs a row and every row an existing image; unknown columns or classes,
repeated keys and empty cells are errors naming the CSV file and line.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.make.sources.base import (
    IMAGE_EXTS,
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

NOISY = "csv-noisy"
COLUMNS = ("path", "key", "label", "clean_label", "split")
_INDEX = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line of the CSV file
    key: str
    label: str
    clean_label: str | None
    split: str


def read_rows(path: Path) -> list[Row]:
    """The CSV's rows; the header, field counts, empty cells and repeated keys are checked here."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: spreadsheets write a BOM
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            unknown = [h for h in header if h not in COLUMNS]
            if unknown or "label" not in header or ("path" in header) == ("key" in header):
                raise SourceError(
                    f"{path}:1: header {header} must name a path (or key) column and a label column, optionally "
                    f"clean_label and split" + (f"; unknown column(s) {unknown}" if unknown else "")
                )
            key_col = "path" if "path" in header else "key"
            rows: list[Row] = []
            first_line: dict[str, int] = {}
            for fields in reader:
                if not any(f.strip() for f in fields):
                    continue
                line = reader.line_num
                if len(fields) != len(header):
                    raise SourceError(f"{path}:{line}: expected {len(header)} fields ({', '.join(header)}), got "
                                      f"{len(fields)}: {fields}")
                cells = {h: f.strip() for h, f in zip(header, fields)}
                for column, value in cells.items():
                    if not value:
                        raise SourceError(f"{path}:{line}: empty {column}; every row needs one")
                key = cells[key_col]
                if key in first_line:
                    raise SourceError(f"{path}:{line}: {key} is listed twice (first at line {first_line[key]})")
                first_line[key] = line
                image_ext(key, f"{path}:{line}")
                rows.append(Row(line, key, cells["label"], cells.get("clean_label"), cells.get("split", "train")))
    except UnicodeDecodeError as err:
        raise SourceError(f"{path}: not a UTF-8 text file ({err})") from err
    except csv.Error as err:
        raise SourceError(f"{path}: not a readable CSV file ({err})") from err
    except OSError as err:
        raise SourceError(f"cannot read {path}: {err}") from err
    if not rows:
        raise SourceError(f"{path}: no rows below the header")
    return rows


def class_list(rows: list[Row], path: Path, classes_file: Path | None) -> tuple[list[str], dict[str, int], str]:
    """(class names, label text -> class index, how the order was chosen)."""
    cells = [(r.line, col, text) for r in rows for col, text in (("label", r.label), ("clean_label", r.clean_label))
             if text is not None]
    if classes_file is not None:
        names = read_class_names(Path(classes_file))
        position = {name: i for i, name in enumerate(names)}
        index = {}
        for line, col, text in cells:  # a name first, else an index
            index[text] = position.get(text, int(text) if _INDEX.match(text) else len(names))
            if index[text] >= len(names):
                raise SourceError(f"{path}:{line}: unknown class {text!r} in column {col} (not a name in "
                                  f"{classes_file}, nor an index 0..{len(names) - 1})")
        return names, index, f"classes file {classes_file}"
    indices = [(line, col, text) for line, col, text in cells if _INDEX.match(text)]
    if len(indices) == len(cells):
        index = {text: int(text) for _, _, text in cells}
        return [str(i) for i in range(max(index.values()) + 1)], index, "indices"
    if indices:
        line, col, text = indices[0]
        raise SourceError(f"{path}:{line}: {col} {text!r} is an index, other labels are class names; give "
                          f"--classes FILE (one name per line, in label order) to say which class each index is")
    names = sorted({text for _, _, text in cells})
    return names, {name: i for i, name in enumerate(names)}, "sorted"


def source_images(source: Path) -> tuple[Path, dict[str, str]]:
    """(root the keys are relative to, {key: where it was found}) for a folder or a list file."""
    if source.is_dir():
        images = {}
        for p in sorted(source.rglob("*")):
            rel = p.relative_to(source)
            if p.is_file() and p.suffix[1:].lower() in IMAGE_EXTS and not any(s.startswith(".") for s in rel.parts):
                images[rel.as_posix()] = str(p)
        return source, images
    images = {}
    for line, text in read_lines(source):
        if text in images:
            raise SourceError(f"{source}:{line}: {text} is listed twice (first at {images[text]})")
        images[text] = f"{source}:{line}"
    return source.parent, images


def read_csv_labels(path: str | Path, labels: str | Path, classes: str | Path | None = None,
                    splits: list[str] | None = None) -> Source:
    source, csv_path = Path(path), Path(labels)
    rows = read_rows(csv_path)
    names, index, order = class_list(rows, csv_path, Path(classes) if classes is not None else None)
    root, images = source_images(source)
    for r in rows:
        if r.key not in images:
            missing = f"image {root / r.key} not found" if source.is_dir() else f"{r.key} is not listed in {source}"
            raise SourceError(f"{csv_path}:{r.line}: {missing}; fix the path or remove the row")
    unlabelled = sorted(set(images) - {r.key for r in rows})
    if unlabelled:
        raise SourceError(f"{source}: {len(unlabelled)} image(s) have no row in {csv_path}, e.g. {unlabelled[:3]}; "
                          f"add rows for them or take them out of the source")
    found = sorted({r.split for r in rows})
    for s in splits or []:
        if s not in found:
            raise SourceError(f"{csv_path}: no rows of split {s!r} (splits in its split column: {found})")
    has_clean = rows[0].clean_label is not None
    result: dict[str, SourceSplit] = {}
    for s in splits or found:
        part = [r for r in rows if r.split == s]
        labels_ = np.asarray([index[r.label] for r in part], dtype=np.int64)
        records = FileRecords(root, [r.key for r in part], labels_, str(csv_path),
                              np.asarray([r.line for r in part], dtype=np.int64))
        if not source.is_dir():  # a list file may name images that are gone
            check_files_exist(records)
        if has_clean:
            clean = np.asarray([index[r.clean_label] for r in part], dtype=np.int64)
            extra = {"clean": (clean, "clean", {"file": str(csv_path), "column": "clean_label"})}
            result[s] = SourceSplit(s, records, label_name=NOISY, extra_labels=extra)
        else:
            result[s] = SourceSplit(s, records, label_name=NOISY if s == "train" else "clean")
        log.info("%s: %d images", s, len(part))
    return Source("csv", source, names, result, extra={"class_order": order})
