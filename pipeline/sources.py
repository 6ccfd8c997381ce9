"""Readers for raw datasets: each turns one raw format into records (source key, label, image bytes, ext).

Formats:
  image-folder     ``<root>/<split>/<class>/*.jpg|jpeg|png``, read from a directory or streamed
                   from a .tar / .tar.gz (never extracted to disk); a top-level folder inside the
                   archive (``cifar10-jpg/train/...``) is found automatically.
  cifar10-python   the official ``cifar-10-python.tar.gz`` (or its extracted folder): pickled
                   batches, each 32x32 image re-encoded as lossless PNG.
  cifar100-python  the official ``cifar-100-python.tar.gz``; keeps the coarse (superclass)
                   labels, which the CIFAR-100 asymmetric noise needs.

The order of a split's records is the source's own enumeration and defines ``source_index``:
for image folders class by class (in label order), files sorted by name within a class; for
CIFAR pickles the original dataset order (data_batch_1..5, test_batch). Images are checked by
:func:`decode_image` when they are written, so a corrupt file stops the conversion by name.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from pipeline.noise import CIFAR10_CLASSES

log = logging.getLogger(__name__)

IMAGE_EXTS = {"jpg": "jpg", "jpeg": "jpg", "png": "png"}  # file suffix -> shard member ext
# Known class orders: when a folder tree has exactly these classes, labels follow the published order
# (so they match the original dataset and the CIFAR-N files) instead of the alphabetical one.
# (CIFAR-10's published order happens to be alphabetical too; the table pins it regardless.)
KNOWN_CLASS_ORDERS = {"cifar10": CIFAR10_CLASSES}

DOWNLOADS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}
FORMATS = ("auto", "image-folder", "cifar10-python", "cifar100-python")


class SourceError(ValueError):
    """The raw dataset is missing, malformed or holds a corrupt image; the message names the file."""


@dataclass(frozen=True)
class Record:
    """One source sample. Holds the image bytes (archives) or the path to read them from (folders)."""

    key: str  # source key: "train/cat/0042.jpg" (path inside the tree) or "data_batch_3:1234"
    label: int  # class index into Source.classes
    ext: str  # shard member extension: "jpg" or "png"
    data: bytes | None = None
    path: Path | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        try:
            return self.path.read_bytes()
        except OSError as err:
            raise SourceError(f"cannot read {self.path}: {err}") from err


@dataclass
class SourceSplit:
    name: str
    records: list[Record]  # source order: position = source_index
    coarse_labels: np.ndarray | None = None  # int64 (N,) superclass per record (CIFAR-100 only)

    @property
    def labels(self) -> np.ndarray:
        return np.fromiter((r.label for r in self.records), dtype=np.int64, count=len(self.records))

    @property
    def keys(self) -> list[str]:
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
        raise SourceError(
            f"{where}: corrupt or unreadable image ({type(err).__name__}: {err}); "
            f"remove or replace the file and convert again"
        ) from err
    return image


def open_source(path: str | Path, splits: list[str] | None = None, fmt: str = "auto") -> Source:
    """Reads a raw dataset. ``splits=None`` takes every split found; listed splits must exist."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"source {path} does not exist")
    if fmt == "auto":
        fmt = detect_format(path)
        log.info("%s: detected format %s", path, fmt)
    if fmt == "image-folder":
        return read_image_folder(path, splits)
    if fmt in ("cifar10-python", "cifar100-python"):
        return read_cifar_python(path, fmt, splits)
    raise SourceError(f"unknown source format {fmt!r}; choose one of {', '.join(FORMATS)}")


def detect_format(path: Path) -> str:
    if path.is_dir():
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


# ---------------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------------


def _class_order(names: set[str]) -> tuple[list[str], str]:
    for known, order in KNOWN_CLASS_ORDERS.items():
        if names == set(order):
            return list(order), known
    return sorted(names), "sorted"


def _iter_tree(path: Path, read: bool = True):
    """Yields (relative parts, bytes or path, is_dir) for every entry of a folder or tar archive
    (bytes are None for archive members when ``read`` is False)."""
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            yield p.relative_to(path).parts, p, p.is_dir()
        return
    try:
        with tarfile.open(path, "r|*") as tar:  # streaming: one pass, nothing extracted to disk
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if member.isdir():
                    yield parts, None, True
                elif member.isfile():
                    f = tar.extractfile(member) if read else None
                    yield parts, f.read() if f is not None else None, False
    except (tarfile.TarError, OSError, EOFError) as err:
        raise SourceError(f"{path}: cannot read the archive ({err}); is it a complete .tar/.tar.gz?") from err


