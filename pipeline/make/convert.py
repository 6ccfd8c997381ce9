"""Conversion driver: a raw source -> a converted dataset directory (the layout in pipeline/format/dataset.py).

:func:`convert` reads a source (pipeline/make/sources/), assigns each split a seeded permutation
(idx = position in it, DESIGN rule 1), writes shards in idx order, the clean labels, source index and
keys, the requested label sets and masks, and manifest.json last. Everything is written into
``<out>/.<name>.partial`` and renamed into place only when complete. Shards are written by
pipeline/make/shard_stream.py: streamed through a pool of worker processes (verify, optional resize),
journaled after each shard, so an interrupted conversion resumes where it stopped; an error in the
input (a corrupt image, a bad list line) discards the partial state.
:func:`add_label_sets` adds label sets and masks to an existing dataset without touching its shards.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import re
import shutil
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.format import label_sets
from pipeline.format.dataset import (FORMAT_VERSION, MANIFEST, ArrayEntry, Dataset, Manifest, ShardEntry,
                                     SplitEntry, first_out_of_range)
from pipeline.format.locks import LOCK_FILE, FolderLock
from pipeline.format.provenance import code_version
from pipeline.format.shards import ShardWriter, read_shard, sha256_file  # noqa: F401  (tests patch ShardWriter here)
from pipeline.make import cifar_n, noise, shard_stream
from pipeline.make.sources import Source, SourceError, decode_image, open_source

log = logging.getLogger(__name__)

LABEL_DIR = "labels"
_FILE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class ConvertError(UserError, ValueError):
    """The conversion cannot go on; the message says which file or option and what to do."""


@dataclass(frozen=True, kw_only=True)
class LabelRequests:
    """What label sets and masks to make for the noisy split."""

    label_sets: list[str] = field(default_factory=list)  # names: "sym-0.40-s0", "cifar10n-worse", ...
    cifar_n: Path | None = None  # CIFAR-N .pt (or the demo .npz) for cifar10n-*/cifar100n-* sets
    label_files: dict[str, Path] = field(default_factory=dict)  # name -> .npy/.txt labels in source order
    clean_subset: int | None = None  # size of the class-balanced clean meta subset (a mask)
    clean_subset_seed: int = 0


@dataclass(frozen=True, kw_only=True)
class ConvertConfig:
    source: Path  # folder, .tar(.gz) of an image tree, or an official CIFAR python archive
    name: str  # dataset directory name under `out`
    out: Path  # root directory of converted datasets
    source_format: str = "auto"
    splits: list[str] | None = None  # None: every split the source has
    noisy_split: str = "train"  # split that receives the noisy label sets and masks
    seed: int = 0  # fixes the idx permutation of every split
    samples_per_shard: int = 5000
    force: bool = False  # replace an existing dataset (atomically)
    labels: LabelRequests = field(default_factory=LabelRequests)
    argv: list[str] | None = None  # recorded in provenance
    progress: bool = True
    source_options: dict = field(default_factory=dict)  # format-specific (pipeline.make.sources.OPTIONS)
    resize_shorter: int | None = None  # px: resize images whose shorter side is longer, re-encode as JPEG
    jpeg_quality: int = 90  # for re-encoded (resized) images
    workers: int = 0  # encoding processes; 0 = one per CPU core
    restart: bool = False  # discard a partial conversion instead of resuming it

    def __post_init__(self):
        if not _FILE_NAME_RE.match(self.name):
            raise ConvertError(f"--name {self.name!r}: use lower-case letters, digits, '.', '_' or '-'")
        if self.samples_per_shard < 1:
            raise ConvertError(f"--samples-per-shard must be >= 1, got {self.samples_per_shard}")
        if self.resize_shorter is not None and self.resize_shorter < 8:
            raise ConvertError(f"--resize-shorter must be >= 8 px, got {self.resize_shorter}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConvertError(f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}")
        if self.workers < 0:
            raise ConvertError(f"--workers must be >= 0 (0 = one per core), got {self.workers}")


# ---------------------------------------------------------------------------------------------
# label requests: checked before any work, built from per-split arrays
# ---------------------------------------------------------------------------------------------


def check_requests(req: LabelRequests) -> None:
    """Fails fast on names and files, before images are read."""
    for name in req.label_sets:
        if name == "clean" or label_sets.is_noise_spec(name):
            continue
        if name in cifar_n.LABEL_SETS:
            if req.cifar_n is None:
                raise ConvertError(f"label set {name} needs --cifar-n PATH (CIFAR-10_human.pt / CIFAR-100_human.pt)")
            continue
        if re.match(r"^[a-z]+-[\d.]+-s\d+$", name):
            label_sets.parse_noise_spec(name)  # raises with the accepted forms, e.g. for "sym-0.4-s0"
        raise ConvertError(
            f"unknown label set {name!r}; accepted: clean, {label_sets.ACCEPTED_FORMS}; "
            f"{', '.join(sorted(cifar_n.LABEL_SETS))} (with --cifar-n); or --label-file NAME=PATH"
        )
    for name, path in req.label_files.items():
        if not _FILE_NAME_RE.match(name) or name in ("clean", "coarse", "source_index", "source_keys"):
            raise ConvertError(f"--label-file {name}={path}: choose another name (lower-case, not a reserved one)")
        if not Path(path).is_file():
            raise ConvertError(f"--label-file {name}={path}: file not found")
    if req.cifar_n is not None and not Path(req.cifar_n).is_file():
        raise ConvertError(f"--cifar-n {req.cifar_n}: file not found")
    if req.clean_subset is not None and req.clean_subset < 1:
        raise ConvertError(f"--clean-subset must be >= 1, got {req.clean_subset}")


@dataclass
class SplitArrays:
    """What the label generators need about one split, all in idx order."""

    name: str
    clean: np.ndarray | None  # int64 (N,)
    source_keys: list[str]
    source_index: np.ndarray  # int64 (N,)
    coarse: np.ndarray | None = None  # int64 (N,)
    pixels: object = None  # uint8 (N, H, W, C) or a zero-argument callable producing it (for idn)


def read_label_file(path: Path, n: int, num_classes: int) -> np.ndarray:
    """Labels from .npy or text (one integer per line) in the source's order; checked for count and range."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            labels = np.load(path, allow_pickle=False)
        else:
            labels = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as err:
        raise ConvertError(f"{path}: cannot read labels ({err}); use .npy or one integer per line") from err
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ConvertError(f"{path}: labels must be a 1-d integer array, got shape {labels.shape} dtype {labels.dtype}")
    if len(labels) != n:
        raise ConvertError(f"{path}: has {len(labels)} labels but the split has {n} samples")
    bad = first_out_of_range(labels, num_classes)
    if bad is not None:
        raise ConvertError(f"{path}: label {labels[bad]} at index {bad} is outside [0, {num_classes})")
    return labels.astype(np.int64)


