"""image-folder: ``<root>/<split>/<class>/*.jpg|jpeg|png`` from a directory or streamed from a
.tar / .tar.gz (never extracted to disk); a top-level folder inside the archive
(``cifar10-jpg/train/...``) is found automatically.

Source order: class by class (in label order), files sorted by name within a class. Archive
members are read into memory (the CIFAR-size trees this is for); folders are read lazily.
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path, PurePosixPath

from pipeline.make.noise import CIFAR10_CLASSES
from pipeline.make.sources.base import IMAGE_EXTS, Record, Source, SourceError, SourceSplit

log = logging.getLogger(__name__)

# Known class orders: when a folder tree has exactly these classes, labels follow the published order
# (so they match the original dataset and the CIFAR-N files) instead of the alphabetical one.
# (CIFAR-10's published order happens to be alphabetical too; the table pins it regardless.)
KNOWN_CLASS_ORDERS = {"cifar10": CIFAR10_CLASSES}


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


