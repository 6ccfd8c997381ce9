"""What every raw-format reader produces: a Source of named splits, each a sequence of Records.

A Record is one sample: its source key, label, shard member extension, and either its bytes
(archives, CIFAR pickles) or the path to read them from (folders). Readers of list-file datasets
(Clothing1M, WebVision, Food-101N) keep a split as a :class:`FileRecords`: keys and labels in
compact arrays, Records made on access, so a million-image split costs ~100 bytes per sample and
no image is read before the converter asks for it.

The helpers at the bottom parse list files line by line; every error names the file and line.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTS = {"jpg": "jpg", "jpeg": "jpg", "png": "png"}  # file suffix (lower case) -> shard member ext


class SourceError(UserError, ValueError):
    """The raw dataset is missing, malformed or holds a corrupt image; the message names the file."""


@dataclass(frozen=True)
class Record:
    """One source sample. Holds the image bytes (archives) or the path to read them from (folders)."""

    key: str  # source key: "train/cat/0042.jpg" (path inside the tree) or "data_batch_3:1234"
    label: int  # class index into Source.classes
    ext: str  # shard member extension: "jpg" or "png"
    data: bytes | None = None
    path: Path | None = None
    origin: str | None = None  # where the sample was listed ("info/val_filelist.txt:12"), for errors

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        try:
            return Path(self.path).read_bytes()
        except OSError as err:
            listed = f" (listed at {self.origin})" if self.origin else ""
            raise SourceError(f"cannot read {self.path}{listed}: {err}") from err

    @property
    def where(self) -> str:
        """How error messages name this sample."""
        return str(self.path) if self.path is not None else self.key


class FileRecords(Sequence):
    """A split of image files under ``root`` named by a list file: Records are built on access.

    keys: paths relative to root (the source keys); labels: int64 (N,); lines: 1-based line of each
    key in ``listed_in`` (for error messages)."""

    def __init__(self, root: Path, keys: list[str], labels: np.ndarray, listed_in: str, lines: np.ndarray):
        if not (len(keys) == len(labels) == len(lines)):
            raise ValueError("keys, labels and lines must have one entry per sample")
        self.root = Path(root)
        self.keys = keys
        self.labels = np.asarray(labels, dtype=np.int64)
        self.listed_in = listed_in
        self.lines = np.asarray(lines, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        key, line = self.keys[i], int(self.lines[i])
        return Record(key, int(self.labels[i]), image_ext(key, self.listed_in), path=self.root / key,
                      origin=f"{self.listed_in}:{line}" if line else self.listed_in)


@dataclass
class SourceSplit:
    name: str
    records: Sequence[Record]  # source order: position = source_index
    coarse_labels: np.ndarray | None = None  # int64 (N,) superclass per record (CIFAR-100 only)
    label_name: str = "clean"  # the label set the records' labels form ("clothing1m-noisy" for web labels)
    # further label sets in source order: name -> (int64 (N,), kind, params); params may name a
    # "known_mask" (a key of `masks`) when the set is only known for part of the split
    extra_labels: dict[str, tuple[np.ndarray, str, dict]] = field(default_factory=dict)
    masks: dict[str, tuple[np.ndarray, dict]] = field(default_factory=dict)  # name -> (bool (N,), params)

    @property
    def labels(self) -> np.ndarray:
        labels = getattr(self.records, "labels", None)
        if labels is not None:
            return labels
        return np.fromiter((r.label for r in self.records), dtype=np.int64, count=len(self.records))

    @property
    def keys(self) -> list[str]:
        keys = getattr(self.records, "keys", None)
        if isinstance(keys, list):
            return keys
        return [r.key for r in self.records]


@dataclass
class Source:
    format: str  # one of FORMATS other than "auto"
    path: Path
    classes: list[str]
    splits: dict[str, SourceSplit]
    coarse_classes: list[str] | None = None
    extra: dict = field(default_factory=dict)  # provenance details (class order used, ...)


def decode_image(data: bytes, where: str) -> Image.Image:
    """Fully decodes an image (a truncated or corrupt file fails here, not in training)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise image_error(where, err) from err
    return image