def build_label_sets(split: SplitArrays, classes: list[str], req: LabelRequests) -> dict[str, tuple[np.ndarray, str, dict]]:
    """name -> (int64 (N,) labels in idx order, kind, params) for every requested non-clean set."""
    out: dict[str, tuple[np.ndarray, str, dict]] = {}
    cn = None
    for name in req.label_sets:
        if name == "clean":
            continue
        if name in cifar_n.LABEL_SETS:
            if cn is None:
                cn = cifar_n.load(req.cifar_n)  # type: ignore[arg-type]
            labels = cifar_n.join(cn, name, split.source_keys, split.source_index, classes, split.clean)
            params = {"file": str(Path(cn.path).resolve()), "file_sha256": sha256_file(cn.path),
                      "array": cifar_n.LABEL_SETS[name][1]}
            out[name] = (labels, name.split("-")[0], params)
            continue
        spec = label_sets.parse_noise_spec(name)
        if split.clean is None:
            raise ConvertError(f"{name}: synthetic noise needs clean labels, and split {split.name!r} has none")
        pixels = split.pixels() if callable(split.pixels) else split.pixels
        labels = noise.generate(spec, split.clean, classes, split.coarse, pixels)
        params = {"rate": spec.rate, "seed": spec.seed, "applied_to": "clean labels in idx order"}
        variant = noise.variant(spec, classes, split.coarse)
        if variant:
            params["variant"] = variant
        out[name] = (labels, spec.generator, params)
    for name, path in req.label_files.items():
        in_source_order = read_label_file(path, len(split.source_index), len(classes))
        params = {"file": str(Path(path).resolve()), "file_sha256": sha256_file(path), "order": "source"}
        out[name] = (in_source_order[split.source_index], "file", params)
    return out