def read_image_folder(path: str | Path, splits: list[str] | None = None, keys_only: bool = False) -> Source:
    """Reads ``<root>/<split>/<class>/<file>`` from a folder or a tar archive.

    The root is the deepest common prefix above the split folders, so an archive with a top-level
    folder works. ``keys_only`` skips image bytes (used to join labels without reading pixels).
    """
    path = Path(path)
    # (prefix, split, class) -> {file name: bytes|path}; dirs seen so empty class folders are caught
    files: dict[tuple[tuple[str, ...], str, str], dict[str, object]] = {}
    class_dirs: set[tuple[tuple[str, ...], str, str]] = set()
    skipped: list[str] = []
    for parts, payload, is_dir in _iter_tree(path, read=not keys_only):
        if any(p.startswith(".") for p in parts):
            continue
        if is_dir:
            if len(parts) >= 2:
                class_dirs.add((tuple(parts[:-2]), parts[-2], parts[-1]))
            continue
        suffix = parts[-1].rsplit(".", 1)[-1].lower() if "." in parts[-1] else ""
        if len(parts) < 3 or suffix not in IMAGE_EXTS:
            skipped.append("/".join(parts))
            continue
        group = (tuple(parts[:-3]), parts[-3], parts[-2])
        files.setdefault(group, {})[parts[-1]] = None if keys_only else payload
    if not files:
        raise SourceError(
            f"{path}: no images found; expected <root>/<split>/<class>/<file>.jpg|jpeg|png"
        )
    # The dataset root: the prefix under which the splits live. Several prefixes mean a stray tree.
    prefixes = {g[0] for g in files}
    if splits is not None:
        prefixes = {p for p in prefixes if any(g[0] == p and g[1] in splits for g in files)} or prefixes
    if len(prefixes) > 1:
        shown = sorted("/".join(p) or "." for p in prefixes)
        raise SourceError(f"{path}: images at several roots {shown}; keep one <root>/<split>/<class>/ tree")
    prefix = prefixes.pop()
    root_name = "/".join(prefix) or "."
    found_splits = sorted({g[1] for g in files if g[0] == prefix})
    wanted = found_splits if splits is None else list(splits)
    for s in wanted:
        if s not in found_splits:
            raise SourceError(
                f"{path}: split folder {root_name}/{s}/ is missing (found splits: {found_splits}); "
                f"pass --splits to choose others"
            )
    class_names: set[str] = set()
    for s in wanted:
        class_names |= {g[2] for g in files if g[0] == prefix and g[1] == s}
        class_names |= {d[2] for d in class_dirs if d[0] == prefix and d[1] == s}
    classes, order = _class_order(class_names)
    result: dict[str, SourceSplit] = {}
    for s in wanted:
        records: list[Record] = []
        for label, cls in enumerate(classes):
            entries = files.get((prefix, s, cls))
            if entries is None:
                in_dirs = (prefix, s, cls) in class_dirs
                what = "is empty (no .jpg/.jpeg/.png files)" if in_dirs else "is missing"
                raise SourceError(
                    f"{path}: class folder {root_name}/{s}/{cls}/ {what}; every split needs every class "
                    f"(classes: {classes})"
                )
            for fname in sorted(entries):
                key = f"{s}/{cls}/{fname}"
                payload = entries[fname]
                ext = IMAGE_EXTS[fname.rsplit(".", 1)[-1].lower()]
                if isinstance(payload, Path):
                    records.append(Record(key, label, ext, path=payload))
                else:
                    records.append(Record(key, label, ext, data=payload))  # type: ignore[arg-type]
        result[s] = SourceSplit(s, records)
    # a README beside the splits is normal; a stray file inside a class folder deserves a warning
    in_classes = [f for f in skipped if len(PurePosixPath(f).parts) >= 3]
    if in_classes:
        log.warning("%s: skipped %d non-image files in class folders, e.g. %s", path, len(in_classes), in_classes[:3])
    if len(skipped) > len(in_classes):
        log.info("%s: skipped %d files outside class folders", path, len(skipped) - len(in_classes))
    return Source("image-folder", path, classes, result, extra={"class_order": order, "root": root_name})


# ---------------------------------------------------------------------------------------------
# official CIFAR python pickles
# ---------------------------------------------------------------------------------------------