def image_error(where: str, err: Exception) -> SourceError:
    """The error for an image PIL cannot read, naming the file (PIL's own message names a BytesIO)."""
    if isinstance(err, UnidentifiedImageError):
        reason = "not in an image format Pillow can identify"
    else:
        reason = f"{type(err).__name__}: {err}"
    return SourceError(f"{where}: corrupt or unreadable image ({reason}); remove or replace the file and convert again")


def image_ext(name: str, where: str) -> str:
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix not in IMAGE_EXTS:
        raise SourceError(f"{where}: {name!r} is not a .jpg/.jpeg/.png image")
    return IMAGE_EXTS[suffix]


# ---------------------------------------------------------------------------------------------
# list files: "<path> <label>" / "<path>" lines, errors naming file and line
# ---------------------------------------------------------------------------------------------


def find_file(root: Path, name: str, subdirs: tuple[str, ...] = ("",), what: str = "") -> Path:
    """root/<subdir>/name for the first subdir that has it; an error naming every place looked at."""
    tried = [root / d / name for d in subdirs]
    for p in tried:
        if p.is_file():
            return p
    raise SourceError(f"{what or root}: {name} not found (looked at {', '.join(map(str, tried))})")


def read_lines(path: Path, skip_header: str | None = None):
    """Yields (1-based line number, stripped text) of non-blank lines; a header line starting with
    ``skip_header`` is skipped when it is the first line."""
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                text = line.strip()
                if not text:
                    continue
                if number == 1 and skip_header is not None and text.startswith(skip_header):
                    continue
                yield number, text
    except UnicodeDecodeError as err:
        raise SourceError(f"{path}: not a UTF-8 text file ({err})") from err
    except OSError as err:
        raise SourceError(f"cannot read {path}: {err}") from err


def parse_label(text: str, path: Path, number: int, line: str, num_classes: int | None) -> int:
    try:
        label = int(text)
    except ValueError:
        raise SourceError(f"{path}:{number}: label {text!r} is not an integer (line: {line!r})") from None
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise SourceError(
            f"{path}:{number}: unknown class {label} (labels are 0..{(num_classes or 1) - 1}; line: {line!r})"
        )
    return label


def read_kv(path: Path, num_classes: int, sep: str | None = None) -> dict[str, tuple[int, int]]:
    """'<key> <label>' lines -> {key: (label, line number)}; a repeated key is an error."""
    out: dict[str, tuple[int, int]] = {}
    for number, line in read_lines(path):
        parts = line.split(sep)
        if len(parts) != 2:
            raise SourceError(f"{path}:{number}: expected '<image path> <label>', got {line!r}")
        key = parts[0].strip()
        if key in out:
            raise SourceError(f"{path}:{number}: {key} is listed twice (first at line {out[key][1]})")
        out[key] = (parse_label(parts[1].strip(), path, number, line, num_classes), number)
    return out


def read_key_list(path: Path) -> tuple[list[str], np.ndarray]:
    """'<key>' lines -> (keys, 1-based line numbers); repeated keys and extra fields are errors."""
    keys: list[str] = []
    numbers: list[int] = []
    seen: dict[str, int] = {}
    for number, line in read_lines(path):
        if len(line.split()) != 1:
            raise SourceError(f"{path}:{number}: expected one image path per line, got {line!r}")
        if line in seen:
            raise SourceError(f"{path}:{number}: {line} is listed twice (first at line {seen[line]})")
        seen[line] = number
        keys.append(line)
        numbers.append(number)
    if not keys:
        raise SourceError(f"{path}: lists no images")
    return keys, np.asarray(numbers, dtype=np.int64)


def check_files_exist(records: FileRecords) -> None:
    """Every listed image must exist before any shard is written; names the first missing one."""
    missing = [i for i, key in enumerate(records.keys) if not os.path.isfile(records.root / key)]
    if missing:
        i = missing[0]
        line = int(records.lines[i])
        where = f"{records.listed_in}:{line}" if line else records.listed_in
        raise SourceError(
            f"{where}: image {records.root / records.keys[i]} is missing "
            f"({len(missing)} of {len(records)} listed images are); restore them, or remove their lines"
        )


def read_class_names(path: Path, skip_header: str | None = None) -> list[str]:
    names = [text for _, text in read_lines(path, skip_header)]
    if not names:
        raise SourceError(f"{path}: lists no class names")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise SourceError(f"{path}: class {dup!r} is listed twice")
    return names