def clean_subset_mask(clean: np.ndarray, size: int, num_classes: int, seed: int) -> np.ndarray:
    """Class-balanced bool (N,) mask of `size` samples (by clean label); the remainder of size/K goes
    to a seeded random choice of classes."""
    if size > len(clean):
        raise ConvertError(f"--clean-subset {size} is larger than the split ({len(clean)} samples)")
    rng = np.random.default_rng([seed, zlib.crc32(b"clean-subset")])
    per_class = np.full(num_classes, size // num_classes)
    per_class[rng.permutation(num_classes)[: size % num_classes]] += 1
    mask = np.zeros(len(clean), dtype=bool)
    for c in range(num_classes):
        members = np.flatnonzero(clean == c)
        if len(members) < per_class[c]:
            raise ConvertError(
                f"--clean-subset {size}: class {c} has only {len(members)} samples, {per_class[c]} needed"
            )
        mask[rng.choice(members, size=per_class[c], replace=False)] = True
    return mask


def _write_array(root: Path, rel: str, array: np.ndarray) -> str:
    """Writes an .npy atomically (temp file + rename); returns its sha256."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
    os.replace(tmp, path)
    return sha256_file(path)


def _label_entry(root: Path, split: str, name: str, labels: np.ndarray, kind: str, params: dict,
                 clean: np.ndarray | None, num_classes: int) -> ArrayEntry:
    rel = f"{LABEL_DIR}/{split}/{name}.npy"
    sha = _write_array(root, rel, labels.astype(np.int64))
    rate = matrix = None
    if clean is not None and kind != "coarse":
        rate = round(noise.noise_rate(clean, labels), 6)
        if kind != "clean":
            matrix = np.round(noise.transition_matrix(clean, labels, num_classes), 6).tolist()
        log.info("%s/%s: realised noise rate %.4f", split, name, rate)
    return ArrayEntry(file=rel, sha256=sha, kind=kind, params=params, noise_rate=rate, transition_matrix=matrix)


def _mask_entry(root: Path, split: str, name: str, mask: np.ndarray, params: dict) -> ArrayEntry:
    rel = f"{LABEL_DIR}/{split}/masks/{name}.npy"
    sha = _write_array(root, rel, mask.astype(bool))
    return ArrayEntry(file=rel, sha256=sha, kind="mask", params=params, count=int(mask.sum()))


def _add_requested(root: Path, split: SplitArrays, entry: SplitEntry, classes: list[str], req: LabelRequests,
                   replace: bool) -> list[str]:
    """Builds, writes and records the requested label sets and mask in `entry`; returns the names added."""
    # everything is computed before anything is written, so an error leaves the files as they were
    built = build_label_sets(split, classes, req)
    mask = mask_name = None
    if req.clean_subset is not None:
        if split.clean is None:
            raise ConvertError(f"--clean-subset needs clean labels, and split {split.name!r} has none")
        mask_name = f"clean-subset-{req.clean_subset}-s{req.clean_subset_seed}"
        mask = clean_subset_mask(split.clean, req.clean_subset, len(classes), req.clean_subset_seed)
    existing = [n for n in built if n in entry.label_sets]
    if mask_name and mask_name in entry.masks:
        existing.append(mask_name)
    if existing and not replace:
        raise ConvertError(f"split {split.name!r} already has {existing}; pass --force to replace them")
    for name, (labels, kind, params) in built.items():
        entry.label_sets[name] = _label_entry(root, split.name, name, labels, kind, params, split.clean, len(classes))
    if mask is not None:
        params = {"size": req.clean_subset, "seed": req.clean_subset_seed, "balanced_by": "clean",
                  "meaning": "True = in the clean meta subset; leave these out of noisy training"}
        entry.masks[mask_name] = _mask_entry(root, split.name, mask_name, mask, params)  # type: ignore[index]
    return list(built) + ([mask_name] if mask_name else [])


# ---------------------------------------------------------------------------------------------
# provenance
# ---------------------------------------------------------------------------------------------


def _git_commit() -> str | None:
    version = code_version(include_untracked=True)
    if version["commit"] == "unknown":
        return None
    return version["commit"] + ("-dirty" if version["dirty"] else "")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict:
    import PIL

    return {"python": platform.python_version(), "numpy": np.__version__, "pillow": PIL.__version__}


def _write_manifest(root: Path, manifest: Manifest) -> None:
    tmp = root / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(manifest.model_dump_json(indent=1) + "\n")
    os.replace(tmp, root / MANIFEST)


# ---------------------------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------------------------


def _split_seed(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode())])


def _where_fn(source: Source):
    """How errors name a record: its file, or <archive>:<root>/<key> for archive members."""
    where_prefix = f"{source.path}:" if source.path.is_file() else ""
    root = source.extra.get("root", ".")
    return lambda record: str(record.path) if record.path is not None else f"{where_prefix}{root}/{record.key}"


def _pixels_from_paths(paths: list[Path], n: int) -> np.ndarray:
    """uint8 (N, H, W, 3) pixels in idx order, decoded from written shards (instance-dependent noise)."""
    pixels = None
    for shard in paths:
        for idx, data, _ext in read_shard(shard):
            array = np.asarray(decode_image(data, f"{shard}:{idx}").convert("RGB"))  # (H, W, 3)
            if pixels is None:
                pixels = np.empty((n, *array.shape), dtype=np.uint8)
            if array.shape != pixels.shape[1:]:
                raise ConvertError(
                    f"{shard}: sample {idx} has shape {array.shape}, others {pixels.shape[1:]}; instance-dependent "
                    f"noise needs images of one size"
                )
            pixels[idx] = array
    assert pixels is not None
    return pixels


def _precheck_counts(req: LabelRequests, n: int, num_classes: int) -> None:
    """Label files and CIFAR-N files must fit the split: checked before any shard is written."""
    for path in req.label_files.values():
        read_label_file(path, n, num_classes)
    if req.cifar_n is not None and any(name in cifar_n.LABEL_SETS for name in req.label_sets):
        cn = cifar_n.load(req.cifar_n)
        if len(cn) != n:
            raise cifar_n.CifarNError(
                f"{cn.path} has {len(cn)} labels but the split has {n} samples; CIFAR-N labels need exactly the "
                f"samples they were made for (the full CIFAR train split, or the demo .npz for the demo)"
            )


# Errors in the input: the partial state is discarded (the input must change, and with it the shards).
# Anything else (interrupt, disk full, a killed process) keeps it so that the same command resumes.
_INPUT_ERRORS = (ConvertError, SourceError, cifar_n.CifarNError, label_sets.NoiseSpecError)


def _fingerprint(cfg: ConvertConfig, source: Source) -> str:
    parts = {
        "format_version": FORMAT_VERSION,
        "source": str(Path(cfg.source).resolve()),
        "format": source.format,
        "splits": list(source.splits),
        "seed": cfg.seed,
        "samples_per_shard": cfg.samples_per_shard,
        "resize_shorter": cfg.resize_shorter,
        "jpeg_quality": cfg.jpeg_quality if cfg.resize_shorter else None,
    }
    return shard_stream.fingerprint(parts, {n: (s.keys, s.labels) for n, s in source.splits.items()})


def partial_dir(out: Path, name: str) -> Path:
    """Where a conversion in progress lives (renamed to <out>/<name> when complete)."""
    return Path(out) / f".{name}.partial"


def convert(cfg: ConvertConfig) -> Path:
    """Converts cfg.source into cfg.out/cfg.name; returns the dataset directory.

    Resumable: shards go into partial_dir(out, name) with a journal; an interrupted run (Ctrl-C, a
    crash, disk full) leaves it there and the same command continues after the last complete shard.
    An error in the input discards it. The dataset appears (atomic rename) only when complete."""
    check_requests(cfg.labels)
    final = Path(cfg.out) / cfg.name
    if final.exists() and not cfg.force:
        raise ConvertError(f"{final} already exists; pass --force to replace it, or --add-label-set to add label sets")
    source = open_source(cfg.source, cfg.splits, cfg.source_format, **cfg.source_options)
    if cfg.labels.label_sets or cfg.labels.label_files or cfg.labels.clean_subset:
        if cfg.noisy_split not in source.splits:
            raise ConvertError(f"--noisy-split {cfg.noisy_split!r} is not among the splits {sorted(source.splits)}")
        _precheck_counts(cfg.labels, len(source.splits[cfg.noisy_split].records), len(source.classes))
    needs_pixels = any(n.startswith("idn-") for n in cfg.labels.label_sets)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_dir(cfg.out, cfg.name)
    tmp.mkdir(exist_ok=True)
    lock = FolderLock(tmp, f"{tmp} is being written by another make_shards (pid {{pid}}); wait for it to finish or "
                           f"stop it")
    fp = _fingerprint(cfg, source)
    journal = shard_stream.Journal(tmp, fp) if cfg.restart else shard_stream.Journal.load(tmp, fp)
    if not journal.num_done():
        for p in tmp.iterdir():  # stale files of another conversion
            if p.name != LOCK_FILE:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    else:
        log.warning("%s: resuming (%d shards already written)", tmp, journal.num_done())
    workers = cfg.workers or os.cpu_count() or 1
    pool = shard_stream.make_pool(workers)
    done = False
    try:
        splits: dict[str, SplitEntry] = {}
        all_exts: set[str] = set()
        for split_name, src_split in source.splits.items():
            n = len(src_split.records)
            perm = _split_seed(cfg.seed, split_name).permutation(n)  # perm[idx] = source position
            shards, stats = shard_stream.write_split(
                tmp, split_name, src_split.records, perm, cfg.samples_per_shard, journal, _where_fn(source),
                pool=pool, resize_shorter=cfg.resize_shorter, quality=cfg.jpeg_quality, progress=cfg.progress,
                desc=f"{cfg.name}/{split_name}",
            )
            all_exts |= stats.exts
            splits[split_name] = _split_entry(tmp, source, src_split, split_name, perm, shards, cfg, needs_pixels)
            splits[split_name].image_size_min, splits[split_name].image_size_max = stats.size_min, stats.size_max
            if stats.size_min != stats.size_max:
                log.warning("%s/%s: images from %dx%d to %dx%d px; train them with data.transform=imagenet (the cifar "
                            "transform needs images of one size)", cfg.name, split_name, *stats.size_min, *stats.size_max)
        if pool is not None:
            pool.shutdown()
            pool = None
        src = Path(cfg.source).resolve()
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            name=cfg.name,
            classes=source.classes,
            image_ext=";".join(sorted(all_exts)),
            splits=splits,
            provenance={
                "tool": "tools/make_shards.py",
                "args": cfg.argv,
                "source": str(src),
                "source_format": source.format,
                "source_options": {k: str(v) for k, v in cfg.source_options.items() if v is not None},
                "source_sha256": sha256_file(src) if src.is_file() else None,
                "class_order": source.extra.get("class_order"),
                "seed": cfg.seed,
                "samples_per_shard": cfg.samples_per_shard,
                "resize_shorter": cfg.resize_shorter,
                "jpeg_quality": cfg.jpeg_quality if cfg.resize_shorter else None,
                "noisy_split": cfg.noisy_split,
                "git_commit": _git_commit(),
                "created": _now(),
                "versions": _versions(),
                "history": [],
            },
        )
        _write_manifest(tmp, manifest)
        (tmp / shard_stream.JOURNAL).unlink()
        lock.release()
        _move_into_place(tmp, final, cfg.force)
        done = True
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if not done:
            kept = journal.num_done() > 0 and not isinstance(sys.exc_info()[1], _INPUT_ERRORS)
            if kept:
                log.warning("conversion interrupted; %d complete shards kept in %s: run the same command again to "
                            "continue (or add --restart to start over)", journal.num_done(), tmp)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
            lock.release(remove=False)
    log.info("wrote %s", final)
    return final


def _split_entry(tmp: Path, source: Source, src_split, split_name: str, perm: np.ndarray, shards, cfg: ConvertConfig,
                 needs_pixels: bool) -> SplitEntry:
    """Writes a split's labels, masks, source index and keys (all in idx order) and returns its manifest entry."""
    num_classes = len(source.classes)
    primary = src_split.labels[perm]  # int64 (N,), idx order
    keys_src = src_split.keys
    keys = [keys_src[p] for p in perm]
    keys_rel = f"{LABEL_DIR}/{split_name}/source_keys.json"
    (tmp / keys_rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp / keys_rel).write_text(json.dumps(keys))
    index_entry = ArrayEntry(
        file=f"{LABEL_DIR}/{split_name}/source_index.npy",
        sha256=_write_array(tmp, f"{LABEL_DIR}/{split_name}/source_index.npy", perm.astype(np.int64)),
        kind="source_index",
        params={"order": source.extra.get("class_order", "source")},
    )
    # the clean labels of the split, when fully known: its own labels or a full extra set named "clean"
    if src_split.label_name == "clean":
        clean = primary
    elif "clean" in src_split.extra_labels:
        clean = src_split.extra_labels["clean"][0][perm]
    else:
        clean = None
    label_sets: dict[str, ArrayEntry] = {}
    kind = "clean" if src_split.label_name == "clean" else "published"
    params = {} if kind == "clean" else {"source": source.format, "meaning": "the labels the dataset ships"}
    label_sets[src_split.label_name] = _label_entry(tmp, split_name, src_split.label_name, primary, kind, params,
                                                    clean, num_classes)
    masks: dict[str, ArrayEntry] = {}
    for name, (mask, mparams) in src_split.masks.items():
        masks[name] = _mask_entry(tmp, split_name, name, mask[perm], mparams)
    for name, (labels, lkind, lparams) in src_split.extra_labels.items():
        labels = labels[perm]
        known_mask = lparams.get("known_mask")
        ref = clean if clean is not None and name != "clean" else (primary if name == "clean" else None)
        entry = _label_entry(tmp, split_name, name, labels, "clean" if name == "clean" else lkind, lparams, ref,
                             num_classes)
        if known_mask is not None and ref is not None:  # rate over the samples whose label is known
            known = src_split.masks[known_mask][0][perm]
            entry.noise_rate = round(noise.noise_rate(ref[known], labels[known]), 6) if known.any() else None
            entry.transition_matrix = np.round(noise.transition_matrix(ref[known], labels[known], num_classes),
                                               6).tolist()
        label_sets[name] = entry
    entry = SplitEntry(
        num_samples=len(perm),
        shards=[ShardEntry(**vars(s)) for s in shards],
        source_index=index_entry,
        source_keys=keys_rel,
        source_keys_sha256=sha256_file(tmp / keys_rel),
        label_sets=label_sets,
        masks=masks,
    )
    coarse = src_split.coarse_labels[perm] if src_split.coarse_labels is not None else None
    if coarse is not None:
        entry.label_sets["coarse"] = _label_entry(
            tmp, split_name, "coarse", coarse, "coarse", {"classes": source.coarse_classes}, clean, num_classes
        )
    if split_name == cfg.noisy_split:
        pixels = _pixels_from_paths([tmp / s.tar for s in shards], len(perm)) if needs_pixels else None
        arrays = SplitArrays(split_name, clean, keys, perm.astype(np.int64), coarse, pixels)
        _add_requested(tmp, arrays, entry, source.classes, cfg.labels, replace=False)
    return entry


def _move_into_place(tmp: Path, final: Path, force: bool) -> None:
    if not final.exists():
        os.rename(tmp, final)
        return
    if not force:  # appeared while we were converting
        raise ConvertError(f"{final} appeared during the conversion; pass --force to replace it")
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old)


