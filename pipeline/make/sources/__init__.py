"""Readers for raw datasets: each turns one raw format into a Source of splits of Records.

Formats (one module each; the layouts are described in the module docstrings):
  image-folder     ``<root>/<split>/<class>/*.jpg|jpeg|png``, a folder or a .tar / .tar.gz (folder.py)
  cifar10-python   the official ``cifar-10-python.tar.gz`` or its folder (cifar.py)
  cifar100-python  the official ``cifar-100-python.tar.gz``; keeps the coarse labels (cifar.py)
  clothing1m       Clothing1M's images/ + kv label files + key lists (clothing1m.py)
  webvision        WebVision 1.0 info/ lists, mini (50 classes) by default, + ILSVRC-2012 val (webvision.py)
  animal10n        ANIMAL-10N training/ testing/ with the label in the file name (animal10n.py)
  food101n         Food-101N meta/imagelist.tsv + verified_*.tsv, with Food-101's test split (food101n.py)
  csv              your own image folder or list of image paths + a CSV of (noisy) labels (csv_labels.py)

The order of a split's records is the source's own enumeration and defines ``source_index``.
Images are checked by :func:`decode_image` when they are written, so a corrupt file stops the
conversion by name; list-file readers also check that every listed file exists before any work.
"""

from __future__ import annotations

import logging
import tarfile
import urllib.request  # noqa: F401  (tests patch sources.urllib.request.urlopen)
from pathlib import Path, PurePosixPath

from pipeline.make.sources.animal10n import is_animal10n, read_animal10n
from pipeline.make.sources.base import (
    IMAGE_EXTS,
    FileRecords,
    Record,
    Source,
    SourceError,
    SourceSplit,
    decode_image,
)
from pipeline.make.sources.cifar import encode_png, read_cifar_python
from pipeline.make.sources.clothing1m import is_clothing1m, read_clothing1m
from pipeline.make.sources.csv_labels import read_csv_labels
from pipeline.make.sources.download import DOWNLOADS, download, resolve_source
from pipeline.make.sources.folder import KNOWN_CLASS_ORDERS, read_image_folder
from pipeline.make.sources.food101n import is_food101n, read_food101n
from pipeline.make.sources.webvision import MINI_CLASSES, is_webvision, read_webvision

log = logging.getLogger(__name__)

FORMATS = ("auto", "image-folder", "cifar10-python", "cifar100-python", "clothing1m", "webvision", "animal10n",
           "food101n", "csv")
# options only some formats take: name -> formats that accept it
OPTIONS = {
    "imagenet_val": ("webvision",),
    "imagenet_val_labels": ("webvision",),
    "webvision_classes": ("webvision",),
    "food101": ("food101n",),
    "labels": ("csv",),
    "classes": ("csv",),
}


def open_source(path: str | Path, splits: list[str] | None = None, fmt: str = "auto", **options) -> Source:
    """Reads a raw dataset. ``splits=None`` takes every split found; listed splits must exist.
    ``options`` are format-specific (OPTIONS); None values are ignored."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"source {path} does not exist")
    options = {k: v for k, v in options.items() if v is not None}
    if fmt == "auto":
        fmt = "csv" if "labels" in options else detect_format(path)
        log.info("%s: detected format %s", path, fmt)
    for key in options:
        if key not in OPTIONS:
            raise SourceError(f"unknown source option {key!r}")
        if fmt not in OPTIONS[key]:
            raise SourceError(f"--{key.replace('_', '-')} is for the {', '.join(OPTIONS[key])} format, not {fmt}")
    if fmt == "image-folder":
        return read_image_folder(path, splits)
    if fmt in ("cifar10-python", "cifar100-python"):
        return read_cifar_python(path, fmt, splits)
    if fmt == "clothing1m":
        return read_clothing1m(path, splits)
    if fmt == "webvision":
        return read_webvision(path, splits, options.get("webvision_classes", MINI_CLASSES),
                              options.get("imagenet_val"), options.get("imagenet_val_labels"))
    if fmt == "animal10n":
        return read_animal10n(path, splits)
    if fmt == "food101n":
        return read_food101n(path, splits, options.get("food101"))
    if fmt == "csv":
        if "labels" not in options:
            raise SourceError(f"{path}: the csv format needs --labels FILE.csv")
        return read_csv_labels(path, options["labels"], options.get("classes"), splits)
    raise SourceError(f"unknown source format {fmt!r}; choose one of {', '.join(FORMATS)}")


def detect_format(path: Path) -> str:
    if path.is_dir():
        for fmt, test in (("clothing1m", is_clothing1m), ("webvision", is_webvision),
                          ("food101n", is_food101n), ("animal10n", is_animal10n)):
            if test(path):
                return fmt
        names = {p.name for p in path.iterdir()} | {p.name for p in path.glob("*/*")}
    else:
        names = set()
        try:
            with tarfile.open(path, "r:*") as tar:
                for i, member in enumerate(tar):
                    names.add(PurePosixPath(member.name).name)
                    if i >= 20:
                        break
        except (tarfile.TarError, OSError) as err:
            raise SourceError(f"{path} is neither a folder nor a readable .tar/.tar.gz archive: {err}") from err
    if "data_batch_1" in names or "cifar-10-batches-py" in names:
        return "cifar10-python"
    if "cifar-100-python" in names or (path.is_dir() and (path / "meta").is_file() and (path / "train").is_file()):
        return "cifar100-python"
    return "image-folder"


__all__ = [
    "DOWNLOADS", "FORMATS", "IMAGE_EXTS", "KNOWN_CLASS_ORDERS", "OPTIONS", "FileRecords", "Record", "Source",
    "SourceError", "SourceSplit", "decode_image", "detect_format", "download", "encode_png", "open_source",
    "read_animal10n", "read_cifar_python", "read_clothing1m", "read_csv_labels", "read_food101n", "read_image_folder",
    "read_webvision", "resolve_source",
]