_CIFAR_LAYOUT = {
    # format -> (folder inside the archive, {split: [batch files]}, meta file, label key, class names key)
    "cifar10-python": (
        "cifar-10-batches-py",
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100-python": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "meta", "fine_labels", "fine_label_names"),
}


def _read_members(path: Path, wanted: set[str]) -> dict[str, bytes]:
    """Reads the named files (by base name) from a folder (or its one subfolder) or tar archive."""
    out: dict[str, bytes] = {}
    if path.is_dir():
        for name in wanted:
            hits = [p for p in (path / name, *path.glob(f"*/{name}")) if p.is_file()]
            if hits:
                out[name] = hits[0].read_bytes()
        return out
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                base = PurePosixPath(member.name).name
                if member.isfile() and base in wanted:
                    f = tar.extractfile(member)
                    assert f is not None
                    out[base] = f.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise SourceError(f"{path}: cannot read the archive ({err})") from err
    return out


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = pickle.loads(data, encoding="latin1")
    except Exception as err:
        raise SourceError(f"{where}: not a CIFAR python pickle ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise SourceError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def encode_png(pixels: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes (lossless; level 1 is ~3x faster than the default, ~10% larger)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def read_cifar_python(path: str | Path, fmt: str, splits: list[str] | None = None) -> Source:
    path = Path(path)
    folder, batches, meta_name, label_key, names_key = _CIFAR_LAYOUT[fmt]
    wanted = list(batches) if splits is None else list(splits)
    for s in wanted:
        if s not in batches:
            raise SourceError(f"{path}: {fmt} has splits {list(batches)}, not {s!r}")
    needed = {meta_name} | {b for s in wanted for b in batches[s]}
    members = _read_members(path, needed)
    missing = sorted(needed - set(members))
    if missing:
        raise SourceError(f"{path}: missing {', '.join(f'{folder}/{m}' for m in missing)}; is the archive complete?")
    meta = _unpickle(members[meta_name], f"{path}:{meta_name}")
    classes = list(meta[names_key])
    coarse_classes = list(meta["coarse_label_names"]) if "coarse_label_names" in meta else None
    result: dict[str, SourceSplit] = {}
    for s in wanted:
        records: list[Record] = []
        coarse: list[np.ndarray] = []
        position = 0
        for batch in batches[s]:
            where = f"{path}:{folder}/{batch}"
            d = _unpickle(members[batch], where)
            data = np.asarray(d["data"], dtype=np.uint8)
            labels = np.asarray(d[label_key], dtype=np.int64)
            if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
                raise SourceError(f"{where}: data has shape {data.shape} for {len(labels)} labels, expected (n, 3072)")
            bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
            if len(bad):
                raise SourceError(f"{where}: label {labels[bad[0]]} at row {bad[0]} outside [0, {len(classes)})")
            images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (n, H, W, C) as CIFAR stores planes
            for row in range(len(data)):
                key = f"{batch}:{row}" if fmt == "cifar10-python" else f"{s}:{position}"
                records.append(Record(key, int(labels[row]), "png", data=encode_png(np.ascontiguousarray(images[row]))))
                position += 1
            if "coarse_labels" in d:
                coarse.append(np.asarray(d["coarse_labels"], dtype=np.int64))
        result[s] = SourceSplit(s, records, np.concatenate(coarse) if coarse else None)
    return Source(fmt, path, classes, result, coarse_classes=coarse_classes, extra={"class_order": "published"})


# ---------------------------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------------------------


def download(dataset: str, cache_dir: str | Path) -> Path:
    """Fetches the official archive of ``dataset`` (cifar10 | cifar100) into cache_dir once."""
    import hashlib

    if dataset not in DOWNLOADS:
        raise SourceError(f"cannot download {dataset!r}; known: {sorted(DOWNLOADS)}")
    url, md5 = DOWNLOADS[dataset]
    target = Path(cache_dir) / url.rsplit("/", 1)[-1]

    def md5_ok(p: Path) -> bool:
        h = hashlib.md5()
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h.hexdigest() == md5

    if target.is_file() and md5_ok(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    log.info("downloading %s to %s", url, target)
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as f:
            while block := response.read(1 << 20):
                f.write(block)
    except (urllib.error.URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        raise SourceError(f"no network ({err}): download {url} by hand and pass --source <file>") from err
    if not md5_ok(partial):
        partial.unlink(missing_ok=True)
        raise SourceError(f"{url}: downloaded file has the wrong md5 (expected {md5}); try again")
    partial.replace(target)
    return target


_DOWNLOAD_RE = re.compile(r"^download:(\w+)$")


def resolve_source(source: str, cache_dir: str | Path) -> Path:
    """``download:cifar10`` -> the cached official archive; anything else is a path."""
    m = _DOWNLOAD_RE.match(source)
    if m:
        return download(m.group(1), cache_dir)
    return Path(source)