# ---------------------------------------------------------------------------------------------
# add label sets to an existing dataset
# ---------------------------------------------------------------------------------------------


def _pixels_from_shards(ds: Dataset, split: str) -> np.ndarray:
    return _pixels_from_paths(ds.shard_paths(split), ds.num_samples(split))


def add_label_sets(dataset_dir: Path, req: LabelRequests, noisy_split: str = "train", force: bool = False,
                   argv: list[str] | None = None) -> list[str]:
    """Adds label sets / masks to an existing dataset; shards are never opened for writing.
    The manifest is replaced atomically at the end. Returns the names added."""
    check_requests(req)
    ds = Dataset(dataset_dir)
    entry = ds.split(noisy_split).model_copy(deep=True)
    clean = ds.labels(noisy_split, "clean") if "clean" in entry.label_sets else None
    coarse = ds.labels(noisy_split, "coarse") if "coarse" in entry.label_sets else None
    arrays = SplitArrays(
        noisy_split, clean, ds.source_keys(noisy_split), ds.source_index(noisy_split), coarse,
        lambda: _pixels_from_shards(ds, noisy_split),
    )
    added = _add_requested(ds.path, arrays, entry, ds.classes, req, replace=force)
    manifest = ds.manifest.model_copy(deep=True)
    manifest.splits[noisy_split] = entry
    manifest.provenance.setdefault("history", []).append(
        {"action": "add-label-set", "added": added, "args": argv, "git_commit": _git_commit(), "time": _now()}
    )
    _write_manifest(ds.path, manifest)
    return added


__all__ = ["ConvertConfig", "ConvertError", "LabelRequests", "SourceError", "add_label_sets", "convert", "partial_dir"]
