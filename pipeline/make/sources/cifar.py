"""cifar10-python / cifar100-python: the official ``cifar-10-python.tar.gz`` /
``cifar-100-python.tar.gz`` (or their extracted folders): pickled batches, each 32x32 image
re-encoded as lossless PNG. CIFAR-100 keeps the coarse (superclass) labels, which its asymmetric
noise needs. Source order: the original dataset order (data_batch_1..5, test_batch).
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from pipeline.make.sources.base import Record, Source, SourceError, SourceSplit

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


